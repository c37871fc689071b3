"""The systemd unit's capabilities are what the daemon needs and no more: `ccxdp run` with
exactly the unit's bounding set compiles, pins, attaches, syncs and collects from nothing;
without any one of them it fails with nothing attached. Run in a namespace of the test's own
(generic XDP on its lo), entered with nsenter so the pins stay visible."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns]

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ccxdp.service"


def unit_caps() -> list[str]:
    text = UNIT.read_text()
    bounding = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    ambient = re.search(r"^AmbientCapabilities=(.*)$", text, re.M).group(1).split()
    assert bounding == ambient
    return [c.removeprefix("CAP_").lower() for c in bounding]


def test_the_unit_file_is_complete():
    text = UNIT.read_text()
    assert unit_caps() == ["bpf", "perfmon", "net_admin"]
    assert re.search(r"^Restart=on-failure$", text, re.M)
    assert re.search(r"^ExecStart=\S*ccxdp run --config /etc/ccxdp/ccxdp.toml$", text, re.M)
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", text, re.M)
    assert "KillSignal=SIGTERM" in text


def test_systemd_accepts_the_unit_file(tmp_path):
    """systemd's own checker: every key known, every value valid (with ExecStart pointed at
    this venv's ccxdp, which exists here)."""
    unit = tmp_path / "ccxdp.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ccxdp",
                                             str(Path(sys.executable).parent / "ccxdp")))
    cp = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert "ccxdp.service" not in cp.stderr + cp.stdout, cp.stderr + cp.stdout


def run_daemon(ccxdp, netns: str, config: Path, caps: list[str]) -> subprocess.CompletedProcess:
    """The daemon with only `caps`, for a few seconds, then SIGTERM (timeout sends it)."""
    argv = ["timeout", "--preserve-status", "-s", "TERM", "6",
            "nsenter", f"--net=/run/netns/{netns}", "setpriv",
            "--bounding-set=-all," + ",".join(f"+{c}" for c in caps),
            str(ccxdp.exe), "--pin-dir", str(ccxdp.pin_dir), "--state-dir",
            str(ccxdp.state_dir), "run", "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.fixture
def setup(ccxdp, bare_netns, tmp_path):
    subprocess.run(["ip", "-n", bare_netns, "link", "set", "lo", "up"], check=True)
    feed = tmp_path / "cc.txt"
    feed.write_text("evil.test\n")
    config = tmp_path / "ccxdp.toml"
    # on_stop = "detach": the daemon takes the program off lo itself (it names lo in its own
    # namespace, which the ccxdp fixture's teardown could not reach).
    # log_level "debug": the collections show in the log though they find no hits.
    config.write_text('on_stop = "detach"\nlog_level = "debug"\n[filter]\nmode = "generic"\n'
                      '[[interfaces]]\nname = "lo"\n'
                      f'[[feeds]]\nname = "cc"\npath = "{feed}"\n[collect]\ninterval = 1\n')
    try:
        yield config
    finally:
        # Whatever happened, forget lo (and detach it) from inside its namespace.
        subprocess.run(["nsenter", f"--net=/run/netns/{bare_netns}", str(ccxdp.exe),
                        "--pin-dir", str(ccxdp.pin_dir), "--state-dir", str(ccxdp.state_dir),
                        "detach", "lo"], capture_output=True, timeout=60)


def test_the_daemon_runs_with_exactly_the_units_capabilities(ccxdp, bare_netns, setup):
    assert not ccxdp.pin_dir.exists()  # from nothing: it compiles and pins too
    cp = run_daemon(ccxdp, bare_netns, setup, unit_caps())
    events = [dict(w.split("=", 1) for w in line.split() if "=" in w)
              for line in cp.stderr.splitlines()]
    names = [e.get("event") for e in events]
    assert cp.returncode == 0, cp.stderr
    for wanted in ("attach", "feed_sync", "ready", "collect", "detach", "stop"):
        assert wanted in names, cp.stderr
    assert all(e.get("level") in ("info", "debug") for e in events), cp.stderr
    assert ccxdp.json("feed", "list")[0]["block"] == 1


@pytest.mark.parametrize("missing", ["bpf", "perfmon", "net_admin"])
def test_without_any_one_of_them_it_fails_and_attaches_nothing(ccxdp, bare_netns, setup,
                                                               missing):
    caps = [c for c in unit_caps() if c != missing]
    cp = run_daemon(ccxdp, bare_netns, setup, caps)
    assert cp.returncode == 1, cp.stderr
    assert "Error: " in cp.stderr and "Traceback" not in cp.stderr
    link = subprocess.run(["ip", "-n", bare_netns, "link", "show", "lo"], capture_output=True,
                          text=True, check=True).stdout
    assert "xdp" not in link
