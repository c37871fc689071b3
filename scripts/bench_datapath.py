#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Per-packet cost of the XDP program through BPF_PROG_TEST_RUN, beside an empty program.

Prints ns per packet and the ratio to an empty XDP program measured in the same run, for: a
non-DNS frame, DNS queries of 1, 3 and 6 labels that miss with N names loaded, a blocked query,
a blocked name asked from an exempt source, and the answers, with N sources in the per-source
map. Rounds are interleaved and the median is reported, because these machines are noisy.
--json writes the figures (ns per packet and ratio to the empty program) for scripts/bench.sh.

    .venv/bin/python scripts/bench_datapath.py [--names 1000000] [--sources 1000000]
        [--repeat 1000000] [--json FILE]
"""

from __future__ import annotations

import argparse
import array
import ipaddress
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_collect import fill_sources  # noqa: E402

from ccxdp.datapath import bulk, libbpf, shared
from ccxdp.datapath.hashing import name_hash  # noqa: E402
from ccxdp.datapath.loader import Datapath, Limits  # noqa: E402
from ccxdp.datapath.nametable import NameTable  # noqa: E402
from ccxdp.datapath.settings import Settings  # noqa: E402
from ccxdp.policy import exempt
from tests.harness.frames import query, tcp4, tcp_query, udp4, udp6  # noqa: E402

BPF_PROG_TYPE_XDP = 6
XDP_PASS = 2
EXEMPT_NET = "198.18.7.0/24"  # an opted-out customer range; the frame below comes from it
EXEMPT_SRC = "198.18.7.7"


def empty_program() -> int:
    # r0 = XDP_PASS; exit
    insns = libbpf.pack_insn(0xB7, dst=0, imm=XDP_PASS) + libbpf.pack_insn(0x95)
    return libbpf.prog_load(BPF_PROG_TYPE_XDP, insns, name="ccxdp_empty")


def fill_names(dp: Datapath, count: int) -> str:
    """Publish `count` distinct names as the control plane does (nametable.py); returns one
    of them to use as the blocked query."""
    key = dp.hash_key()
    started = time.perf_counter()
    names = [f"c2-{i}.example{i % 97}.test" for i in range(count)]
    hashes = bulk.hash_names(names, key)
    values = array.array("Q", [shared.pack_entry(shared.Action.DROP, 0, 1)]) * count
    publish(dp, *bulk.sort_pairs(hashes, values))
    print(f"loaded {count:,} names in {time.perf_counter() - started:.1f} s")
    return f"c2-{count // 2}.example{(count // 2) % 97}.test"


def publish(dp: Datapath, hashes: array.array, values: array.array) -> None:
    with NameTable(dp) as table:
        table.publish(hashes, values)


def set_answer_entries(dp: Datapath) -> dict[str, str]:
    """One name per answering action, on top of the loaded names."""
    dp.set_settings(Settings(sinkhole_v4="198.18.9.9", sinkhole_v6="fd00:9::9"))
    names = {"nxdomain": "nx.c2.example", "sinkhole": "sink.c2.example"}
    key = dp.hash_key()
    with NameTable(dp) as table:
        hashes, values = table.read()
    extra = {name_hash(n, key): shared.pack_entry(shared.Action[a.upper()], 0, 1)
             for a, n in names.items()}
    hashes, values = bulk.merge(hashes, values, array.array("Q"),
                                  *bulk.sort_pairs(array.array("Q", extra),
                                                     array.array("Q", extra.values())))
    publish(dp, hashes, values)
    return names


def xlated_insns(fd: int) -> int | None:
    """The program's instruction count after the verifier (bpftool prog dump xlated)."""
    import subprocess

    prog_id = libbpf.prog_info(fd).id
    out = subprocess.run(["bpftool", "-j", "prog", "dump", "xlated", "id", str(prog_id)],
                         capture_output=True, text=True, check=False).stdout
    try:
        return len(json.loads(out))
    except ValueError:
        return None


