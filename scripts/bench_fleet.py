#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The fleet store on a real PostgreSQL server of its own (initdb into a temporary folder,
as the tests do), against the SQLite store on the same data, in one run:

1. shipping: --resolvers resolvers with --sources sources each, one collection each, shipped
   into one PostgreSQL; rows/s and seconds per collection; the same batches staged and
   folded into one SQLite store.
2. notify: a month of hits for --lines lines spread over the resolvers (each line on 3
   days, at one or two resolvers), attributed and notified into an outbox by the real
   `ccxdp notify` process; its seconds and peak RSS.
3. backlog: --backlog collections of --sources sources kept on one resolver while the
   database is down (an hour at one a minute), then the catch-up ship.

The batches are the kernel's bytes, as the collector stages them (tests/harness/hits.py).
Everything is removed afterwards.

    .venv/bin/python scripts/bench_fleet.py [--resolvers 20] [--sources 50000]
        [--lines 100000] [--backlog 60]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ccxdp.hits.fleet import FleetStore  # noqa: E402
from ccxdp.hits.store import Store, to_us  # noqa: E402
from tests.harness.hits import BOOT, counters  # noqa: E402
from tests.harness.postgres import running_server  # noqa: E402

CATEGORIES = {i: f"family-{i}" for i in range(1, 9)}


def address(n: int) -> str:
    if n % 10 == 0:
        return f"fd00:{n >> 16:x}:{n & 0xFFFF:x}::1"
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def batch(first: int, count: int, when_us: int, rng: random.Random) -> tuple[bytes, bytes]:
    return counters(*[(address(first + i), rng.randrange(1, 9), rng.randrange(1, 20),
                       when_us + i, when_us + i + 1000) for i in range(count)])


def shipping(uri: str, root: Path, resolvers: int, sources: int) -> dict:
    rng = random.Random(1)
    when = to_us(datetime.now(UTC).replace(minute=0, second=0, microsecond=0))
    locals_ = []
    for r in range(resolvers):
        local = Store(root / f"rs{r}.db")
        local.stage_counters([batch(r * sources, sources, when, rng)], BOOT, None,
                             CATEGORIES, epoch=1)
        locals_.append(local)
    # The same batches into one SQLite store, staged and folded, for comparison.
    sqlite = Store(root / "one.db")
    started = time.monotonic()
    for local in locals_:
        rows = local.staged_batches(0, 1 << 30)
        sqlite.stage_counters([(r[3], r[4]) for r in rows], BOOT, None, CATEGORIES)
        sqlite.fold()
    sqlite_s = time.monotonic() - started
    sqlite_rows = len(sqlite.hits())
    sqlite.close()
    per = []
    with FleetStore(uri) as fleet:
        for r, local in enumerate(locals_):
            s = fleet.ship(local, f"rs{r}")
            per.append(s.seconds)
            local.close()
        rows = fleet._q("SELECT count(*) FROM hits").fetchone()[0]
    total = sum(per)
    return {"rows": rows, "seconds": total, "rows_per_s": rows / total,
            "per_collection_s": total / resolvers, "max_collection_s": max(per),
            "sqlite_seconds": sqlite_s, "sqlite_rows": sqlite_rows,
            "sqlite_rows_per_s": sqlite_rows / sqlite_s}


