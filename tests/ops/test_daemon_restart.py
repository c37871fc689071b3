"""The daemon's life in a plain namespace. A restart applies the config as a reload does: a
feed taken out of the file is removed from the catalog and the kernel either way, and feeds
added by hand ('ccxdp feed add') are left alone either way. Collections that find nothing
write no line (unless log_level = "debug"). The daemon runs in a namespace of the test's
own (generic XDP on its lo), entered with nsenter so the pins stay visible."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time

import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns]


def config(feeds: dict, collect: float = 0, top: str = "") -> str:
    text = (f'on_stop = "keep"\n{top}[filter]\nmode = "generic"\n[[interfaces]]\n'
            f'name = "lo"\n[collect]\ninterval = {collect}\n')
    for name, path in feeds.items():
        text += f'[[feeds]]\nname = "{name}"\npath = "{path}"\n'
    return text


def events(text: str) -> list[dict[str, str]]:
    return [dict(w.split("=", 1) for w in shlex.split(line) if "=" in w)
            for line in text.splitlines()]


@pytest.fixture
def world(ccxdp, bare_netns, tmp_path):
    subprocess.run(["ip", "-n", bare_netns, "link", "set", "lo", "up"], check=True)
    feeds = {}
    for name, names in (("alpha", "a.evil.test\n"), ("beta", "b.evil.test\nb2.evil.test\n"),
                        ("byhand", "h.evil.test\n")):
        feeds[name] = tmp_path / f"{name}.txt"
        feeds[name].write_text(names)
    procs: list[subprocess.Popen] = []

    def start(cfg: str, log: str) -> subprocess.Popen:
        path = tmp_path / "ccxdp.toml"
        path.write_text(cfg)
        with open(tmp_path / log, "w") as out:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{bare_netns}", str(ccxdp.exe), "--pin-dir",
                 str(ccxdp.pin_dir), "--state-dir", str(ccxdp.state_dir), "run", "--config",
                 str(path)], stdout=subprocess.DEVNULL, stderr=out)
        procs.append(proc)
        wait_for(tmp_path / log, proc, "ready")
        return proc

    try:
        yield feeds, start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        subprocess.run(["nsenter", f"--net=/run/netns/{bare_netns}", str(ccxdp.exe),
                        "--pin-dir", str(ccxdp.pin_dir), "--state-dir", str(ccxdp.state_dir),
                        "detach", "lo"], capture_output=True, timeout=60)


def wait_for(log, proc, event: str, since: int = 0, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.get("event") == event for e in events(log.read_text())[since:]):
            return
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"no {event}: {log.read_text()}")


def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def listed(ccxdp) -> dict[str, int]:
    return {f["name"]: f["block"] for f in ccxdp.json("feed", "list")}


def blocked(ccxdp) -> list[str]:
    return sorted(e["name"] for e in ccxdp.json("block", "list"))


def removals(log) -> list[tuple[str, str]]:
    return [(e["feed"], e["reason"]) for e in events(log.read_text())
            if e.get("event") == "feed_remove"]


def test_a_feed_out_of_the_config_goes_on_restart_as_on_reload(ccxdp, world, tmp_path):
    feeds, start = world
    d = start(config({"alpha": feeds["alpha"], "beta": feeds["beta"]}), "first.log")
    ccxdp.run("feed", "add", "byhand", str(feeds["byhand"]))
    assert listed(ccxdp) == {"alpha": 1, "beta": 2, "byhand": 1}
    stop(d)

    # Restart without beta: beta goes, and its names leave the kernel.
    d = start(config({"alpha": feeds["alpha"]}), "second.log")
    assert removals(tmp_path / "second.log") == [("beta", "not in the config")]
    assert listed(ccxdp) == {"alpha": 1, "byhand": 1}
    assert blocked(ccxdp) == ["a.evil.test", "h.evil.test"]

    # beta back by reload, then out again by reload: the same result.
    (tmp_path / "ccxdp.toml").write_text(config({"alpha": feeds["alpha"],
                                                 "beta": feeds["beta"]}))
    mark = len(events((tmp_path / "second.log").read_text()))
    d.send_signal(signal.SIGHUP)
    wait_for(tmp_path / "second.log", d, "reload", since=mark)
    assert listed(ccxdp) == {"alpha": 1, "beta": 2, "byhand": 1}
    (tmp_path / "ccxdp.toml").write_text(config({"alpha": feeds["alpha"]}))
    mark = len(events((tmp_path / "second.log").read_text()))
    d.send_signal(signal.SIGHUP)
    wait_for(tmp_path / "second.log", d, "reload", since=mark)
    assert listed(ccxdp) == {"alpha": 1, "byhand": 1}
    stop(d)

    # A restart with the same config removes nothing more; a feed added by hand is never
    # the config's to remove.
    d = start(config({"alpha": feeds["alpha"]}), "third.log")
    assert removals(tmp_path / "third.log") == []
    assert listed(ccxdp) == {"alpha": 1, "byhand": 1}
    stop(d)

    # alpha out of the config, and meanwhile removed and added again by hand: it is the
    # operator's now, and a start without it in the config keeps it.
    ccxdp.run("feed", "remove", "alpha")
    ccxdp.run("feed", "add", "alpha", str(feeds["alpha"]))
    d = start(config({}), "fourth.log")
    assert removals(tmp_path / "fourth.log") == []
    assert listed(ccxdp) == {"alpha": 1, "byhand": 1}
    stop(d)


def test_collections_that_find_nothing_write_no_line(ccxdp, world, tmp_path):
    """Every 0.2 s for about 2 s, with no query at all: no collect_start, no collect line at
    the default level; with log_level = "debug" each one is there, at level debug."""
    feeds, start = world
    d = start(config({"alpha": feeds["alpha"]}, collect=0.2), "quiet.log")
    time.sleep(2.0)
    stop(d)
    got = events((tmp_path / "quiet.log").read_text())
    assert [e["event"] for e in got if e["event"].startswith("collect")] == [], got
    assert [e["event"] for e in got] == ["start", "attach", "feed_sync", "ready", "stop"], got

    d = start(config({"alpha": feeds["alpha"]}, collect=0.2, top='log_level = "debug"\n'),
              "debug.log")
    time.sleep(2.0)
    stop(d)
    got = [e for e in events((tmp_path / "debug.log").read_text())
           if e["event"].startswith("collect")]
    assert len(got) >= 10 and {e["level"] for e in got} == {"debug"}, got
    assert [e["hits"] for e in got if e["event"] == "collect"] == ["0"] * (len(got) // 2)
