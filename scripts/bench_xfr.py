#!/usr/bin/env python3
"""Benchmark: an RPZ feed of a million names by zone transfer from a real Knot DNS primary.

Starts knotd on loopback (tests/harness/primaries.py: a folder of its own, a free port) with
an RPZ zone of --names names, loads the program (not attached) on private pins and state,
then times the AXFR (transfer: the whole zone into memory) and its apply (the copy written,
parsed, hashed, the catalog and the atomic kernel swap) apart; then 1% of the names change on
the primary (half removed, half new, one changeset in Knot's journal) and the IXFR and its
apply are timed the same way. Prints figures and ratios; not a test. Run as root:
.venv/bin/python scripts/bench_xfr.py
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccxdp.datapath import libbpf  # noqa: E402
from ccxdp.datapath.loader import Datapath, Limits  # noqa: E402
from ccxdp.datapath.nametable import count_names  # noqa: E402
from ccxdp.policy import transfer  # noqa: E402
from ccxdp.policy.catalog import Catalog  # noqa: E402
from tests.harness.primaries import Knot, primary  # noqa: E402

ZONE = "rpz.bench"
FEED_ADD_1M_S = 5.1  # docs/development.md: feed add of a 1,000,000-name plain file


def record(i: int) -> str:
    return f"c2-{i:07d}.family-{i % 97}.test CNAME ."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--change", type=float, default=0.01, help="share of names an IXFR changes")
    args = ap.parse_args()
    pin_dir = Path("/sys/fs/bpf") / f"ccxdp-bench-{secrets.token_hex(4)}"
    work = Path(tempfile.mkdtemp(prefix="ccxdp-bench-xfr-"))
    dp = Datapath(pin_dir, work / "state")
    half = max(int(args.names * args.change / 2), 1)
    try:
        with dp:
            libbpf.close(dp.load(Limits(max_names=1 << (args.names - 1).bit_length(),
                                        max_sources=1 << 16)))
        started = time.perf_counter()
        with primary(Knot, ZONE, [record(i) for i in range(args.names)]) as knot:
            knot_load_s = time.perf_counter() - started
            origin = transfer.ZoneOrigin(transfer.parse_primary(knot.address), ZONE)
            started = time.perf_counter()
            axfr = transfer.fetch(origin)
            axfr_s = time.perf_counter() - started
            with dp, Catalog(dp.catalog_path) as catalog:
                started = time.perf_counter()
                first = transfer.apply(dp, catalog, "bench", axfr, add={})
                axfr_apply_s = time.perf_counter() - started
                assert first.applied is not None and first.applied.added["block"] == args.names
            copy_mb = transfer.copy_path(dp.state_dir, "bench").stat().st_size / 2**20

            started = time.perf_counter()
            knot.change([record(i) for i in range(half, args.names + half)])
            knot_change_s = time.perf_counter() - started
            with Catalog(dp.catalog_path) as catalog:
                source = catalog.source("bench")
            started = time.perf_counter()
            ixfr = transfer.fetch(origin, source)
            ixfr_s = time.perf_counter() - started
            assert ixfr.kind == transfer.IXFR, ixfr.kind
            with dp, Catalog(dp.catalog_path) as catalog:
                started = time.perf_counter()
                second = transfer.apply(dp, catalog, "bench", ixfr)
                ixfr_apply_s = time.perf_counter() - started
            assert second.applied.added["block"] == half == second.applied.removed["block"]
            assert count_names(dp) == args.names

        print(f"zone: {args.names:,} names; knotd loaded it in {knot_load_s:.1f} s, the "
              f"change of {2 * half:,} names in {knot_change_s:.1f} s; ccxdp's copy "
              f"{copy_mb:.1f} MiB")
        print(f"{'figure':<46} {'seconds':>9} {'ratio':>24}")
        ratio = f"{axfr_apply_s / FEED_ADD_1M_S * 1_000_000 / args.names:.2f} of a plain feed add"
        rows = [
            (f"AXFR, {args.names:,} names: transfer", axfr_s,
             f"{args.names / axfr_s:,.0f} names/s"),
            ("AXFR: apply (copy, parse, catalog, kernel)", axfr_apply_s, ratio),
            (f"IXFR, {half:,} out + {half:,} in: transfer", ixfr_s,
             f"{ixfr_s / axfr_s:.3f} of the AXFR"),
            ("IXFR: apply (copy, parse, catalog, kernel)", ixfr_apply_s,
             f"{ixfr_apply_s / axfr_apply_s:.2f} of the AXFR's"),
        ]
        for label, value, note in rows:
            print(f"{label:<46} {value:>9.2f} {note:>24}")
        total_a, total_i = axfr_s + axfr_apply_s, ixfr_s + ixfr_apply_s
        print(f"AXFR in all {total_a:.1f} s; IXFR in all {total_i:.1f} s "
              f"({total_i / total_a:.2f} of the AXFR)")
    finally:
        if pin_dir.exists():
            for pin in pin_dir.iterdir():
                pin.unlink()
            pin_dir.rmdir()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
