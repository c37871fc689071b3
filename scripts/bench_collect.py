#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""One collection of a million sources from the kernel into the hits store, timed.

Loads the program under a private pin folder, fills the per-source map's live buffer with
--sources entries written from Python in batches, exactly as the kernel would have made them
(the same key and value layout, monotonic-clock times within the last hour, 90% IPv4, 10% IPv6,
a few categories), then times one collection (ccxdp/hits/collector.py: kernel to store,
committed, buffer deleted) and prints it beside the 2 s target, then times the fold of the
staged counters into the hits table apart (Store.fold, off the collection path), with the
store's size. Round n collects into the store the rounds before filled. Everything is removed
afterwards.

    .venv/bin/python scripts/bench_collect.py [--sources 1000000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import random
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccxdp.datapath import libbpf, shared
from ccxdp.datapath.loader import Datapath, Limits  # noqa: E402
from ccxdp.hits import collector
from ccxdp.hits.collector import Collector  # noqa: E402
from ccxdp.hits.store import Store  # noqa: E402

TARGET_S = 2.0
CATEGORIES = {i: f"family-{i}" for i in range(1, 9)}


def fill_sources(dp: Datapath, count: int, seed: int) -> int:
    """Write `count` distinct (source, category) entries into the live buffer; returns their
    hits."""
    rng = random.Random(seed)
    with dp.open_map(shared.MAP_SOURCE_EPOCH) as epoch_map:
        buffer = epoch_map.lookup(ct.c_uint32(0)).value & 1
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    keys = (shared.SourceKey * count)()
    values = (shared.SourceHits * count)()
    total = 0
    v6 = count // 10
    for i in range(count):
        k = keys[i]
        if i < v6:  # fd00::/8, the tests' IPv6 room
            raw = b"\xfd\x00" + i.to_bytes(14, "big")
        else:  # IPv4-mapped, from 10.0.0.0/8 upwards: one address per entry
            raw = bytes(10) + b"\xff\xff" + (0x0A000000 + i).to_bytes(4, "big")
        ct.memmove(k.addr, raw, 16)
        k.category = rng.randrange(0, 9)
        k.buffer = buffer
        hits = rng.randrange(1, 50)
        first = now - rng.randrange(60, 3600) * 1_000_000_000
        v = values[i]
        v.hits, v.first_seen_ns = hits, first
        v.last_seen_ns = first if hits == 1 else rng.randrange(first, now)
        total += hits
    with dp.open_map(shared.MAP_SOURCES) as srcs:
        srcs.update_batch(keys, values)
    return total


class Phases:
    """Wall time spent in each step of a collection, by wrapping the collector's steps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        for name, owner, attr in (
            ("read (batch lookups)", collector, "_drain"),
            ("stage (one transaction)", Collector, "_commit"),
            ("delete (batch deletes)", Collector, "_delete"),
            ("grace period", collector, "wait_for_readers"),
        ):
            setattr(owner, attr, self._timed(name, getattr(owner, attr)))

    def _timed(self, name, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

        return timed

    def report(self) -> str:
        parts = [f"{name} {s:.2f} s" for name, s in self.seconds.items()]
        self.seconds.clear()
        return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=1, help="collections, each of a full map")
    args = ap.parse_args()

    pin_dir = Path("/sys/fs/bpf") / f"ccxdp-bench-{secrets.token_hex(4)}"
    state = Path(tempfile.mkdtemp(prefix="ccxdp-bench-"))
    try:
        with Datapath(pin_dir, state) as dp:
            t = time.perf_counter()
            fd = dp.load(Limits(max_names=65536, max_sources=max(args.sources, 1 << 20)))
            libbpf.close(fd)
            print(f"loaded the program in {time.perf_counter() - t:.1f} s")
            store = Store(state / "hits.db")
            phases = Phases()
            for n in range(args.rounds):
                t = time.perf_counter()
                hits = fill_sources(dp, args.sources, seed=n)
                print(f"filled {args.sources:,} sources ({hits:,} hits) in "
                      f"{time.perf_counter() - t:.1f} s")
                before = store.total_hits()
                with Collector(dp, CATEGORIES) as c:
                    t = time.perf_counter()
                    result = c.collect(store, fold=False)
                    elapsed = time.perf_counter() - t
                assert result.hits == hits and result.counters == args.sources, result
                print(f"collected {result.counters:,} sources, {result.hits:,} hits in "
                      f"{elapsed:.2f} s: {elapsed / TARGET_S:.2f} x the {TARGET_S:.0f} s target")
                print(f"  {phases.report()}")
                folded = store.fold()
                assert folded.hits == hits and folded.counters == args.sources, folded
                assert store.total_hits() == before + hits
                size = sum(p.stat().st_size for p in state.glob("hits.db*"))
                print(f"folded {folded.counters:,} counters into {folded.rows:,} rows of "
                      f"{folded.sources:,} addresses in {folded.seconds:.2f} s (off the "
                      f"collection path); store {size / 1e6:.0f} MB")
            store.close()
    finally:
        if pin_dir.exists():
            for pin in pin_dir.iterdir():
                pin.unlink()
            pin_dir.rmdir()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
