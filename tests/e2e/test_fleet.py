"""The fleet end to end: two resolvers, each a lab of its own (its own unbound, state, pins
and ccxdp attached), collecting into one real PostgreSQL; the same subscriber address queries
both; one notify for the fleet. And a daemon that keeps collecting through a database
outage, with its backlog in the log and the metrics, and ships it all once the database is
back."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from ccxdp.hits.fleet import FleetStore
from ccxdp.lab.topology import Lab, LabSpec
from tests.conftest import Ccxdp, make_pin_dir, remove_pins
from tests.harness.postgres import running_server
from tests.ops.test_daemon import KILL_DELAYS, STREAMER, config_text, daemon_factory, rcode
from tests.ops.test_metrics import scrape

pytestmark = [pytest.mark.root, pytest.mark.netns]


def _detach_all(tool: Ccxdp) -> None:
    from ccxdp.datapath.loader import Datapath

    try:
        dp = Datapath(tool.pin_dir, tool.state_dir)
        with dp:
            for a in dp.attachments():
                if a.prog_id is not None:
                    dp.detach(a.ifname, a.netns)
    finally:
        remove_pins(tool.pin_dir)


@pytest.fixture
def resolvers(tmp_path):
    """Two resolver sites: (lab, ccxdp) each, the lab's client at the same address (one
    subscriber whose queries anycast spreads over both)."""
    sites = []
    try:
        for name in ("fa", "fb"):
            lab = Lab(LabSpec(prefix=name, second_client=False, sinkhole=False)).__enter__()
            tool = Ccxdp(make_pin_dir(), tmp_path / f"state-{name}")
            sites.append((lab, tool))
        yield sites
    finally:
        for lab, tool in sites:
            try:
                _detach_all(tool)
            finally:
                lab.__exit__(None, None, None)


def _attach(lab, tool) -> None:
    lab.native_tx_peer()
    tool.run("attach", lab.res_if, *lab.res_netns_opt)
    tool.run("block", "add", "evil.test", "--subtree", "--action", "nxdomain")


def test_two_resolvers_one_store_one_notice(resolvers, fleet_uri, tmp_path):
    (lab_a, a), (lab_b, b) = resolvers
    assert lab_a.cli_v4_addrs[0] == lab_b.cli_v4_addrs[0]  # one subscriber, two resolvers
    subscriber = lab_a.cli_v4_addrs[0]
    a.run("store", "init", "--store", fleet_uri)
    for lab, tool in resolvers:
        _attach(lab, tool)
    for _ in range(3):
        assert rcode(lab_a, "cc.evil.test") == "NXDOMAIN"
    for _ in range(2):
        assert rcode(lab_b, "evil.test") == "NXDOMAIN"
    got_a = a.json("collect", "--store", fleet_uri, "--resolver", "rs-a")
    got_b = b.json("collect", "--store", fleet_uri, "--resolver", "rs-b")
    assert (got_a["hits"], got_a["shipped"]["hits"], got_a["shipped"]["backlog"]["hits"]) == (
        3, 3, 0)
    assert (got_b["hits"], got_b["shipped"]["hits"]) == (2, 2)

    # The second host under a name already taken: refused, its hits kept for later.
    assert rcode(lab_b, "evil.test") == "NXDOMAIN"
    cp = b.run("collect", "--store", fleet_uri, "--resolver", "rs-a", check=False)
    assert cp.returncode == 1
    assert cp.stderr.startswith("Error: the hits are in this host's backlog (1 hits in 1 "
                                "batches, kept until shipped): resolver name 'rs-a' is taken")
    assert len(cp.stderr.strip().splitlines()) == 1
    assert b.json("collect", "--store", fleet_uri, "--resolver", "rs-b")["shipped"]["hits"] == 1

    with FleetStore(fleet_uri) as store:
        [period] = store.periods()
    sessions = tmp_path / "sessions.csv"
    start = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sessions.write_text(f"line_id,address_or_prefix,start,stop\nL-1001,{subscriber},{start},\n")
    contacts = tmp_path / "subscribers.csv"
    contacts.write_text("line_id,email,language\nL-1001,abuse-l1001@isp.example,en\n")
    notify = ["notify", "--store", fleet_uri, "--period", period, "--sessions", str(sessions),
              "--subscribers", str(contacts), "--from", "abuse@isp.example", "--min-days", "1"]
    first = a.json(*notify, "--out", str(tmp_path / "out-a"))
    assert [(n["line"], n["hits"], n["days"])
            for n in first["notified"]] == [("L-1001", 6, 1)]
    assert len(list((tmp_path / "out-a").glob("*.eml"))) == 1
    second = b.json(*notify, "--out", str(tmp_path / "out-b"))
    assert second["notified"] == [] and second["already_notified"] == ["L-1001"]
    assert list((tmp_path / "out-b").glob("*.eml")) == []

    [rec] = b.json("records", "--store", fleet_uri, "--period", period,
                   "--by-resolver")["records"]
    assert (rec["line"], rec["hits"], rec["resolvers"]) == ("L-1001", 6, {"rs-a": 3, "rs-b": 3})
    assert rec["notification"]["state"] == "sent"
    rep = a.json("report", "--store", fleet_uri, "--period", period, "--by-resolver")
    assert rep["resolvers"] == [{"resolver": "rs-a", "lines_seen": 1, "hits": 3},
                                {"resolver": "rs-b", "lines_seen": 1, "hits": 3}]
    status = a.json("store", "status", "--store", fleet_uri)
    assert [(r["name"], r["hits"]) for r in status["resolvers"]] == [("rs-a", 3), ("rs-b", 3)]
    assert status["backlog"] == {"batches": 0, "counters": 0, "hits": 0}


@pytest.fixture
def own_server(monkeypatch):
    """A server of the test's own: it is stopped and started again."""
    server = running_server(port=5435)
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        yield server
    finally:
        server.remove()


