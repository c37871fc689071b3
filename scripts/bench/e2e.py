#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""End to end in namespaces, under dnsperf: ccxdp against Unbound RPZ, and the load generator's
ceiling. Part of scripts/bench.sh, which runs it; it writes its figures as JSON.

One lab (ccxdp/lab/: resolver, client and switch namespaces, nothing routed out of them) whose
unbound loads an RPZ zone of the same N names that ccxdp later imports. In order:
  1. blocked names answered by Unbound from the RPZ (no XDP program on the resolver's NIC),
     uniformly and by a Zipf law;
  2. ccxdp attached, the N names imported as NXDOMAIN (timed: the time to its first answer);
  3. with kernel.bpf_stats_enabled=1 (each program's own run time per packet, in place; the
     sysctl is restored afterwards): blocked names answered by ccxdp, names nobody lists
     (passed to unbound, which refuses them), the same two with names drawn by a Zipf law,
     blocked names answered by the ceiling program (below: the floor with no memory read) and
     by the floor with one random read into an array the size of the name table, and the
     unlisted names through an empty program;
  4. blocked names answered by ccxdp (no bpf_stats) and by a trivial XDP program that answers
     every query (the ceiling), alternated;
  5. legitimate names (unbound's local zone) with ccxdp attached, with nothing attached, and
     with an empty XDP program attached, alternated.
Each dnsperf run reports qps, and unbound's own CPU (utime + stime from /proc) per query; a
short rate-limited run with -v gives latency percentiles. Everything goes on any exit.

    .venv/bin/python scripts/bench/e2e.py --names 1000000 --seconds 10 --json FILE
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ccxdp.datapath.loader import Limits  # noqa: E402
from ccxdp.lab.topology import Lab, LabSpec  # noqa: E402

VENV = Path(sys.executable).parent
CCXDP = VENV / "ccxdp"
LEGIT = ["www.lab.example", "mail.lab.example", "news.lab.example", "shop.lab.example"]
TICK = os.sysconf("SC_CLK_TCK")
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
# dnsperf's load: clients (source ports), queries in flight, threads. CCXDP_BENCH_DNSPERF
# overrides it (e.g. "-c 8 -q 1000 -T 2") to find the load generator's best on a machine.
DNSPERF_LOAD = os.environ.get("CCXDP_BENCH_DNSPERF", "-c 2 -q 200 -T 2").split()

# The ceiling: swap addresses and ports, set QR and NXDOMAIN, send it back. Nothing else.
ANSWER_ALL = r"""
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
int answer_all(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != htons(ETH_P_IP)) return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP) return XDP_PASS;
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > end || udp->dest != htons(53)) return XDP_PASS;
    unsigned char *dns = (void *)(udp + 1);
    if ((void *)(dns + 12) > end) return XDP_PASS;
    dns[2] |= 0x80;
    dns[3] = (dns[3] & 0xf0) | 3;
    unsigned char mac[ETH_ALEN];
    __builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, mac, ETH_ALEN);
    __be32 a = ip->saddr; ip->saddr = ip->daddr; ip->daddr = a;
    __be16 p = udp->source; udp->source = udp->dest; udp->dest = p;
    udp->check = 0;
    return XDP_TX;
}
"""


# The 1-read floor: the ceiling plus one read of a random cache line in an array as big as
# ccxdp's name table (both buffers), allocated the same way (a mappable array): what one cold
# read costs a program here, the least a lookup in a table that size can cost.
FLOOR_READ = ANSWER_ALL.replace("int answer_all(", r"""
struct floor_line { unsigned char b[64]; };
BPF_F_TABLE("array", u32, struct floor_line, floor_lines, FLOOR_LINES, BPF_F_MMAPABLE);
int answer_all(""").replace("    dns[2] |= 0x80;", r"""
    u32 i = bpf_get_prandom_u32() % FLOOR_LINES;
    struct floor_line *line = floor_lines.lookup(&i);
    if (line && line->b[i & 63] == 0x5a) return XDP_PASS; /* never: the array is zero */
    dns[2] |= 0x80;""")
ZIPF_EXPONENT = 1.0
ZIPF_QUERIES = 100_000


def zipf_sample(names: list[str], k: int, seed: int) -> list[str]:
    """k names drawn with P(rank r) proportional to 1 / r^s, ranks given in a shuffled order
    (popularity has nothing to do with where a name's hash lands), as resolvers see names."""
    import random
    from itertools import accumulate

    rng = random.Random(seed)
    ranked = names[:]
    rng.shuffle(ranked)
    cum = list(accumulate(1 / r**ZIPF_EXPONENT for r in range(1, len(ranked) + 1)))
    return rng.choices(ranked, cum_weights=cum, k=k)


def block_names(n: int) -> list[str]:
    return [f"c2-{i}.example{i % 97}.test" for i in range(n)]


def write_inputs(work: Path, names: list[str], rpz_names: int) -> dict[str, Path]:
    """The query files and lists: ccxdp lists every name, Unbound's RPZ the first rpz_names,
    and the blocked queries are drawn from those, so that both block every one of them."""
    files = {"list": work / "names.txt", "rpz": work / "rpz.zone",
             "blocked": work / "q-blocked.txt", "legit": work / "q-legit.txt",
             "unlisted": work / "q-unlisted.txt", "blocked_zipf": work / "q-blocked-zipf.txt",
             "unlisted_zipf": work / "q-unlisted-zipf.txt"}
    files["list"].write_text("".join(n + "\n" for n in names))
    with open(files["rpz"], "w") as f:
        f.write("$ORIGIN rpz.bench.\n$TTL 60\n"
                "@ SOA localhost. root.localhost. 1 3600 600 86400 60\n@ NS localhost.\n")
        f.writelines(f"{n} CNAME .\n" for n in names[:rpz_names])
    # dnsperf cycles through its file; a spread of blocked names, every one in both lists.
    step = max(rpz_names // 100_000, 1)
    files["blocked"].write_text("".join(f"{n} A\n" for n in names[:rpz_names:step]))
    files["legit"].write_text("".join(f"{n} A\n" for n in LEGIT))
    # Names nobody lists, each different (unbound refuses them): the program's miss path with
    # its memory reads as under real traffic, not the four cached names above.
    files["unlisted"].write_text("".join(f"host{i}.site{i % 1000}.example A\n"
                                         for i in range(min(len(names), 100_000))))
    # The same by a Zipf law: over every listed name, and over as many names nobody lists.
    unlisted = [f"host{i}.site{i % 1000}.example" for i in range(rpz_names)]
    for key, pool, seed in (("blocked_zipf", names[:rpz_names], 1),
                            ("unlisted_zipf", unlisted[:rpz_names], 2)):
        files[key].write_text("".join(f"{n} A\n" for n in zipf_sample(pool, ZIPF_QUERIES, seed)))
    return files


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def parse_dnsperf(out: str) -> dict[str, float]:
    def num(label: str) -> float:
        m = re.search(rf"{label}:\s+([0-9.]+)", out)
        return float(m.group(1)) if m else 0.0

    codes = re.search(r"Response codes:\s+(.*)", out)
    return {"rcodes": codes.group(1).strip() if codes else "", "sent": num("Queries sent"),
            "completed": num("Queries completed"), "lost": num("Queries lost"),
            "qps": num("Queries per second"),
            "avg_latency_us": num(r"Average Latency \(s\)") * 1e6}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def xdp_prog_id(lab: Lab) -> int | None:
    out = subprocess.run(["ip", "-j", "-n", lab.res_ns, "link", "show", "dev", lab.res_if],
                         capture_output=True, text=True, check=True).stdout
    xdp = json.loads(out)[0].get("xdp", {})
    return xdp.get("prog", {}).get("id")


def prog_stats(prog_id: int) -> tuple[int, int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    return d.get("run_time_ns", 0), d.get("run_cnt", 0)


class Bench:
    def __init__(self, lab: Lab, seconds: float, work: Path):
        self.lab, self.seconds, self.work = lab, seconds, work

    def dnsperf(self, queries: Path, bpf_prog: int | None = None) -> dict[str, float]:
        lab = self.lab
        pid = lab.unbound_pid
        assert pid is not None
        before = cpu_ticks(pid)
        stats0 = prog_stats(bpf_prog) if bpf_prog else None
        cp = lab.run("cli", ["dnsperf", "-s", lab.res_v4, "-d", str(queries), "-l",
                             str(self.seconds), *DNSPERF_LOAD, "-t", "2"],
                     capture_output=True, text=True, timeout=self.seconds + 60)
        ticks = cpu_ticks(pid) - before
        res = parse_dnsperf(cp.stdout)
        if res["completed"] == 0:
            raise RuntimeError(f"dnsperf got no answers: {cp.stdout}{cp.stderr}")
        res["unbound_cpu_us_per_query"] = ticks / TICK * 1e6 / res["completed"]
        if stats0 is not None:
            t1, c1 = prog_stats(bpf_prog)
            runs = c1 - stats0[1]
            res["prog_ns_per_packet"] = (t1 - stats0[0]) / runs if runs else 0.0
            res["prog_runs"] = runs
        # Latency percentiles: a short run at a fixed rate, every answer reported (-v).
        rate = 20_000
        cp = lab.run("cli", ["dnsperf", "-s", lab.res_v4, "-d", str(queries), "-l",
                             str(max(1.0, self.seconds / 5)), "-Q", str(rate), "-v",
                             "-t", "2"],
                     capture_output=True, text=True, timeout=self.seconds + 60)
        lat = [float(line.rsplit(None, 1)[1]) * 1e6 for line in cp.stdout.splitlines()
               if line.startswith(">") and len(line.split()) >= 4]
        res.update({"latency_rate_qps": rate, "p50_us": percentile(lat, 50),
                    "p99_us": percentile(lat, 99), "p999_us": percentile(lat, 99.9)})
        print(f"  {queries.name}: {res['qps']:,.0f} qps, unbound "
              f"{res['unbound_cpu_us_per_query']:.2f} us CPU/query, p50 {res['p50_us']:.0f} us, "
              f"p99 {res['p99_us']:.0f} us", flush=True)
        return res


def set_xdp(lab: Lab, fd: int) -> None:
    """Attach the program behind fd to the resolver's NIC in native mode (-1: remove it)."""
    from pyroute2 import IPRoute

    with IPRoute(netns=lab.res_ns) as ipr:
        idx = ipr.link_lookup(ifname=lab.res_if)[0]
        ipr.link("set", index=idx, IFLA_XDP={"attrs": [("IFLA_XDP_FD", fd),
                                                       ("IFLA_XDP_FLAGS", 4)]})


def attach_pass(lab: Lab) -> None:
    """An empty program (r0 = XDP_PASS): what any XDP program on a veth costs by itself (the
    veth then takes its frames through NAPI and an skb-to-xdp conversion; a NIC does not)."""
    from ccxdp.datapath import libbpf

    fd = libbpf.prog_load(6, libbpf.pack_insn(0xB7, dst=0, imm=2) + libbpf.pack_insn(0x95),
                          name="bench_pass")
    try:
        set_xdp(lab, fd)
    finally:
        libbpf.close(fd)


def attach_answer_all(lab: Lab, floor_lines: int = 0) -> None:
    """The ceiling (floor_lines 0), or the 1-read floor over floor_lines cache lines."""
    from bcc import BPF

    from ccxdp.datapath.kernel_headers import configure_environment

    configure_environment()  # bcc finds the kernel headers as ccxdp's own build does
    if floor_lines:
        b = BPF(text=FLOOR_READ, cflags=[f"-DFLOOR_LINES={floor_lines}"])
    else:
        b = BPF(text=ANSWER_ALL)
    set_xdp(lab, b.load_func("answer_all", BPF.XDP).fd)
    b.cleanup()  # the attachment holds the program


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--legit-rounds", type=int, default=2,
                    help="alternated runs of legitimate queries with and without ccxdp, and "
                         "of blocked names answered by ccxdp and by the ceiling")
    ap.add_argument("--max-names", type=int, default=Limits.max_names,
                    help="ccxdp's capacity (attach --max-names); the floor's array matches it")
    ap.add_argument("--rpz-names", type=int,
                    help="names in Unbound's RPZ, the first of --names (default: all); the "
                         "blocked queries come from these. For a ccxdp table bigger than an "
                         "RPZ this machine can hold")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ccxdp-bench-e2e-"))
    pins = Path("/sys/fs/bpf") / f"ccxdp-bench-{os.getpid()}"
    state = work / "state"
    cx = [str(CCXDP), "--pin-dir", str(pins), "--state-dir", str(state)]
    stats_was = BPF_STATS.read_text().strip()
    out: dict[str, object] = {"names": args.names, "seconds": args.seconds,
                              "rpz_names": args.rpz_names or args.names}
    try:
        files = write_inputs(work, block_names(args.names), args.rpz_names or args.names)
        spec = LabSpec(
            prefix="bxn", second_client=False, sinkhole=False, start_timeout=300,
            unbound_extra=("log-queries: no", 'module-config: "respip iterator"',
                           "rpz:", "    name: rpz.bench.", f'    zonefile: "{files["rpz"]}"'),
        )
        t = time.perf_counter()
        with Lab(spec) as lab:  # built on entry: unbound has answered once it returns
            build_s = time.perf_counter() - t
            pid = lab.unbound_pid
            assert pid is not None
            out["unbound_rpz"] = {"load_s": build_s, "rss_mb": rss_mb(pid)}
            print(f"  unbound with a {args.names:,}-name RPZ: first answer after {build_s:.1f} s "
                  f"(lab build included), {rss_mb(pid):.0f} MB resident", flush=True)
            bench = Bench(lab, args.seconds, work)
            out["unbound_blocked"] = bench.dnsperf(files["blocked"])
            out["unbound_blocked_zipf"] = bench.dnsperf(files["blocked_zipf"])

            attach = [*cx, "attach", lab.res_if, *lab.res_netns_opt,
                      "--max-names", str(args.max_names)]
            detach = [*cx, "detach", lab.res_if, *lab.res_netns_opt]
            subprocess.run(attach, check=True, capture_output=True)
            lab.native_tx_peer()
            t = time.perf_counter()
            subprocess.run([*cx, "block", "import", str(files["list"]), "--action", "nxdomain"],
                           check=True, capture_output=True)
            out["ccxdp_import"] = {"s": time.perf_counter() - t}
            # The program's own run time, in a run of its own: bpf_stats costs every packet
            # two clock reads, which the qps runs below must not pay.
            # The same for the ceiling's answers and for an empty program: what any program
            # pays in place here (bpf_stats' own clock reads, the frame's first touch).
            BPF_STATS.write_text("1\n")
            try:
                prog = xdp_prog_id(lab)
                in_place = bench.dnsperf(files["blocked"], bpf_prog=prog)
                out["ccxdp_in_place_unlisted"] = bench.dnsperf(files["unlisted"], bpf_prog=prog)
                out["ccxdp_in_place_zipf"] = bench.dnsperf(files["blocked_zipf"], bpf_prog=prog)
                out["ccxdp_in_place_unlisted_zipf"] = bench.dnsperf(files["unlisted_zipf"],
                                                                    bpf_prog=prog)
                subprocess.run(detach, check=True, capture_output=True)
                attach_answer_all(lab)
                out["ceiling_in_place"] = bench.dnsperf(files["blocked"],
                                                        bpf_prog=xdp_prog_id(lab))
                lines = 2 * Limits(max_names=args.max_names).name_buckets
                attach_answer_all(lab, floor_lines=lines)
                out["floor1_in_place"] = bench.dnsperf(files["blocked"],
                                                       bpf_prog=xdp_prog_id(lab))
                out["floor1_in_place"]["lines"] = lines
                attach_pass(lab)
                out["empty_in_place"] = bench.dnsperf(files["unlisted"],
                                                      bpf_prog=xdp_prog_id(lab))
                set_xdp(lab, -1)
                subprocess.run(attach, check=True, capture_output=True)
            finally:
                BPF_STATS.write_text(stats_was + "\n")
            # Blocked names answered by ccxdp and by the ceiling, alternated, qps averaged.
            blocked: dict[str, list[dict]] = {"ccxdp_blocked": [], "ceiling": []}
            for _ in range(args.legit_rounds):
                blocked["ccxdp_blocked"].append(bench.dnsperf(files["blocked"]))
                subprocess.run(detach, check=True, capture_output=True)
                attach_answer_all(lab)
                blocked["ceiling"].append(bench.dnsperf(files["blocked"]))
                set_xdp(lab, -1)
                subprocess.run(attach, check=True, capture_output=True)
            for key, done in blocked.items():
                out[key] = {**done[-1], "qps": sum(r["qps"] for r in done) / len(done),
                            "qps_rounds": [r["qps"] for r in done]}
            out["ccxdp_blocked"]["prog_ns_per_packet"] = in_place.get("prog_ns_per_packet")
            out["ccxdp_in_place"] = in_place
            # Legitimate queries with and without ccxdp, alternated, the qps averaged: the
            # difference sought is smaller than this machine's drift over a minute.
            runs: dict[str, list[dict]] = {"legit_with": [], "legit_without": [],
                                           "legit_empty_xdp": []}
            for _ in range(args.legit_rounds):
                runs["legit_with"].append(bench.dnsperf(files["legit"]))
                subprocess.run(detach, check=True, capture_output=True)
                runs["legit_without"].append(bench.dnsperf(files["legit"]))
                attach_pass(lab)
                runs["legit_empty_xdp"].append(bench.dnsperf(files["legit"]))
                set_xdp(lab, -1)
                subprocess.run(attach, check=True, capture_output=True)
            for key, done in runs.items():
                out[key] = {**done[-1], "qps": sum(r["qps"] for r in done) / len(done),
                            "qps_rounds": [r["qps"] for r in done]}
    finally:
        BPF_STATS.write_text(stats_was + "\n")
        if pins.exists():
            subprocess.run([*cx, "detach", "--purge"], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
