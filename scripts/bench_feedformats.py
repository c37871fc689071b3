#!/usr/bin/env python3
"""Parse time of each feed format for a large generated feed (a benchmark, not a test).

Writes one file per format into a temporary folder, a name a line (C&C-like names such as
c2-123456.family-17.test, a comment every thousand lines), and prints the best of --runs
parse_feed() calls per format, with names per second (wall clock; the CPU time beside it
tells whether other work on the machine stretched the run).

    .venv/bin/python scripts/bench_feedformats.py                # 1,000,000 names
    .venv/bin/python scripts/bench_feedformats.py --names 100000 --formats plain,rpz
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccxdp.policy.formats import parse_feed  # noqa: E402

COMMENT_EVERY = 1000


def names(n: int) -> Iterator[str]:
    for i in range(n):
        yield f"c2-{i}.family-{i % 50}.test"


def with_comments(n: int, line: Callable[[int, str], str], comment: str) -> Iterator[str]:
    for i, name in enumerate(names(n)):
        if i % COMMENT_EVERY == 0:
            yield f"{comment} block {i // COMMENT_EVERY}"
        yield line(i, name)


def plain(n: int) -> Iterator[str]:
    yield "# generated C&C names"
    yield from with_comments(n, lambda i, name: name, "#")


def hosts(n: int) -> Iterator[str]:
    yield "127.0.0.1 localhost"
    yield "::1 localhost ip6-localhost ip6-loopback"
    yield from with_comments(n, lambda i, name: f"0.0.0.0 {name}", "#")


def adblock(n: int) -> Iterator[str]:
    yield "[Adblock Plus 2.0]"
    yield from with_comments(n, lambda i, name: f"||{name}^", "!")


def rpz(n: int) -> Iterator[str]:
    yield "$TTL 30"
    yield "@ SOA rpz.example. hostmaster.rpz.example. 1 300 1800 604800 30"
    yield " NS localhost."
    yield from with_comments(n, lambda i, name: f"{name} CNAME .", ";")


def threatfox_csv(n: int) -> Iterator[str]:
    """ThreatFox's export layout, every row a domain (the column chosen is ioc_value)."""
    yield "# ThreatFox IOCs: CSV export"
    yield ('# "first_seen_utc","ioc_id","ioc_value","ioc_type","threat_type","fk_malware",'
           '"malware_printable","confidence_level","reporter"')
    for i, name in enumerate(names(n)):
        yield (f'"2024-05-01 12:00:00", "{i}", "{name}", "domain", "botnet_cc", '
               f'"win.family_{i % 50}", "Family {i % 50}", "75", "abuse_ch"')


def urlhaus_csv(n: int) -> Iterator[str]:
    """URLhaus's export layout: the host comes out of a URL."""
    yield "# abuse.ch URLhaus Database Dump (CSV)"
    yield "# id,dateadded,url,url_status,threat,tags,urlhaus_link,reporter"
    for i, name in enumerate(names(n)):
        yield (f'"{i}","2024-05-01 12:00:00","http://{name}/bin.sh","online",'
               f'"malware_download","elf,mips","https://urlhaus.abuse.ch/url/{i}/","x"')


def domain_csv(n: int) -> Iterator[str]:
    """A generic one-column-of-interest CSV."""
    yield "domain,first_seen,family"
    for i, name in enumerate(names(n)):
        yield f"{name},2024-05-01,family-{i % 50}"


CASES = {
    "plain": ("plain", plain),
    "hosts": ("hosts", hosts),
    "adblock": ("adblock", adblock),
    "rpz": ("rpz", rpz),
    "csv-domain": ("csv", domain_csv),
    "csv-threatfox": ("csv", threatfox_csv),
    "csv-urlhaus": ("csv", urlhaus_csv),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="best of this many parses")
    parser.add_argument("--formats", default=",".join(CASES), help="comma-separated cases")
    args = parser.parse_args()
    wanted = args.formats.split(",")
    unknown = [w for w in wanted if w not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    print(f"{args.names:,} names, best of {args.runs}")
    with tempfile.TemporaryDirectory(prefix="ccxdp-bench-feeds-") as tmp:
        for case in wanted:
            fmt, make = CASES[case]
            path = Path(tmp) / f"{case}.txt"
            path.write_text("\n".join(make(args.names)) + "\n")
            best = best_cpu = float("inf")
            parsed = None
            for _ in range(args.runs):
                del parsed  # freeing the last run's million entries is not this run's time
                start, start_cpu = time.perf_counter(), time.process_time()
                parsed = parse_feed(path, fmt)
                best = min(best, time.perf_counter() - start)
                best_cpu = min(best_cpu, time.process_time() - start_cpu)
            if len(parsed.entries) != args.names or parsed.bad:
                print(f"{case}: expected {args.names:,} entries and no bad line, got "
                      f"{len(parsed.entries):,} and {len(parsed.bad):,}", file=sys.stderr)
                return 1
            size = path.stat().st_size / 1e6
            print(f"{case:14} {best:6.2f} s  {args.names / best:>12,.0f} names/s  "
                  f"(CPU {best_cpu:.2f} s, {size:.0f} MB)")
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
