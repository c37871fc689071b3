"""notify against the fleet store on a real PostgreSQL server: a line's days and hits are
counted across resolvers, and two runs at the same moment on two hosts send one message per
line, because the database's unique claim decides."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ccxdp.hits.fleet import FleetStore
from ccxdp.hits.store import Store, to_us
from ccxdp.notify import attribution, mail
from ccxdp.notify import records as rec
from tests.harness.hits import BOOT, counters

PERIOD = "2026-10"
OCT = datetime(2026, 10, 1, tzinfo=UTC)


def at(day: int, hour: int = 12) -> int:
    return to_us(OCT + timedelta(days=day - 1, hours=hour))


def fleet(uri: str) -> FleetStore:
    with FleetStore(uri, schema=False) as store:
        store.init()
    return FleetStore(uri)


def ship(store: FleetStore, resolver: str, entries, path=":memory:") -> None:
    with Store(path) as local:
        local.stage_counters([counters(*entries)], BOOT, None, {1: "emotet"}, epoch=1)
        store.ship(local, resolver)


def sessions(tmp_path: Path, lines: dict[str, str]) -> attribution.Sessions:
    csv = tmp_path / "sessions.csv"
    csv.write_text("line_id,address_or_prefix,start,stop\n" + "".join(
        f"{line},{addr},2026-09-30T00:00:00Z,\n" for line, addr in lines.items()))
    return attribution.load([csv])


def test_days_are_counted_across_resolvers(fleet_uri, tmp_path):
    """Day 3 at one resolver, day 9 at another: two days, which neither resolver sees."""
    entries_a = [("198.18.0.2", 1, 4, at(3), at(3) + 5)]
    entries_b = [("198.18.0.2", 1, 1, at(9), at(9))]
    found = sessions(tmp_path, {"L-1": "198.18.0.2"})
    for entries in (entries_a, entries_b):  # each resolver alone: below the threshold
        with Store(":memory:") as alone:
            alone.stage_counters([counters(*entries)], BOOT, None, {1: "emotet"})
            r = rec.notify(alone, PERIOD, found, subscribers={"L-1": rec.Subscriber(
                "L-1", "l1@isp.example", "en")}, deliverer=mail.Outbox(tmp_path / "alone"),
                templates=mail.Templates(), sender="abuse@isp.example")
            assert r.below_threshold == ["L-1"] and r.notified == []
    with fleet(fleet_uri) as store:
        ship(store, "rs-a", entries_a)
        ship(store, "rs-b", entries_b)
        r = rec.notify(store, PERIOD, found, subscribers={"L-1": rec.Subscriber(
            "L-1", "l1@isp.example", "en")}, deliverer=mail.Outbox(tmp_path / "out"),
            templates=mail.Templates(), sender="abuse@isp.example")
        [sent] = r.notified
        assert (sent.record.line, sent.record.days, sent.record.hits) == ("L-1", 2, 5)
        assert (sent.record.first_seen, sent.record.last_seen) == (
            "2026-10-03T12:00:00Z", "2026-10-09T12:00:00Z")
        [again] = rec.build_records(store, PERIOD, by_resolver=True)
        assert again.resolvers == {"rs-a": 4, "rs-b": 1}
        # Expired, the per-line totals keep each resolver's share.
        assert store.expire(datetime(2026, 11, 20, tzinfo=UTC)) == 2
        [kept] = rec.build_records(store, PERIOD, by_resolver=True)
        assert (kept.hits, kept.days, kept.addresses, kept.resolvers) == (
            5, 2, [], {"rs-a": 4, "rs-b": 1})
        assert rec.report(store, PERIOD, by_resolver=True)["resolvers"] == [
            {"resolver": "rs-a", "lines_seen": 1, "hits": 4},
            {"resolver": "rs-b", "lines_seen": 1, "hits": 1}]
    assert len(list((tmp_path / "out").glob("*.eml"))) == 1


def test_notified_line_stays_notified_when_hits_are_shipped_into_its_hour(fleet_uri,
                                                                         tmp_path):
    """A ship after notify adds to an hour notify attributed: the line keeps its hits and
    its notice in records, report and notify; the new hits wait under their address."""
    found = sessions(tmp_path, {"L-1": "198.18.0.2"})
    subs = {"L-1": rec.Subscriber("L-1", "l1@isp.example", "en")}
    out = mail.Outbox(tmp_path / "out")

    def run(deliverer=out):
        return rec.notify(store, PERIOD, found, subscribers=subs, deliverer=deliverer,
                          templates=mail.Templates(), sender="abuse@isp.example")

    with fleet(fleet_uri) as store:
        local = tmp_path / "rs-a.db"  # one host's backlog, shipped from twice
        ship(store, "rs-a", [("198.18.0.2", 1, 4, at(3), at(3) + 5),
                             ("198.18.0.2", 1, 1, at(9), at(9))], local)
        [sent] = run().notified
        assert (sent.record.hits, sent.record.days) == (5, 2)
        ship(store, "rs-a", [("198.18.0.2", 1, 3, at(3) + 60_000_000, at(3) + 90_000_000)],
             local)
        [kept] = rec.build_records(store, PERIOD, by_resolver=True)
        assert (kept.line, kept.hits, kept.days, kept.resolvers) == ("L-1", 5, 2, {"rs-a": 5})
        [left] = rec.unattributed(store, PERIOD)
        assert (left.address, left.hits, left.first_seen) == (
            "198.18.0.2", 3, "2026-10-03T12:01:00Z")
        rep = rec.report(store, PERIOD)
        assert (rep["lines_seen"], rep["lines_notified"], rep["hits"]) == (1, 1, 5)
        dry = rec.notify(store, PERIOD, attribution.Sessions.build([]), subscribers=subs)
        assert (dry.already_notified, dry.attributed_rows) == (["L-1"], 0)
        again = run()
        assert (again.notified, again.already_notified, again.attributed_rows) == (
            [], ["L-1"], 1)
        [r] = rec.build_records(store, PERIOD)
        assert (r.hits, r.days, r.first_seen, r.last_seen) == (
            8, 2, "2026-10-03T12:00:00Z", "2026-10-09T12:00:00Z")
    assert len(list((tmp_path / "out").glob("*.eml"))) == 1


def test_two_notify_runs_at_once_on_two_hosts_send_one_message_per_line(fleet_uri, tmp_path):
    lines = {f"L-{n}": f"198.18.{n // 200}.{n % 200 + 1}" for n in range(60)}
    with fleet(fleet_uri) as store:
        for resolver in ("rs-a", "rs-b"):
            ship(store, resolver, [(a, 1, 2, at(d), at(d)) for a in lines.values()
                                   for d in (2, 5)])
    csv = tmp_path / "sessions.csv"
    csv.write_text("line_id,address_or_prefix,start,stop\n" + "".join(
        f"{line},{addr},2026-09-30T00:00:00Z,\n" for line, addr in lines.items()))
    contacts = tmp_path / "subscribers.csv"
    contacts.write_text("line_id,email,language\n" + "".join(
        f"{line},{line.lower()}@isp.example,en\n" for line in lines))
    exe = Path(sys.executable).parent / "ccxdp"
    runs = [subprocess.Popen(
        [str(exe), "--state-dir", str(tmp_path / f"host-{h}"), "notify", "--store", fleet_uri,
         "--period", PERIOD, "--sessions", str(csv), "--subscribers", str(contacts),
         "--from", "abuse@isp.example", "--out", str(tmp_path / f"out-{h}"), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
        for h in ("a", "b")]
    outs = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [o[1] for o in outs]
    sent = {h: {p.name for p in (tmp_path / f"out-{h}").glob("*.eml")} for h in ("a", "b")}
    assert len(sent["a"]) + len(sent["b"]) == 60
    assert not sent["a"] & sent["b"]
    with FleetStore(fleet_uri) as store:
        notes = store.notifications(period=PERIOD)
        assert sorted(n.line for n in notes) == sorted(lines)
        assert {n.state for n in notes} == {"sent"}
        [r] = [x for x in rec.build_records(store, PERIOD) if x.line == "L-0"]
        assert (r.hits, r.days) == (8, 2)
