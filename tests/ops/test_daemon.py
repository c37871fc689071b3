"""`ccxdp run` in the lab: the real console script as a daemon in the resolver's namespace,
driven by its config file and signals, proved with real queries from the client namespace
and unbound's own query log. The `daemons` fixture kills every daemon it started, even when
a test fails midway; the `ccxdp` and `lab` fixtures remove attachments, pins and namespaces.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import dns.rcode
import pytest

from ccxdp.hits.store import Store, store_path
from tests.conftest import one_line_error

pytestmark = [pytest.mark.root, pytest.mark.netns]


class DaemonProc:
    """One `ccxdp run` in the lab's resolver namespace, its stderr (one event a line) in a
    file."""

    def __init__(self, ccxdp, lab, config: Path, log: Path):
        self.ccxdp, self.lab, self.config, self.log_path = ccxdp, lab, config, log
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        enter = ["nsenter", f"--net=/run/netns/{self.lab.res_ns}"] if self.lab.res_ns else []
        return [*enter, str(self.ccxdp.exe), "--pin-dir", str(self.ccxdp.pin_dir),
                "--state-dir", str(self.ccxdp.state_dir), "run", "--config", str(self.config)]

    def start(self, wait: bool = True) -> DaemonProc:
        mark = len(self.events())
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=log)
        if wait:
            self.wait_for("ready", since=mark)
        return self

    def events(self) -> list[dict[str, str]]:
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(dict(w.split("=", 1) for w in shlex.split(line)))
            except ValueError:
                out.append({"event": "?", "line": line})
        return out

    def wait_for(self, event: str, since: int = 0, timeout: float = 120, poll: float = 0.05,
                 **fields: str) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events()[since:]:
                if e.get("event") == event and all(e.get(k) == v for k, v in fields.items()):
                    return e
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited {self.proc.returncode}:\n"
                                     f"{self.log_path.read_text()}")
            time.sleep(poll)
        raise AssertionError(f"no {event} {fields} within {timeout} s:\n"
                             f"{self.log_path.read_text()}")

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextmanager
def daemon_factory(ccxdp, lab, tmp_path):
    """Makes daemons on the private installation; kills each one that is still running."""
    made: list[DaemonProc] = []

    def make(config: Path) -> DaemonProc:
        d = DaemonProc(ccxdp, lab, config, tmp_path / f"daemon{len(made)}.log")
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            d.kill()


@pytest.fixture
def daemons(ccxdp, lab, tmp_path):
    with daemon_factory(ccxdp, lab, tmp_path) as make:
        yield make


def config_text(lab, feeds: list[dict], on_stop: str = "keep", collect: float = 3600,
                default_action: str = "nxdomain", metrics: str | None = None,
                interfaces: list[dict] = (), plan: list[str] | None = None,
                log_level: str = "info") -> str:
    lines = [f'on_stop = "{on_stop}"', f'log_level = "{log_level}"', "", "[filter]",
             f'default_action = "{default_action}"']
    if plan is not None:
        lines.append(f"plan = {json.dumps(plan)}")
    lines += ["", "[[interfaces]]", f'name = "{lab.res_if}"']
    if lab.res_ns:
        lines.append(f'netns = "{lab.res_ns}"')
    for i in interfaces:
        lines += ["", "[[interfaces]]", *(f"{k} = {json.dumps(v)}" for k, v in i.items())]
    for f in feeds:
        lines += ["", "[[feeds]]", *(f"{k} = {json.dumps(v)}" for k, v in f.items())]
    lines += ["", "[collect]", f"interval = {collect}"]
    if metrics:
        lines += ["", "[metrics]", f'listen = "{metrics}"']
    return "\n".join(lines) + "\n"


def rcode(lab, name: str, timeout: float = 1.0) -> str:
    answer = lab.query(name, timeout=timeout)
    return "timeout" if answer is None else dns.rcode.to_text(answer.rcode())


def test_the_daemon_attaches_filters_and_applies_feed_changes_on_schedule(ccxdp, lab, daemons,
                                                                          tmp_path):
    lab.native_tx_peer()
    feed = tmp_path / "cc.txt"
    feed.write_text("evil.test\n")
    ticking = tmp_path / "tick.txt"
    ticking.write_text("www.bad.test\n")
    late = tmp_path / "late.txt"
    late.write_text("x.y.evil.test\nhttp://not-a-name/\n")  # refused: a URL is a bad line
    cfg = tmp_path / "ccxdp.toml"
    cfg.write_text(config_text(lab, [
        {"name": "cc", "path": str(feed), "category": "emotet", "refresh": 3600},
        {"name": "tick", "path": str(ticking), "refresh": 1},
        {"name": "late", "path": str(late), "refresh": 3600},
    ]))
    d = daemons(cfg).start()
    start = d.events()
    assert [e["event"] for e in start if e["event"] in ("attach", "adopt")] == ["attach"]
    assert {(e["feed"], e["why"], e["result"]) for e in start if e["event"] == "feed_sync"} == {
        ("cc", "added", "ok"), ("tick", "added", "ok"), ("late", "start", "error")}
    assert [e["level"] for e in start if e.get("feed") == "late"] == ["error"]
    status = ccxdp.json("status")
    assert [a["attached"] for a in status["attachments"]] == [True]
    # One daemon per state folder: a second is refused, and the first runs on.
    second = ccxdp.run("run", "--config", str(cfg), check=False)
    one_line_error(second, 1, "another 'ccxdp run'", f"pid {d.proc.pid}")
    assert d.proc.poll() is None

    # Traffic flows: listed names answered by XDP, others by unbound.
    assert rcode(lab, "evil.test") == "NXDOMAIN"
    assert rcode(lab, "www.bad.test") == "NXDOMAIN"
    ok = lab.query("www.lab.example")
    assert [str(r) for r in ok.answer[0]] == ["198.18.1.10"]

    # The feed file changes: applied at the next look (a second), not at its refresh hour.
    mark = len(d.events())
    feed.write_text("bad.test\n")
    e = d.wait_for("feed_sync", since=mark, timeout=10, feed="cc", why="changed")
    assert (e["result"], e["added"], e["removed"]) == ("ok", "1", "1")
    assert rcode(lab, "bad.test") == "NXDOMAIN"
    assert [str(r) for r in lab.query("evil.test").answer[0]] == ["198.18.2.1"]
    # An unchanged file is read again on its interval, cheaply.
    d.wait_for("feed_sync", since=mark, timeout=10, feed="tick", why="interval",
               result="unchanged")
    assert lab.unbound_queries_for("bad.test") == 0
    # The refused file, mended: the feed is added as soon as it changes.
    assert [str(r) for r in lab.query("x.y.evil.test").answer[0]] == ["198.18.2.2"]
    mark = len(d.events())
    late.write_text("x.y.evil.test\n")
    d.wait_for("feed_sync", since=mark, timeout=10, feed="late", result="ok", why="added")
    assert rcode(lab, "x.y.evil.test") == "NXDOMAIN"

    # SIGTERM: stops cleanly, the filter stays (on_stop = "keep") and still blocks.
    assert d.stop() == 0
    assert d.events()[-1]["event"] == "stop"
    assert [a["attached"] for a in ccxdp.json("status")["attachments"]] == [True]
    assert rcode(lab, "bad.test") == "NXDOMAIN"

    # Started again, it adopts the attachment: no reset of the kernel's counters.
    blocked = ccxdp.json("stats")["outcomes"]["blocked"]
    mark = len(d.events())
    d.start()
    assert [e["event"] for e in d.events()[mark:] if e["event"] in ("attach", "adopt")] == [
        "adopt"]
    assert ccxdp.json("stats")["outcomes"]["blocked"] == blocked
    d.stop()


def test_sighup_applies_a_changed_config_and_keeps_the_old_one_when_bad(ccxdp, lab, daemons,
                                                                        bare_netns, tmp_path):
    lab.native_tx_peer()
    one = tmp_path / "one.txt"
    one.write_text("evil.test\n")
    two = tmp_path / "two.txt"
    two.write_text(".bad.test\n")  # the name and every name below it
    cfg = tmp_path / "ccxdp.toml"
    cfg.write_text(config_text(lab, [{"name": "one", "path": str(one)}],
                               plan=["198.18.0.0/24", "fd00:cc::/64"]))
    d = daemons(cfg).start()
    assert rcode(lab, "evil.test") == "NXDOMAIN"
    assert rcode(lab, "www.bad.test") == "NOERROR"
    assert ccxdp.json("status")["plan"]["prefixes"] == ["198.18.0.0/24", "fd00:cc::/64"]
    assert ccxdp.json("plan", "list")[0]["prefix"] == "198.18.0.0/24"

    # A changed config: another default action, feed one gone, feed two added, a second
    # interface, and the filter is to come off when the daemon stops.
    lo = {"name": "lo", "netns": bare_netns, "mode": "generic"}
    cfg.write_text(config_text(lab, [{"name": "two", "path": str(two), "action": "refused"}],
                               default_action="nodata", on_stop="detach", interfaces=[lo],
                               plan=["198.18.0.0/24"]))
    mark = len(d.events())
    d.send(signal.SIGHUP)
    d.wait_for("reload", since=mark, result="ok")
    assert [(e["prefix"], e["change"]) for e in d.events()[mark:] if e["event"] == "plan"] == [
        ("fd00:cc::/64", "removed")]
    assert ccxdp.json("status")["plan"]["prefixes"] == ["198.18.0.0/24"]
    assert {(e["event"], e["interface"]) for e in d.events()[mark:] if "interface" in e} == {
        ("attach", "lo")}
    attached = {(a["interface"], a["netns"]): a for a in ccxdp.json("status")["attachments"]}
    assert attached[("lo", bare_netns)]["mode"] == "generic"
    assert all(a["attached"] for a in attached.values()) and len(attached) == 2
    assert ccxdp.json("config", "show")["settings"]["default_action"] == "nodata"
    assert {f["name"] for f in ccxdp.json("feed", "list")} == {"two"}
    assert rcode(lab, "www.bad.test") == "REFUSED"
    assert [str(r) for r in lab.query("evil.test").answer[0]] == ["198.18.2.1"]

    # A bad config on SIGHUP: logged, nothing changes, the daemon runs on.
    cfg.write_text(cfg.read_text().replace('default_action = "nodata"',
                                           'default_action = "block"'))
    mark = len(d.events())
    d.send(signal.SIGHUP)
    e = d.wait_for("reload", since=mark, result="error")
    assert "filter.default_action" in e["error"] and str(cfg) in e["error"]
    assert ccxdp.json("config", "show")["settings"]["default_action"] == "nodata"
    assert rcode(lab, "www.bad.test") == "REFUSED"

    # The second interface out of the config again: detached at the next SIGHUP.
    cfg.write_text(config_text(lab, [{"name": "two", "path": str(two), "action": "refused"}],
                               default_action="nodata", on_stop="detach"))
    mark = len(d.events())
    d.send(signal.SIGHUP)
    d.wait_for("reload", since=mark, result="ok")
    assert [(e["event"], e["interface"]) for e in d.events()[mark:] if "interface" in e] == [
        ("detach", "lo")]
    assert [a["interface"] for a in ccxdp.json("status")["attachments"]] == [lab.res_if]

    # SIGTERM with on_stop = "detach": the filter comes off.
    assert d.stop() == 0
    assert [a["attached"] for a in ccxdp.json("status")["attachments"]] == []
    assert rcode(lab, "www.bad.test") == "NOERROR"


# Run in the client namespace: query one name over and over until told to stop, one JSON
# line per query: the rcode, or "timeout".
STREAMER = r"""
import json, os, sys
import dns.message, dns.query, dns.exception, dns.rcode
server, stop, name = sys.argv[1:4]
while not os.path.exists(stop):
    q = dns.message.make_query(name, "A")
    try:
        got = dns.rcode.to_text(dns.query.udp(q, server, timeout=1.0).rcode())
    except dns.exception.Timeout:
        got = "timeout"
    print(json.dumps(got), flush=True)
