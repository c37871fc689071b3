"""scripts/demo.sh, the README's first command, run as a user runs it (set-up included: it is
idempotent), under its own name: its output states the key facts, it takes under a minute,
and it leaves nothing behind."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from ccxdp.lab.netns import list_netns

pytestmark = [pytest.mark.root, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_demo_shows_the_product_and_leaves_nothing() -> None:
    name = f"dm{secrets.token_hex(2)}"
    pins, state = Path(f"/sys/fs/bpf/ccxdp-{name}"), Path(f"/run/ccxdp-{name}")
    start = time.monotonic()
    cp = subprocess.run([REPO / "scripts" / "demo.sh"], env={**os.environ, "CCXDP_DEMO_NAME": name},
                        capture_output=True, text=True, timeout=300)  # fmt: skip
    took = time.monotonic() - start
    out = cp.stdout
    assert cp.returncode == 0, out[-3000:] + cp.stderr[-3000:]
    assert took < 60, f"the demo took {took:.0f}s"

    # Each step says what happens, in one sentence.
    steps = re.findall(r"^\[(\d+)/(\d+)\] (.+)$", out, re.M)
    assert [int(n) for n, _, _ in steps] == list(range(1, len(steps) + 1))
    assert {total for _, total, _ in steps} == {str(len(steps))}
    assert all(s.endswith(".") and s.count(". ") == 0 for _, _, s in steps), steps

    # The bot's lookups: sinkholed, NXDOMAIN, dropped; then it connects to the sinkhole.
    assert "beacon 1: panel.emotet.test      A    -> 198.18.0.53" in out
    assert "beacon 3: panel.emotet.test      AAAA -> fd00:cc::53" in out
    assert "beacon 2: api.qbot.test          A    -> NXDOMAIN" in out
    assert "beacon 2: cnc.mirai.test         A    -> no answer (the query was dropped)" in out
    assert "connected to 198.18.0.53 port 443" in out and "connected to fd00:cc::53 port 443" in out
    # The clean client's names resolve.
    assert re.search(r"www\.lab\.example +A 198\.18\.1\.10 +AAAA fd00:cc:1::10", out)
    # Blocked queries counted, all of them the infected client's, none of the clean one's.
    m = re.search(r"ccxdp blocked (\d+) queries: (\d+) from the infected client "
                  r"\(198\.18\.0\.2, fd00:cc::2\) and (\d+) from the clean client "
                  r"\(198\.18\.0\.4, fd00:cc::4\)\.", out)  # fmt: skip
    assert m, out
    assert (int(m[1]), int(m[2]), int(m[3])) == (18, 18, 0)  # 3 beacons x 3 names x A, AAAA
    # The sinkhole saw the infected client's connections, and only those.
    assert re.search(r"The sinkhole recorded 2 TCP connection attempts from the infected "
                     r"client and 0 from the clean client\.", out)  # fmt: skip
    assert "198.18.0.53:443" in out and "[fd00:cc::53]:443" in out
    # The feeds were loaded as feeds, in two formats.
    assert re.search(r"panel\.emotet\.test\s.*sinkhole.*emotet", out), out
    assert re.search(r"api\.qbot\.test\s.*nxdomain.*qakbot", out), out
    # The infected line is notified once, by an e-mail naming no domain; the clean one not.
    assert "Notified this month: L-1001; not notified: none." in out
    assert "To: household-1001@subscriber.example" in out
    mail = out[out.index("Subject: A device on your internet line"):]
    assert ".test" not in mail[:mail.index("[9/9]")], "the e-mail names no domain"
    assert "nothing of the demo is left on this machine" in out

    # And indeed nothing is.
    assert [n for n in list_netns() if n.startswith(f"{name}-")] == []
    assert not pins.exists() and not state.exists()
    assert _processes_mentioning(str(state)) == [] and _processes_mentioning(f"{name}-") == []