def _backlog_gauge(lab) -> float:
    return scrape(lab)[("ccxdp_store_backlog_hits", ())]


def test_the_daemon_keeps_every_hit_through_a_database_outage(ccxdp, lab, own_server,
                                                             tmp_path):
    uri = own_server.database()
    ccxdp.run("store", "init", "--store", uri)
    lab.native_tx_peer()
    feed = tmp_path / "cc.txt"
    feed.write_text("evil.test\n")
    cfg = tmp_path / "ccxdp.toml"
    cfg.write_text(config_text(lab, [{"name": "cc", "path": str(feed)}], collect=0.3)
                   + f'store = "{uri}"\nresolver = "rs-1"\n\n[metrics]\n'
                   + f'listen = "{lab.res_v4}:9108"\n')
    with daemon_factory(ccxdp, lab, tmp_path) as make:
        d = make(cfg).start()
        sent = 0
        for _ in range(4):
            assert rcode(lab, "evil.test") == "NXDOMAIN"
            sent += 1
        d.wait_for("ship", result="ok", backlog_hits="0", hits="4", timeout=20)

        own_server.stop()
        mark = len(d.events())
        for _ in range(10):  # over many collection intervals
            assert rcode(lab, "evil.test") == "NXDOMAIN"
            sent += 1
            time.sleep(0.2)
        # Every collection goes on draining the kernel into the backlog, and says so.
        failed = d.wait_for("ship", since=mark, result="error", backlog_hits="10", timeout=20)
        assert "cannot reach the fleet store" in failed["error"]
        deadline = time.monotonic() + 30
        while len(ships := [e for e in d.events()[mark:] if e.get("event") == "ship"]) < 12:
            assert time.monotonic() < deadline, ships
            time.sleep(0.1)
        assert all(e["result"] == "error" for e in ships)  # down for 12 intervals and more
        assert _backlog_gauge(lab) == 10
        assert ccxdp.json("store", "status")["backlog"]["hits"] == 10

        own_server.start()
        back = d.wait_for("ship", since=mark, result="ok", timeout=30)
        assert (back["hits"], back["backlog_hits"]) == ("10", "0")
        assert _backlog_gauge(lab) == 0
        assert d.stop() == 0
    with FleetStore(uri) as store:
        assert store.total_hits() == sent == 14
        [row] = [h for h in store.hits() if h.address == lab.cli_v4_addrs[0]]
        assert (row.resolver, row.hits) == ("rs-1", 14)


