#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""In place, under dnsperf, builds of ccxdp or sizes of its list in one lab and one run: this
checkout's build and maybe another's (--other, a checkout with its own venv, e.g. main), each
with lists of the --sizes given, each program's own run time per packet (bpf_stats) for
blocked and unlisted names, uniformly and by a Zipf law, beside the 0- and 1-read floors
(the floor's array the size of the largest table). The variants alternate --rounds times, so
that the machine's drift (it is shared) falls on all. The blocked queries come from the
smallest list, so every variant blocks them. Not part of bench.sh: what a change of the data
path, or the scale, is judged by.

    .venv/bin/python scripts/bench/compare.py --other ../main --sizes 1000000 --json FILE
    .venv/bin/python scripts/bench/compare.py --sizes 1000000,10000000 --json FILE
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import (  # noqa: E402
    BPF_STATS,
    Bench,
    attach_answer_all,
    block_names,
    set_xdp,
    write_inputs,
    xdp_prog_id,
)

from ccxdp.datapath.loader import Limits  # noqa: E402
from ccxdp.lab.topology import Lab, LabSpec  # noqa: E402

RUNS = ("blocked", "unlisted", "blocked_zipf", "unlisted_zipf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", type=Path, help="another checkout (with its .venv)")
    ap.add_argument("--sizes", default="1000000",
                    help="names in the list, comma-separated; each is its table's capacity")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ccxdp-bench-cmp-"))
    sizes = [int(x) for x in args.sizes.split(",")]
    clis = {"this": Path(sys.executable).parent / "ccxdp"}
    if args.other:
        clis["other"] = args.other.resolve() / ".venv" / "bin" / "ccxdp"
    builds = {f"{b} {n:,}": (cli, n) for b, cli in clis.items() for n in sizes}
    cx = {b: [str(cli), "--pin-dir", f"/sys/fs/bpf/ccxdp-cmp-{i}-{work.name[-8:]}",
              "--state-dir", str(work / f"state-{i}")]
          for i, (b, (cli, _)) in enumerate(builds.items())}
    stats_was = BPF_STATS.read_text().strip()
    ns: dict[str, list[float]] = {}
    try:
        names = block_names(max(sizes))
        files = write_inputs(work, names, min(sizes))
        lists = {}
        for n in sizes:
            lists[n] = work / f"list-{n}.txt"
            lists[n].write_text("".join(x + "\n" for x in names[:n]))
        del names
        spec = LabSpec(prefix="bxc", second_client=False, sinkhole=False, start_timeout=120,
                       unbound_extra=("log-queries: no",))
        with Lab(spec) as lab:
            bench = Bench(lab, args.seconds, work)
            where = [lab.res_if, *lab.res_netns_opt]
            capacity = {n: n for n in sizes}
            for b, (_, n) in builds.items():  # one import each; later attaches find the list
                subprocess.run([*cx[b], "attach", *where, "--max-names", str(capacity[n])],
                               check=True, capture_output=True)
                subprocess.run([*cx[b], "block", "import", str(lists[n]), "--action",
                                "nxdomain"], check=True, capture_output=True)
                subprocess.run([*cx[b], "detach", *where], check=True, capture_output=True)
            lab.native_tx_peer()
            BPF_STATS.write_text("1\n")
            lines = 2 * Limits(max_names=capacity[max(sizes)]).name_buckets
            for _ in range(args.rounds):
                for b in builds:
                    subprocess.run([*cx[b], "attach", *where], check=True, capture_output=True)
                    prog = xdp_prog_id(lab)
                    for run in RUNS:
                        r = bench.dnsperf(files[run], bpf_prog=prog)
                        ns.setdefault(f"{b} {run}", []).append(r["prog_ns_per_packet"])
                    subprocess.run([*cx[b], "detach", *where], check=True, capture_output=True)
                for floor, n in (("0-read floor", 0), ("1-read floor", lines)):
                    attach_answer_all(lab, floor_lines=n)
                    r = bench.dnsperf(files["blocked"], bpf_prog=xdp_prog_id(lab))
                    ns.setdefault(floor, []).append(r["prog_ns_per_packet"])
                    set_xdp(lab, -1)
    finally:
        BPF_STATS.write_text(stats_was + "\n")
        for b in builds:
            subprocess.run([*cx[b], "detach", "--purge"], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.mean(ns["1-read floor"])
    print(f"\n{'in place, ns per packet (bpf_stats)':<42} {'rounds':>20} {'mean':>6} "
          f"{'/ 1-read floor':>14}")
    for k, v in ns.items():
        print(f"{k:<42} {' '.join(f'{x:.0f}' for x in v):>20} {statistics.mean(v):>6.0f} "
              f"{statistics.mean(v) / floor:>14.2f}")
    args.json.write_text(json.dumps({"sizes": sizes, "rounds": args.rounds, "ns": ns},
                                    indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