def table_memory(dp: Datapath) -> str:
    total = 0
    for name in (shared.MAP_NAME_BUCKETS, shared.MAP_NAME_ACTIVE, shared.MAP_NAME_FILTER):
        with dp.open_map(name) as m:
            total += libbpf.map_memlock(m.fd)
    return f"{total / 2**20:.1f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sources", type=int, default=1_000_000,
                    help="entries put in the per-source map before measuring")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args()
    figures: dict[str, dict[str, float]] = {}

    pin_dir = Path("/sys/fs/bpf") / f"ccxdp-bench-{secrets.token_hex(4)}"
    state = Path(tempfile.mkdtemp(prefix="ccxdp-bench-"))
    dp = Datapath(pin_dir, state)
    fds = []
    try:
        with dp:
            fd = dp.load(Limits(max_names=args.names + 16,
                                max_sources=max(args.sources + 16, 1 << 16)))
        fds.append(fd)
        empty = empty_program()
        fds.append(empty)
        blocked_name = fill_names(dp, args.names)
        if args.sources:
            t = time.perf_counter()
            fill_sources(dp, args.sources, seed=1)
            print(f"filled {args.sources:,} sources in {time.perf_counter() - t:.1f} s")
        exempt._write(dp, [exempt.lpm_key(ipaddress.ip_network(EXEMPT_NET))])
        one, miss, deep = "localhost", "www.example.com", "a.b.c.d.example.com"
        answered = set_answer_entries(dp)
        frames = {
            "non-DNS (UDP to port 123)": (fd, udp4(b"\0" * 48, dport=123)),
            "non-DNS (TCP to port 443)": (fd, tcp4(b"\0" * 48, dport=443)),
            f"DNS miss, {one} (1 label)": (fd, udp4(query(one))),
            f"DNS miss, {miss} (3 labels), {args.names:,} names": (fd, udp4(query(miss))),
            f"DNS miss, {deep} (6 labels)": (fd, udp4(query(deep))),
            f"DNS blocked (drop), {blocked_name}": (fd, udp4(query(blocked_name))),
            f"DNS miss, x{blocked_name[1:]} (its length)": (
                fd, udp4(query("x" + blocked_name[1:]))),
            f"exempt source {EXEMPT_SRC}, blocked name": (
                fd, udp4(query(blocked_name), src=EXEMPT_SRC)),
            f"DNS miss over TCP, {miss}": (fd, tcp_query(query(miss))),
        }
        keys = dict(zip(frames, ["non_dns_udp", "non_dns_tcp", "miss_1_label", "miss_3_labels",
                                 "miss_6_labels", "blocked_drop", "miss_same_length",
                                 "exempt_source", "miss_3_labels_tcp"], strict=True))
        # An answer rewrites the frame in place, so a repeated test run would judge the
        # answer, not the query: these run once per call, many calls, beside the empty
        # program measured the same way.
        single = {
            "empty XDP program, one run a call": (empty, udp4(query(miss))),
            "answer: NXDOMAIN (IPv4)": (fd, udp4(query(answered["nxdomain"]))),
            "answer: sinkhole A (IPv4)": (fd, udp4(query(answered["sinkhole"]))),
            "answer: sinkhole AAAA (IPv6)": (fd, udp6(query(answered["sinkhole"], qtype=28))),
            "DNS miss, one run a call": (fd, udp4(query(miss))),
            "DNS blocked (drop), one run a call": (fd, udp4(query(blocked_name))),
            "DNS blocked over TCP: FIN to the resolver": (fd, tcp_query(query(blocked_name))),
        }
        cases = {"empty XDP program": (empty, udp4(query("www.example.com"))), **frames}
        samples: dict[str, list[int]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (prog, frame) in cases.items():
                run = libbpf.prog_test_run(prog, frame, repeat=args.repeat)
                samples[name].append(run.duration_ns)
        # Names whose leftmost suffix lands in different buckets, some spilled: the mean
        # includes the second reads a real query mix pays for.
        mix = [f"host{i}.site{i * 7919 % 1000}.example" for i in range(64)]
        mix_ns = [
            libbpf.prog_test_run(fd, udp4(query(n)), repeat=max(args.repeat // 16, 1)).duration_ns
            for n in mix
        ]
        with NameTable(dp) as table:
            view = table._buffer(table.active())
            metas = bytes(view[63::64])
            view.release()
        print(f"kernel memory of the name table: {table_memory(dp)}")
        insns = {"xlated": xlated_insns(fd), "verified": libbpf.prog_info(fd).verified_insns}
        print(f"program: {insns['xlated']} instructions after the verifier, which processed "
              f"{insns['verified']:,} to load it")
        spilled = sum(1 for m in metas if m & shared.NB_SPILLED)
        in_second = sum((m & 7) - ((m >> 3) & 7) for m in metas)
        base = statistics.median(samples["empty XDP program"])
        print(f"BPF_PROG_TEST_RUN, repeat {args.repeat:,}, median of {args.rounds} rounds")
        print(f"{'case':<48} {'ns/pkt':>8} {'x empty':>8}")
        for name, values in samples.items():
            med = statistics.median(values)
            print(f"{name:<48} {med:>8} {med / base:>8.2f}")
            if name in keys:
                figures[keys[name]] = {"ns": med, "ratio": med / base}
        figures["empty"] = {"ns": base, "ratio": 1.0}
        calls = max(args.repeat // 50, 1000)
        single_ns = {name: [] for name in single}
        for _ in range(calls):
            for name, (prog, frame) in single.items():
                single_ns[name].append(libbpf.prog_test_run(prog, frame).duration_ns)
        single_base = statistics.median(single_ns["empty XDP program, one run a call"])
        repeated_base = statistics.median(samples["empty XDP program"])
        print(f"one run per call, median of {calls:,} calls; each call carries a fixed cost")
        print("(timing, cold caches) that the empty program measures: 'net' takes it away and")
        print("adds the repeated empty program back, for a ratio comparable with the table above")
        print(f"{'case':<48} {'ns/call':>8} {'net ns':>8} {'x empty':>8}")
        for name, values in single_ns.items():
            med = statistics.median(values)
            net = med - single_base + repeated_base
            print(f"{name:<48} {med:>8} {net:>8} {net / repeated_base:>8.2f}")
            # The miss and the drop timed the same way show what a call's cold start adds
            # to them, and so what an answer costs beyond the drop it replaces.
            key = {"answer: NXDOMAIN (IPv4)": "answer_nxdomain",
                   "answer: sinkhole A (IPv4)": "answer_sinkhole_a",
                   "answer: sinkhole AAAA (IPv6)": "answer_sinkhole_aaaa",
                   "DNS miss, one run a call": "miss_one_run_a_call",
                   "DNS blocked (drop), one run a call": "blocked_drop_one_run_a_call",
                   "DNS blocked over TCP: FIN to the resolver": "blocked_tcp_one_run_a_call",
                   }.get(name)
            if key:
                figures[key] = {"ns": net, "ratio": net / repeated_base}
        mean = statistics.mean(mix_ns)
        print(f"{'DNS miss, mean over 64 three-label names':<48} {mean:>8.1f} {mean / base:>8.2f}")
        print(
            f"name table: {len(metas):,} buckets a buffer, {args.names / len(metas):.2f} names "
            f"a bucket; {spilled / len(metas):.2%} of buckets spilled (an unlisted suffix "
            f"there reads a second line), {in_second / max(args.names, 1):.3%} of names in "
            f"their second bucket"
        )
        figures["miss_mean_64_names"] = {"ns": mean, "ratio": mean / base}
        if args.json:
            args.json.write_text(json.dumps({
                "names": args.names, "sources": args.sources, "repeat": args.repeat,
                "rounds": args.rounds, "cases": figures,
                # a property of the table, not a timing: beside the cases, not among them
                "name_table": {"buckets": len(metas), "spilled_share": spilled / len(metas),
                               "in_second_share": in_second / max(args.names, 1)},
                "insns_xlated": insns["xlated"], "insns_verified": insns["verified"]},
                indent=1))
    finally:
        for f in fds:
            libbpf.close(f)
        if pin_dir.exists():
            for pin in pin_dir.iterdir():
                pin.unlink()
            pin_dir.rmdir()
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