def test_collect_against_an_unreachable_store_keeps_the_hits_and_says_so(ccxdp, lab, tmp_path):
    lab.native_tx_peer()
    ccxdp.run("attach", lab.res_if, *lab.res_netns_opt)
    ccxdp.run("block", "add", "evil.test", "--action", "nxdomain")
    assert rcode(lab, "evil.test") == "NXDOMAIN"
    nowhere = f"postgresql://ccxdp@{str(tmp_path).replace('/', '%2F')}:5999/ccxdp"
    cp = ccxdp.run("collect", "--store", nowhere, "--resolver", "rs-1", check=False)
    assert cp.returncode == 1
    assert cp.stderr.startswith("Error: the hits are in this host's backlog (1 hits in 1 "
                                "batches, kept until shipped): cannot reach the fleet store: ")
    assert len(cp.stderr.strip().splitlines()) == 1
    # Read locally, the backlog is refused rather than folded away from the fleet.
    cp = ccxdp.run("records", check=False)
    assert cp.returncode == 1 and "backlog for the fleet store" in cp.stderr


def test_a_shipping_daemon_killed_at_any_point_loses_and_doubles_nothing(ccxdp, lab, fleet_uri,
                                                                         tmp_path):
    """The fleet's version of the kill -9 test: kills land amid collections and amid ships
    (one follows the other), with a client querying on; every answer the client got is one
    hit in PostgreSQL, no more, no less."""
    ccxdp.run("store", "init", "--store", fleet_uri)
    lab.native_tx_peer()
    feed = tmp_path / "cc.txt"
    feed.write_text("evil.test\n")
    cfg = tmp_path / "ccxdp.toml"
    cfg.write_text(config_text(lab, [{"name": "cc", "path": str(feed)}], collect=0.2,
                               log_level="debug")  # collect_start times the kills
                   + f'store = "{fleet_uri}"\nresolver = "rs-k"\n')
    with daemon_factory(ccxdp, lab, tmp_path) as make:
        d = make(cfg).start()
        killed_in: list[str] = []
        stop = tmp_path / "stop"
        out = tmp_path / "stream.jsonl"
        with open(out, "w") as log:
            client = lab.popen("cli", [sys.executable, "-c", STREAMER, lab.res_v4, str(stop),
                                       "evil.test"], stdout=log)
            try:
                time.sleep(1.0)
                # Then later and later, until a kill lands between the collection's log line
                # and the ship's: inside the ship.
                sweep = [*KILL_DELAYS, *(0.02 + 0.005 * i for i in range(40))]
                for i, delay in enumerate(sweep):
                    if i >= len(KILL_DELAYS) and "collect" in killed_in:
                        break
                    mark = len(d.events())
                    d.wait_for("collect_start", since=mark, timeout=10, poll=0.001)
                    time.sleep(delay)
                    d.proc.kill()
                    d.proc.wait(timeout=10)
                    killed_in.append(d.events()[-1]["event"])
                    time.sleep(0.3)
                    d.start()
                    time.sleep(0.3)
            finally:
                stop.touch()
                client.wait(timeout=10)
        assert d.stop() == 0
    ccxdp.json("collect", "--store", fleet_uri, "--resolver", "rs-k")
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers) > 50 and set(answers) == {"NXDOMAIN"}
    assert lab.unbound_queries_for("evil.test") == 0
    with FleetStore(fleet_uri) as store:
        assert store.total_hits() == len(answers)
    assert ccxdp.json("store", "status")["backlog"]["hits"] == 0
    assert "collect_start" in killed_in and "collect" in killed_in, killed_in