"""


KILL_DELAYS = (0.0, 0.002, 0.005, 0.01, 0.02)


def test_sigkill_mid_collection_loses_and_leaks_nothing(ccxdp, lab, daemons, tmp_path):
    lab.native_tx_peer()
    feed = tmp_path / "cc.txt"
    feed.write_text("evil.test\n")
    cfg = tmp_path / "ccxdp.toml"
    # log_level "debug": each collection's start is logged, which the kills are timed by.
    cfg.write_text(config_text(lab, [{"name": "cc", "path": str(feed)}], collect=0.2,
                               log_level="debug"))
    d = daemons(cfg).start()
    killed_in: list[str] = []  # the daemon's last event before each kill

    stop = tmp_path / "stop"
    out = tmp_path / "stream.jsonl"
    with open(out, "w") as log:
        client = lab.popen("cli", [sys.executable, "-c", STREAMER, lab.res_v4, str(stop),
                                   "evil.test"], stdout=log)
        try:
            time.sleep(1.0)
            # Kill it at and just after the start of a collection (one takes 10-100 ms here),
            # each time with the client querying on.
            for delay in KILL_DELAYS:
                mark = len(d.events())
                d.wait_for("collect_start", since=mark, timeout=10, poll=0.001)
                time.sleep(delay)
                d.proc.kill()
                d.proc.wait(timeout=10)
                killed_in.append(d.events()[-1]["event"])
                time.sleep(0.3)  # no daemon: the pinned filter goes on alone
                d.start()
                time.sleep(0.3)
        finally:
            stop.touch()
            client.wait(timeout=10)
    assert d.stop() == 0  # its last collection on the way out
    ccxdp.json("collect")

    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers) > 50, answers
    assert set(answers) == {"NXDOMAIN"}
    assert lab.unbound_queries_for("evil.test") == 0
    with Store(store_path(ccxdp.state_dir)) as store:
        assert store.total_hits() == len(answers)
    collects = [e for e in d.events() if e["event"] == "collect"]
    assert all(e["result"] == "ok" and e["lost"] == "0" for e in collects), collects
    # Kills landed inside collections: started, never logged as done, and the next one
    # recovered what the killed one had switched away from but not stored.
    assert "collect_start" in killed_in, killed_in
    assert any(int(e["recovered"]) > 0 for e in collects), collects


def test_the_daemon_expires_old_rows_after_collecting(ccxdp, lab, daemons, tmp_path):
    """collect.retention_days: after each collection, per-address rows older than that go,
    attributed ones into per-line totals; rows no line claimed stay unless
    expire_unattributed. Fresh hits are kept."""
    import ipaddress
    from datetime import UTC, datetime, timedelta

    from tests.harness.hits import HitRow, add_hits

    lab.native_tx_peer()
    old = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
    rows = [HitRow(ipaddress.ip_address(a), 1, "emotet", old, 2, old, old, ())
            for a in ("198.18.0.77", "198.18.0.78")]
    ccxdp.state_dir.mkdir(mode=0o700, exist_ok=True)
    with Store(store_path(ccxdp.state_dir)) as store:
        add_hits(store, rows)
        h = next(h for h in store.hits() if h.address == "198.18.0.77")
        assert store.attribute([(h.address, h.category, h.hour, h.hits, "L-7")]) == 1
    feed = tmp_path / "cc.txt"
    feed.write_text("evil.test\n")
    cfg = tmp_path / "ccxdp.toml"
    cfg.write_text(config_text(lab, [{"name": "cc", "path": str(feed)}], collect=0.3)
                   + "retention_days = 2\n")
    d = daemons(cfg).start()
    assert rcode(lab, "evil.test") == "NXDOMAIN"
    e = d.wait_for("expire", timeout=10)
    assert (e["rows"], e["unattributed"]) == ("1", "False")
    d.wait_for("collect", result="ok", hits="1", timeout=10)  # the dig's blocked query
    assert d.stop() == 0
    with Store(store_path(ccxdp.state_dir)) as store:
        left = {(h.address, h.line): h.hits for h in store.hits()}
        assert left == {("198.18.0.78", None): 2, (lab.cli_v4_addrs[0], None): 1}
        assert store.total_hits() == 5  # the expired row's 2 are in the line totals

    cfg.write_text(cfg.read_text() + "expire_unattributed = true\n")
    mark = len(d.events())
    d.start()
    e = d.wait_for("expire", since=mark, timeout=10)
    assert (e["rows"], e["unattributed"]) == ("1", "True")
    assert d.stop() == 0
    with Store(store_path(ccxdp.state_dir)) as store:
        assert {h.address for h in store.hits()} == {lab.cli_v4_addrs[0]}
