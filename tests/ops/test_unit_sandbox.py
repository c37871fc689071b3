"""The systemd unit's file-system sandbox, for real: `ccxdp run` and `ccxdp feed add` on a
fresh host (nothing compiled yet) where everything is read-only but what the unit makes
writable.

systemd is not PID 1 on the machines these tests run on (checked 2026-12-04: process 1 is
not systemd, so systemd-run cannot apply the unit's properties), so the sandbox is built as
systemd builds ``ProtectSystem=strict``, which works on any Linux host as root: a private
mount namespace (``unshare -m``) in which the unit's writable paths (``ReadWritePaths=``,
``StateDirectory=``, ``CacheDirectory=``) are bound onto themselves first, and every other
mount is then made read-only, ``/proc``, ``/sys`` and ``/dev`` aside (the API file systems,
which the unit leaves as they are: ``/sys/fs/bpf`` is in its ``ReadWritePaths=``), and
``/tmp`` is a tmpfs of its own (``PrivateTmp=``: the C compiler writes there). The state and
cache folders are the test's own, standing in for ``/var/lib/ccxdp`` and
``/var/cache/ccxdp``; the daemon runs with the unit's capabilities and
``NoNewPrivileges=``, in a network namespace of the test's own.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.ops.test_daemon_caps import UNIT, unit_caps

pytestmark = [pytest.mark.root, pytest.mark.netns]

# What the sandbox leaves alone: API file systems, named namespaces, and mounts not ours.
KEEP = ("/proc", "/sys", "/dev", "/run/netns", "/mnt/sandboxing")

SANDBOX = r"""
set -eu
keep="$1"; shift
n="$1"; shift
i=0
rw=" "
while [ "$i" -lt "$n" ]; do mount --bind "$1" "$1"; rw="$rw$1 "; shift; i=$((i + 1)); done
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r m; do
  case "$m" in KEEP_PATTERNS) continue ;; esac
  case "$rw" in *" $m "*) continue ;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null || true