def month_of_hits(uri: str, root: Path, resolvers: int, lines: int) -> dict:
    """Each line's address hit on 3 days of last month, at one or two resolvers."""
    rng = random.Random(2)
    now = datetime.now(UTC)
    start = (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
             - timedelta(days=1)).replace(day=1)
    period = start.strftime("%Y-%m")
    staged: dict[int, list] = {r: [] for r in range(resolvers)}
    for n in range(lines):
        days = rng.sample(range(28), 3)
        homes = rng.sample(range(resolvers), 2)
        for i, day in enumerate(days):
            t = to_us(start + timedelta(days=day, hours=rng.randrange(24)))
            staged[homes[min(i, 1)]].append((address(n), rng.randrange(1, 9), 3, t, t + 60))
    with FleetStore(uri) as fleet:
        for r, entries in staged.items():
            with Store(root / f"month{r}.db") as local:
                for i in range(0, len(entries), 50_000):
                    local.stage_counters([counters(*entries[i:i + 50_000])], BOOT, None,
                                         CATEGORIES, epoch=i)
                fleet.ship(local, f"rs{r}")
        rows = fleet._q("SELECT count(*) FROM hits WHERE hour >= %s",
                        (to_us(start) // 1_000_000,)).fetchone()[0]
    opened = (start - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sessions, contacts = root / "sessions.csv", root / "subscribers.csv"
    with open(sessions, "w") as f:
        f.write("line_id,address_or_prefix,start,stop\n")
        for n in range(lines):
            f.write(f"L-{n},{address(n)},{opened},\n")
    with open(contacts, "w") as f:
        f.write("line_id,email,language\n")
        for n in range(lines):
            f.write(f"L-{n},line{n}@isp.example,en\n")
    out = root / "outbox"
    argv = [str(Path(sys.executable).parent / "ccxdp"), "--state-dir", str(root / "state"),
            "notify", "--store", uri, "--period", period, "--sessions", str(sessions),
            "--subscribers", str(contacts), "--from", "abuse@isp.example", "--out", str(out),
            "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    cp = subprocess.run(argv, capture_output=True, text=True, env=os.environ)
    seconds = time.monotonic() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if cp.returncode != 0:
        raise SystemExit(f"notify failed: {cp.stderr.strip()}")
    sent = len(list(out.glob("*.eml")))
    return {"period": period, "rows": rows, "lines": lines, "notified": sent,
            "seconds": seconds, "peak_rss_mib": max(peak_kib, before) / 1024}


def backlog(uri: str, root: Path, collections: int, sources: int) -> dict:
    rng = random.Random(3)
    when = to_us(datetime.now(UTC).replace(minute=0, second=0, microsecond=0))
    path = root / "backlog.db"
    started = time.monotonic()
    with Store(path) as local:
        for c in range(collections):
            local.stage_counters([batch(0, sources, when + c * 60_000_000, rng)], BOOT, None,
                                 CATEGORIES, epoch=c + 1)
        staged_s = time.monotonic() - started
        size = path.stat().st_size
        held = local.backlog()
        with FleetStore(uri) as fleet:
            s = fleet.ship(local, "rs-backlog")
    return {"collections": collections, "counters": held[1], "hits": held[2],
            "backlog_mib": size / 2**20, "staging_s": staged_s, "catch_up_s": s.seconds,
            "shipped_hits": s.hits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolvers", type=int, default=20)
    ap.add_argument("--sources", type=int, default=50_000)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--backlog", type=int, default=60)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ccxdp-bench-fleet-"))
    server = running_server(port=5439)
    os.environ.update(server.env())
    try:
        print(f"PostgreSQL in {server.root}, scratch in {root}", flush=True)
        uri = server.database()
        with FleetStore(uri, schema=False) as fleet:
            fleet.init()
        s = shipping(uri, root, args.resolvers, args.sources)
        print(f"shipping: {args.resolvers} resolvers x {args.sources:,} sources: "
              f"{s['rows']:,} rows in {s['seconds']:.2f} s, {s['rows_per_s']:,.0f} rows/s, "
              f"{s['per_collection_s']:.2f} s per collection (max {s['max_collection_s']:.2f})")
        print(f"  SQLite, same batches staged and folded: {s['sqlite_rows']:,} rows in "
              f"{s['sqlite_seconds']:.2f} s, {s['sqlite_rows_per_s']:,.0f} rows/s; "
              f"PostgreSQL/SQLite time {s['seconds'] / s['sqlite_seconds']:.2f}", flush=True)
        uri = server.database()
        with FleetStore(uri, schema=False) as fleet:
            fleet.init()
        m = month_of_hits(uri, root, args.resolvers, args.lines)
        print(f"notify: {m['lines']:,} lines, {m['rows']:,} rows of {m['period']} from "
              f"{args.resolvers} resolvers: {m['notified']:,} notified in {m['seconds']:.1f} s, "
              f"peak RSS {m['peak_rss_mib']:.0f} MiB", flush=True)
        uri = server.database()
        with FleetStore(uri, schema=False) as fleet:
            fleet.init()
        b = backlog(uri, root, args.backlog, args.sources)
        print(f"backlog: {b['collections']} collections x {args.sources:,} sources kept on the "
              f"resolver ({b['backlog_mib']:.0f} MiB, {b['hits']:,} hits), catch-up ship "
              f"{b['catch_up_s']:.1f} s ({b['shipped_hits']:,} hits)", flush=True)
    finally:
        server.remove()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
