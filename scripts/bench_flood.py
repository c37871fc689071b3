#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""A spoofed flood against the per-source map: what it leaves of an infected line's hits.

1. Program level (BPF_PROG_TEST_RUN, exact counts): the per-source map sized small
   (--sources, 10,000 a buffer), a million blocked queries from random spoofed sources
   (every address of 198.19.0.0/16 once, the rest distinct IPv6 sources of fd00:dd::/32)
   and, once a tenth of the flood has passed, one in a thousand a query of an infected line
   (198.18.0.2, and an IPv6 privacy address that changes on every query within
   fd00:cc:7:7::/64). Three runs: no address
   plan (today's behaviour), a plan of the subscribers' prefixes (198.18.0.0/24,
   fd00:cc::/32) that leaves the spoofers outside, and a plan so wide (198.18.0.0/15,
   fd00::/8) that the spoofers are inside it and fill the map. For each: the line's hits
   counted against sent, source_lost, outside_plan, the map's entries.
   Then the program's cost per packet (BPF_PROG_TEST_RUN's repeat) for a spoofed query
   outside the plan, a counted query inside it, and the same with no plan, beside an empty
   program.
2. In place (--in-place; as scripts/bench/e2e.py does, in a namespace lab with a real
   unbound): ccxdp attached to the resolver's NIC with the subscribers' plan, the blocked
   name answered NXDOMAIN. dnsperf from the infected line alone, then the same dnsperf
   while a raw-socket sender in the client's namespace floods random spoofed sources
   (dnsperf cannot spoof sources itself); bpf_stats gives the program's own ns per packet
   under the flood. Printed: dnsperf's qps both ways, frames the flood sent and the
   program saw, the line's hits counted against what dnsperf sent, source_lost.

    .venv/bin/python scripts/bench_flood.py [--flood 1000000] [--sources 10000]
        [--in-place] [--seconds 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import array
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from ccxdp.datapath import libbpf, shared  # noqa: E402
from ccxdp.datapath.hashing import name_hash  # noqa: E402
from ccxdp.datapath.loader import Datapath, Limits  # noqa: E402
from ccxdp.datapath.nametable import NameTable  # noqa: E402
from ccxdp.hits.stats import read_stats  # noqa: E402
from ccxdp.policy import plan  # noqa: E402
from ccxdp.policy.catalog import Catalog  # noqa: E402
from tests.harness.flood import random_sources, with_source  # noqa: E402
from tests.harness.frames import query, udp4, udp6  # noqa: E402

BLOCKED = "c2.flood.test"
CLIENT4 = "198.18.0.2"
PRIVACY_NET = "fd00:cc:7:7::/64"  # the line's IPv6 /64; its address rotates
SPOOF_V4, SPOOF_V6 = "198.19.0.0/16", "fd00:dd::/32"
SUBSCRIBERS = ["198.18.0.0/24", "fd00:cc::/32"]
WIDE = ["198.18.0.0/15", "fd00::/8"]  # a plan that holds the spoofers too
EVERY = 1000  # one query of the line per this many spoofed ones
XDP_DROP, XDP_PASS = 1, 2


def spoofed(count: int, seed: int):
    """(family, packed source) of ``count`` spoofed queries: every address of SPOOF_V4 once,
    shuffled, then distinct IPv6 sources of SPOOF_V6."""
    v4 = min(count, 1 << 16)
    yield from random_sources(SPOOF_V4, v4, seed)
    yield from random_sources(SPOOF_V6, count - v4, seed + 1)


def flood_run(dp: Datapath, fd: int, catalog: Catalog, prefixes: list[str], count: int,
              label: str) -> dict:
    plan.set_prefixes(dp, catalog, prefixes)
    with dp.open_map(shared.MAP_SOURCES) as m:
        for k in list(m.keys()):
            m.delete(k)
    v4, v6 = udp4(query(BLOCKED)), udp6(query(BLOCKED))
    privacy = random_sources(PRIVACY_NET, count // EVERY + 1, seed=9)
    before = read_stats(dp)
    sent4 = sent6 = 0
    run = libbpf.prog_test_run
    t = time.perf_counter()
    # The line's first hit comes once the flood has run a while (as after a collection,
    # which empties the buffer the flood then refills first).
    start = count // 10
    for i, src in enumerate(spoofed(count, seed=7)):
        if i >= start and (i - start) % EVERY == 0:
            run(fd, v4)
            run(fd, with_source(v6, next(privacy)))
            sent4 += 1
            sent6 += 1
        run(fd, with_source(v4 if len(src) == 4 else v6, src))
    seconds = time.perf_counter() - t
    after = read_stats(dp)
    hits = {s.address: s.hits for s in after.sources}
    out = {
        "plan": prefixes,
        "spoofed": count,
        "line_v4_sent": sent4, "line_v4_counted": hits.get(CLIENT4, 0),
        "line_v6_sent": sent6, "line_v6_counted": hits.get(PRIVACY_NET, 0),
        "source_lost": after.events["source_lost"] - before.events["source_lost"],
        "outside_plan": after.events["outside_plan"] - before.events["outside_plan"],
        "blocked": after.outcomes["blocked"] - before.outcomes["blocked"],
        "map_entries": len(after.sources),
        "frames_per_s": (count + sent4 + sent6) / seconds,
    }
    print(f"  {label:<34} line v4 {out['line_v4_counted']:>5,}/{sent4:,}  "
          f"v6 {out['line_v6_counted']:>5,}/{sent6:,}  source_lost {out['source_lost']:>9,}  "
          f"outside_plan {out['outside_plan']:>9,}  entries {out['map_entries']:>6,}  "
          f"({out['frames_per_s']:,.0f} frames/s)", flush=True)
    return out


def empty_program() -> int:
    insns = libbpf.pack_insn(0xB7, dst=0, imm=XDP_PASS) + libbpf.pack_insn(0x95)
    return libbpf.prog_load(6, insns, name="ccxdp_empty")


def cost_run(dp: Datapath, fd: int, catalog: Catalog, repeat: int, rounds: int) -> dict:
    """ns per packet, the median of interleaved rounds."""
    outside = with_source(udp4(query(BLOCKED)), socket.inet_aton("198.19.4.4"))
    inside = udp4(query(BLOCKED))
    empty = empty_program()
    cases = {"empty program": (empty, inside, None),
             "spoofed, outside the plan": (fd, outside, SUBSCRIBERS),
             "the line, inside the plan": (fd, inside, SUBSCRIBERS),
             "the line, no plan": (fd, inside, [])}
    times: dict[str, list[float]] = {k: [] for k in cases}
    try:
        for _ in range(rounds):
            for name, (prog, frame, prefixes) in cases.items():
                if prefixes is not None:
                    plan.set_prefixes(dp, catalog, prefixes)
                times[name].append(libbpf.prog_test_run(prog, frame, repeat=repeat).duration_ns)
    finally:
        libbpf.close(empty)
    base = statistics.median(times["empty program"])
    out = {}
    for name, values in times.items():
        ns = statistics.median(values)
        out[name] = {"ns": ns, "ratio": ns / base}
        print(f"  {name:<28} {ns:7.1f} ns/packet  {ns / base:5.2f} x empty", flush=True)
    return out


def program_level(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="ccxdp-bench-flood-"))
    pins = Path("/sys/fs/bpf") / f"ccxdp-bench-flood-{os.getpid()}"
    dp = Datapath(pins, work / "state")
    out: dict = {"sources_per_buffer": args.sources, "map_capacity": 2 * args.sources}
    try:
        with dp:
            fd = dp.load(Limits(max_names=1024, max_sources=args.sources))
        try:
            dp.set_settings(replace(dp.settings(), source_prefix_v6=64))
            with NameTable(dp) as table:
                table.publish(array.array("Q", [name_hash(BLOCKED, dp.hash_key())]),
                              array.array("Q", [shared.pack_entry(shared.Action.DROP, 0, 1)]))
            assert libbpf.prog_test_run(fd, udp4(query(BLOCKED))).retval == XDP_DROP
            print(f"per-source map: {args.sources:,} a buffer ({2 * args.sources:,} entries); "
                  f"{args.flood:,} spoofed queries, one of the line's per {EVERY:,}", flush=True)
            with Catalog(dp.catalog_path) as catalog:
                out["no_plan"] = flood_run(dp, fd, catalog, [], args.flood, "no plan (before)")
                out["plan"] = flood_run(dp, fd, catalog, SUBSCRIBERS, args.flood,
                                        "subscribers' plan")
                out["wide_plan"] = flood_run(dp, fd, catalog, WIDE, args.flood,
                                             "plan holding the spoofers")
                print("cost per packet (BPF_PROG_TEST_RUN):", flush=True)
                out["cost"] = cost_run(dp, fd, catalog, args.repeat, args.rounds)
        finally:
            libbpf.close(fd)
    finally:
        if pins.exists():
            for p in pins.iterdir():
                p.unlink()
            pins.rmdir()
        shutil.rmtree(work, ignore_errors=True)
    return out


# -- in place ---------------------------------------------------------------------------------

def sender(ifname: str, dst_mac: str, src_mac: str, dst4: str, seconds: float, pool: int,
           seed: int) -> None:
    """Run inside the client's namespace: send blocked queries from random spoofed IPv4
    sources (checksums right) as fast as one Python loop can, for ``seconds``; print the
    number sent."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    template = bytes(Ether(dst=dst_mac, src=src_mac) / IP(src="198.19.0.1", dst=dst4)
                     / UDP(sport=40000, dport=53) / query(BLOCKED))
    frames = [with_source(template, s, checksums=True)
              for s in random_sources(SPOOF_V4, min(pool, 1 << 16), seed)]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    sent = 0
    send = s.send
    end = time.monotonic() + seconds
    n = len(frames)
    while time.monotonic() < end:
        for i in range(0, n, 1):
            try:
                send(frames[i])
            except BlockingIOError:
                continue
            except OSError:  # ENOBUFS: the queue is full; the frame was not sent
                continue
            sent += 1
            if (i & 1023) == 0 and time.monotonic() >= end:
                break
    print(sent)


def mac_of(ns: str, ifname: str) -> str:
    out = subprocess.run(["ip", "-j", "-n", ns, "link", "show", "dev", ifname],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["address"]


def in_place(args) -> dict:
    from e2e import parse_dnsperf, prog_stats, xdp_prog_id

    from ccxdp.lab.topology import Lab, LabSpec

    if shutil.which("dnsperf") is None:
        print("dnsperf is not installed: the in-place part needs it (scripts/setup.sh)")
        return {"skipped": "no dnsperf"}
    venv = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="ccxdp-bench-flood-"))
    pins = Path("/sys/fs/bpf") / f"ccxdp-bench-flood-ip-{os.getpid()}"
    cx = [str(venv / "ccxdp"), "--pin-dir", str(pins), "--state-dir", str(work / "state")]
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats_was = stats_path.read_text().strip()
    queries = work / "queries.txt"
    queries.write_text(f"{BLOCKED} A\n")
    out: dict = {"seconds": args.seconds}
    try:
        spec = LabSpec(prefix="bfl", second_client=False, sinkhole=False,
                       unbound_extra=("log-queries: no",))
        with Lab(spec) as lab:
            subprocess.run([*cx, "attach", lab.res_if, *lab.res_netns_opt], check=True,
                           capture_output=True)
            lab.native_tx_peer()
            subprocess.run([*cx, "block", "add", BLOCKED, "--action", "nxdomain"], check=True,
                           capture_output=True)
            subprocess.run([*cx, "plan", "add", *SUBSCRIBERS], check=True, capture_output=True)
            dp = Datapath(pins, work / "state")
            res_mac, cli_mac = mac_of(lab.res_ns, lab.res_if), mac_of(lab.cli_ns, lab.cli_if)
            prog = xdp_prog_id(lab)
            dnsperf = ["dnsperf", "-s", lab.res_v4, "-d", str(queries), "-l", str(args.seconds),
                       "-c", "2", "-q", "200", "-T", "1", "-t", "2"]

            def measure(flood: bool) -> dict:
                before = read_stats(dp)
                t0, c0 = prog_stats(prog)
                flooder = None
                if flood:
                    flooder = lab.popen("cli", [sys.executable, __file__, "--sender",
                                                lab.cli_if, res_mac, cli_mac, lab.res_v4,
                                                str(args.seconds + 1)],
                                        stdout=subprocess.PIPE, text=True)
                    time.sleep(1)  # the sender builds its frames first
                cp = lab.run("cli", dnsperf, timeout=args.seconds + 60)
                flood_sent = int(flooder.communicate(timeout=120)[0].strip()) if flooder else 0
                t1, c1 = prog_stats(prog)
                after = read_stats(dp)
                perf = parse_dnsperf(cp.stdout)
                hits = {s.address: s.hits for s in after.sources}
                res = {
                    "dnsperf_qps": perf["qps"], "dnsperf_sent": perf["sent"],
                    "dnsperf_completed": perf["completed"],
                    "flood_sent": flood_sent,
                    "outside_plan": after.events["outside_plan"] - before.events["outside_plan"],
                    "line_counted": hits.get(CLIENT4, 0) - {s.address: s.hits for s in
                                                             before.sources}.get(CLIENT4, 0),
                    "source_lost": after.events["source_lost"] - before.events["source_lost"],
                    "prog_runs": c1 - c0,
                    "prog_ns_per_packet": (t1 - t0) / (c1 - c0) if c1 > c0 else 0.0,
                }
                what = "with flood" if flood else "alone"
                print(f"  {what:<10} dnsperf {res['dnsperf_qps']:>9,.0f} qps (sent "
                      f"{res['dnsperf_sent']:,.0f}, line counted {res['line_counted']:,});"
                      f" flood sent {flood_sent:,}, outside_plan {res['outside_plan']:,};"
                      f" source_lost {res['source_lost']}; program "
                      f"{res['prog_ns_per_packet']:.0f} ns/packet over {res['prog_runs']:,} runs",
                      flush=True)
                return res

            stats_path.write_text("1\n")
            print("in place (veth, native XDP, bpf_stats on):", flush=True)
            out["alone"] = measure(False)
            out["flood"] = measure(True)
    finally:
        stats_path.write_text(stats_was + "\n")
        if pins.exists():
            subprocess.run([*cx, "detach", "--purge"], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--sender":
        ifname, dst_mac, src_mac, dst4, seconds = sys.argv[2:7]
        sender(ifname, dst_mac, src_mac, dst4, float(seconds), 1 << 16, seed=11)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flood", type=int, default=1_000_000, help="spoofed queries")
    ap.add_argument("--sources", type=int, default=10_000, help="per-source map, a buffer")
    ap.add_argument("--repeat", type=int, default=200_000, help="BPF_PROG_TEST_RUN repeat")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--in-place", action="store_true", help="also the lab run under dnsperf")
    ap.add_argument("--seconds", type=float, default=10, help="of each in-place run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = {"program": program_level(args)}
    if args.in_place:
        out["in_place"] = in_place(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