done
# PrivateTmp=: a /tmp of its own; the test's folder (in the real /tmp) is brought in as it
# is now, read-only with its writable folders, through a descriptor opened before.
exec 3<"$keep"
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p "$keep"
mount --no-canonicalize --rbind /proc/self/fd/3 "$keep"
mount -o remount,bind,ro "$keep"  # a bind starts writable; its writable submounts stay so
exec 3<&-
if touch "$keep/probe" 2>/dev/null; then echo "sandbox: $keep is writable" >&2; exit 99; fi
exec "$@"
"""


def unit_properties(text: str) -> dict[str, list[str]]:
    props: dict[str, list[str]] = {}
    for key, value in re.findall(r"^([A-Za-z]+)=(.*)$", text, re.M):
        props.setdefault(key, []).append(value)
    return props


class Sandbox:
    """The unit's sandbox, mapped onto the test's folders."""

    def __init__(self, unit_text: str, ccxdp, tmp_path: Path):
        props = unit_properties(unit_text)
        assert props["ProtectSystem"] == ["strict"]
        assert props.get("NoNewPrivileges") == ["yes"]
        self.ccxdp, self.tmp = ccxdp, tmp_path
        self.cache = tmp_path / "cache"
        stand_in = {}
        for d in props.get("StateDirectory", []):
            stand_in[f"/var/lib/{d}"] = ccxdp.state_dir
        for d in props.get("CacheDirectory", []):
            stand_in[f"/var/cache/{d}"] = self.cache
        writable = {stand_in.get(p, Path(p)) for p in stand_in}
        for value in props.get("ReadWritePaths", []):
            for p in value.split():
                writable.add(stand_in.get(p, Path(p)))
        for p in writable:  # systemd makes StateDirectory= and CacheDirectory= folders
            p.mkdir(parents=True, exist_ok=True)
        self.writable = sorted(str(p) for p in writable
                               if not str(p).startswith(("/sys/", "/proc/", "/dev/")))
        self.env_cache = dict(e.split("=", 1) for v in props.get("Environment", [])
                              for e in shlex.split(v)).get("CCXDP_CACHE_DIR")

    def argv(self, netns: str, *args: str) -> list[str]:
        script = SANDBOX.replace("KEEP_PATTERNS",
                                 "|".join(f"{k}|{k}/*" for k in KEEP))
        caps = ",".join(f"+{c}" for c in unit_caps())
        return ["nsenter", f"--net=/run/netns/{netns}", "unshare", "--mount",
                "--propagation", "private", "sh", "-c", script, "sandbox",
                str(self.tmp), str(len(self.writable)), *self.writable,
                "env", f"CCXDP_CACHE_DIR={self.cache}", "PYTHONUNBUFFERED=1",
                "setpriv", "--no-new-privs", f"--bounding-set=-all,{caps}",
                str(self.ccxdp.exe), "--pin-dir", str(self.ccxdp.pin_dir), "--state-dir",
                str(self.ccxdp.state_dir), *args]


@pytest.fixture
def feed_and_config(ccxdp, bare_netns, tmp_path):
    subprocess.run(["ip", "-n", bare_netns, "link", "set", "lo", "up"], check=True)
    feed = tmp_path / "cc.txt"
    feed.write_text("evil.test\nbad.test\n")
    config = tmp_path / "ccxdp.toml"
    config.write_text('on_stop = "detach"\n[filter]\nmode = "generic"\n'
                      '[[interfaces]]\nname = "lo"\n'
                      f'[[feeds]]\nname = "cc"\npath = "{feed}"\n[collect]\ninterval = 1\n')
    try:
        yield feed, config
    finally:
        subprocess.run(["nsenter", f"--net=/run/netns/{bare_netns}", str(ccxdp.exe),
                        "--pin-dir", str(ccxdp.pin_dir), "--state-dir", str(ccxdp.state_dir),
                        "detach", "lo"], capture_output=True, timeout=60)


def run_in(sandbox: Sandbox, netns: str, *args: str, seconds: int | None = None):
    argv = sandbox.argv(netns, *args)
    if seconds is not None:  # a daemon: SIGTERM after a while (it then stops cleanly)
        argv = ["timeout", "--preserve-status", "-s", "TERM", str(seconds), *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180)


def events(stderr: str) -> list[dict[str, str]]:
    return [dict(w.split("=", 1) for w in shlex.split(line) if "=" in w)
            for line in stderr.splitlines()]


def test_the_unit_runs_the_daemon_on_a_fresh_host(ccxdp, bare_netns, feed_and_config,
                                                  tmp_path):
    """The shipped unit: the cache is writable, the helper is compiled into it, no
    warning, the feed is applied."""
    _, config = feed_and_config
    sandbox = Sandbox(UNIT.read_text(), ccxdp, tmp_path)
    assert sandbox.env_cache == "/var/cache/ccxdp"
    assert str(sandbox.cache) in sandbox.writable
    cp = run_in(sandbox, bare_netns, "run", "--config", str(config), seconds=8)
    assert cp.returncode == 0, cp.stderr
    got = events(cp.stderr)
    assert [e["event"] for e in got if e.get("event") in ("feed_sync", "ready", "stop")] == [
        "feed_sync", "ready", "stop"], cp.stderr
    assert all(e.get("level") == "info" for e in got), cp.stderr
    assert [p.name.startswith("ccxdp_bulk-") and p.suffix == ".so"
            for p in sandbox.cache.iterdir()] == [True]
    assert ccxdp.json("feed", "list")[0]["block"] == 2


def test_without_a_cache_directory_it_falls_back_with_one_line(ccxdp, bare_netns,
                                                               feed_and_config, tmp_path):
    """The unit as it was (no CacheDirectory=): the cache cannot be written. The daemon
    neither dies nor restarts: it applies the feed in pure Python and logs one warning;
    `feed add` in the same sandbox works too, with one warning line and no traceback."""
    feed, config = feed_and_config
    old = re.sub(r"^CacheDirectory.*\n", "", UNIT.read_text(), flags=re.M)
    sandbox = Sandbox(old, ccxdp, tmp_path)
    assert str(sandbox.cache) not in sandbox.writable
    cp = run_in(sandbox, bare_netns, "run", "--config", str(config), seconds=8)
    assert cp.returncode == 0, cp.stderr
    got = events(cp.stderr)
    warnings = [e for e in got if e.get("level") != "info"]
    assert warnings == [{
        "time": warnings[0]["time"], "level": "warning", "event": "bulk_helper",
        "error": f"cannot write the bulk helper's cache {sandbox.cache} (Read-only file "
                 f"system): using the slower pure-Python path; set CCXDP_CACHE_DIR to a "
                 f"writable folder"}], cp.stderr
    assert [e["event"] for e in got if e.get("event") in ("feed_sync", "ready", "stop")] == [
        "feed_sync", "ready", "stop"], cp.stderr
    assert not sandbox.cache.exists()
    assert ccxdp.json("feed", "list")[0]["block"] == 2

    other = tmp_path / "other.txt"
    other.write_text("c2.test\n")
    cp = run_in(sandbox, bare_netns, "feed", "add", "other", str(other))
    assert cp.returncode == 0, cp.stderr
    assert cp.stderr == (f"warning: cannot write the bulk helper's cache {sandbox.cache} "
                         f"(Read-only file system): using the slower pure-Python path; set "
                         f"CCXDP_CACHE_DIR to a writable folder\n")
    assert {f["name"]: f["block"] for f in ccxdp.json("feed", "list")} == {"cc": 2, "other": 1}
