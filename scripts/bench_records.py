#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The human output of records, report and notify over a month of an ISP's data, in one run.

The month (in a temporary state folder, removed afterwards): --unattributed addresses with
hits on 3 days each and no session; --lines lines with one address each, on 3 days, in a
sessions CSV; one line whose delegated prefix held --big-line addresses. Every command runs
as the real ``ccxdp`` process, its stdout a pipe (TSV) and a terminal (a pty, 200 columns);
printed per command and output: seconds, CPU seconds, lines printed, peak RSS.

    .venv/bin/python scripts/bench_records.py [--unattributed 65000] [--lines 20000]
        [--big-line 20000] [--src DIR]

--src runs another checkout's ccxdp package (e.g. main's, for a before/after table).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# --src is read before the imports: the month is built by the same code that reads it.
SRC = (Path(sys.argv[sys.argv.index("--src") + 1]).resolve() if "--src" in sys.argv[:-1]
       else REPO)
sys.path.insert(0, str(SRC))

from ccxdp.hits.store import Store, store_path  # noqa: E402
from tests.harness.hits import HitRow, add_hits  # noqa: E402

PERIOD = "2026-11"
MONTH = datetime(2026, 11, 1, tzinfo=UTC)
NAMES = {1: "emotet", 2: "qakbot", 3: "icedid"}
BIG = ipaddress.ip_network("fd00:b16::/48")


def unattributed(n: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(0x0A000000 + n)  # 10.0.0.0/8: no session has these


def line_address(n: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(0xC6120000 + n)  # 198.18.0.0/15


def rows_for(address, n: int) -> list[HitRow]:
    out = []
    for k, day in enumerate((3 + n % 7, 12 + n % 5, 21 + n % 6)):
        hour = MONTH + timedelta(days=day - 1, hours=(n + k) % 24)
        cat = 1 + (n + k) % 3
        out.append(HitRow(address, cat, NAMES[cat], hour, 1 + (n * 7 + k) % 40,
                          hour + timedelta(seconds=n % 60), hour + timedelta(seconds=600)))
    return out


def build(state: Path, sessions: Path, unattributed_n: int, lines: int, big: int) -> int:
    rows = 0
    with Store(store_path(state)) as store:
        batch: list[HitRow] = []
        for n in range(unattributed_n):
            batch += rows_for(unattributed(n), n)
        for n in range(lines):
            batch += rows_for(line_address(n), n)
        for n in range(big):
            batch += rows_for(BIG[n + 1], n)[:1]
        rows = add_hits(store, batch, {"collected": 1})
    with open(sessions, "w") as f:
        f.write("line_id,address_or_prefix,start,stop\n")
        for n in range(lines):
            f.write(f"L-{n:06d},{line_address(n)},2026-10-01T00:00:00Z,\n")
        f.write(f"L-BIG,{BIG},2026-10-01T00:00:00Z,\n")
    return rows


def run(argv: list[str], env: dict, tty: bool) -> tuple[float, float, int, float]:
    """(seconds, CPU seconds, lines printed, peak RSS MiB) of one command. CPU seconds (user
    and system) are what a loaded machine does not inflate."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as err:
        if tty:
            primary, secondary = pty.openpty()
            proc = subprocess.Popen(argv, env={**env, "COLUMNS": "200", "LINES": "50"},
                                    stdout=secondary, stderr=err, cwd=env["HOME"])
            os.close(secondary)
            out = _drain(primary)
            os.close(primary)
        else:
            # Run from the temporary folder: python -c puts the working folder first on
            # sys.path, before --src.
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err,
                                    cwd=env["HOME"])
            out = proc.stdout.read()
            proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv)}: {err.read().decode()}")
    return (time.monotonic() - started, usage.ru_utime + usage.ru_stime, out.count(b"\n"),
            usage.ru_maxrss / 1024)


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 900)
        if not ready:
            raise SystemExit("no output for 900 s")
        try:
            data = os.read(fd, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unattributed", type=int, default=65_000)
    ap.add_argument("--lines", type=int, default=20_000)
    ap.add_argument("--big-line", type=int, default=20_000)
    ap.add_argument("--src", type=Path, default=REPO, help="the checkout whose ccxdp runs")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ccxdp-bench-records-"))
    try:
        state, sessions = root / "state", root / "sessions.csv"
        contacts = root / "subscribers.csv"  # nobody's: notify attributes, sends nothing
        contacts.write_text("line_id,email,language\nL-NONE,noc@isp.example,en\n")
        t = time.monotonic()
        rows = build(state, sessions, args.unattributed, args.lines, args.big_line)
        print(f"month {PERIOD}: {rows:,} hit rows; {args.unattributed:,} unattributed "
              f"addresses, {args.lines:,} lines of one address, one line of "
              f"{args.big_line:,} addresses (built in {time.monotonic() - t:.1f} s)")
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC),
               "HOME": str(root)}
        base = [sys.executable, "-c", "from ccxdp.cli import main; main()",
                "--state-dir", str(state)]
        # notify first (it attributes: a real run into an outbox), then what reads its work.
        commands = [
            ("notify dry run", ["notify", "--period", PERIOD, "--sessions", str(sessions)]),
            ("notify (attributes)", ["notify", "--period", PERIOD, "--sessions",
                                     str(sessions), "--subscribers", str(contacts),
                                     "--from", "noc@isp.example", "--out", str(root / "out"),
                                     "--json"]),
            ("records --top 3", ["records", "--period", PERIOD, "--top", "3"]),
            ("records", ["records", "--period", PERIOD]),
            ("records --line L-BIG", ["records", "--period", PERIOD, "--line", "L-BIG"]),
            ("report", ["report", "--period", PERIOD]),
            ("notify dry run, after", ["notify", "--period", PERIOD, "--sessions",
                                       str(sessions)]),
        ]
        print(f"{'command':<24} {'stdout':<6} {'seconds':>8} {'CPU s':>7} {'lines':>9} "
              f"{'peak MiB':>9}")
        for name, argv in commands:
            modes = ["pipe"] if "--json" in argv else ["pipe", "tty"]
            for mode in modes:
                seconds, cpu, lines, peak = run(base + argv, env, mode == "tty")
                print(f"{name:<24} {mode:<6} {seconds:>8.2f} {cpu:>7.2f} {lines:>9,} "
                      f"{peak:>9.0f}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
