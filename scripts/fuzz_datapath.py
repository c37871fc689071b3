#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Long runs of the data path's differential fuzzer (tests/harness/fuzz.py): frames through the
XDP program (BPF_PROG_TEST_RUN) and the reference model written from the docs, compared frame
by frame and counter by counter. Prints progress with the rate, then the totals by outcome and
every divergence (the frame in hex, what the model said, what the program did); exits 1 if
there was any. A run is replayed by its seed.

    .venv/bin/python scripts/fuzz_datapath.py [--frames 10000000] [--seed N] [--batch 2000]
        [--no-tail-grow] [--out FILE]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccxdp.datapath import libbpf  # noqa: E402
from ccxdp.datapath.loader import Datapath, Limits  # noqa: E402
from tests.conftest import make_pin_dir, remove_pins  # noqa: E402
from tests.harness import fuzz  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, help="replay a run (default: a new random seed)")
    ap.add_argument("--batch", type=int, default=2000, help="frames between counter reads")
    ap.add_argument("--max-sources", type=int, default=8,
                    help="per-source map size (x2 buffers): small, so that batches fill it")
    ap.add_argument("--no-tail-grow", action="store_true",
                    help="the build whose answers grow at the head (veth, generic mode)")
    ap.add_argument("--out", type=Path, help="write every divergent frame here, one a line")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    print(f"seed {seed}; {args.frames:,} frames in batches of {args.batch:,}", flush=True)

    pin_dir = make_pin_dir()
    state = Path(tempfile.mkdtemp(prefix="ccxdp-fuzz-"))
    cflags = ("-DCCXDP_TEST_NO_TAIL_GROW",) if args.no_tail_grow else ()
    dp = Datapath(pin_dir, state, cflags)
    try:
        with dp:
            fd = dp.load(Limits(max_names=4096, max_sources=args.max_sources))
        kernel = fuzz.Kernel(dp, fd)
        try:
            report = run(kernel, seed, args)
        finally:
            kernel.close()
            libbpf.close(fd)
    finally:
        remove_pins(pin_dir)
        for f in state.iterdir():
            f.unlink()
        state.rmdir()

    print(f"\n{report.frames:,} frames in {report.seconds:.1f} s: "
          f"{report.rate:,.0f} frames/s (program and model, one core)")
    for name in fuzz.STAT_NAMES:
        if report.counts[name]:
            print(f"  {name:24} {report.counts[name]:>12,}")
    verdicts = {1: "drop", 2: "pass", 3: "tx"}
    print("  verdicts: " + ", ".join(f"{verdicts[v]} {n:,}"
                                     for v, n in sorted(report.verdicts.items())))
    print(f"{len(report.divergences)} divergences (seed {seed})")
    for d in report.divergences:
        print(f"  {d}")
    if args.out and report.divergences:
        args.out.write_text("".join(f"{d.what} {d.frame.hex()}\n" for d in report.divergences))
    return 1 if report.divergences else 0


def run(kernel: fuzz.Kernel, seed: int, args: argparse.Namespace) -> fuzz.Report:
    last = [time.perf_counter(), 0]

    def progress(r: fuzz.Report) -> None:
        now = time.perf_counter()
        if now - last[0] >= 10 or r.frames == args.frames:
            rate = (r.frames - last[1]) / (now - last[0])
            print(f"{r.frames:>12,} frames  {rate:>9,.0f}/s  {len(r.divergences)} divergences",
                  flush=True)
            last[:] = [now, r.frames]

    return fuzz.Fuzzer(kernel, seed, batch=args.batch, max_divergences=100).run(
        args.frames, progress=progress)


if __name__ == "__main__":
    sys.exit(main())
