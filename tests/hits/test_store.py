"""The hits store: what the collector relies on (add_hits merging, the checkpoint written in
the same transaction, exactly once across kill -9), attribution bookkeeping, notifications,
and retention."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from ccxdp.hits.store import (
    COUNTER_KEY,
    COUNTER_VALUE,
    SCHEMA_VERSION,
    Store,
    StoreError,
    address_text,
    counter_rows,
    iso,
    period_bounds,
    store_path,
    to_us,
)
from tests.harness.hits import BOOT, HitRow, add_hits, counters, packed

H = datetime(2026, 11, 3, 10, tzinfo=UTC)
A4 = ipaddress.ip_address("198.18.0.2")
A6 = ipaddress.ip_address("fd00:cc::2")


def row(addr=A4, cat=1, name="emotet", hour=H, hits=1, first=0, last=0, feeds=()):
    return HitRow(addr, cat, name, hour, hits, hour + timedelta(seconds=first),
                  hour + timedelta(seconds=last), feeds)


@pytest.fixture
def store(tmp_path):
    with Store(store_path(tmp_path / "state")) as s:
        yield s


def test_path_and_folder(tmp_path):
    path = store_path(tmp_path / "state")
    assert path == tmp_path / "state" / "hits.db"
    Store(path).close()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_a_store_under_its_old_name_is_renamed_with_its_wal(tmp_path):
    """records.db was the store's name; an upgraded installation keeps its hits, including
    rows committed to the WAL and not yet checkpointed into the file."""
    state = tmp_path / "state"
    state.mkdir()
    old = Store(state / "records.db")
    old.db.execute("PRAGMA wal_autocheckpoint=0")  # the row stays in records.db-wal
    add_hits(old, [row(hits=3, first=100, last=200)])
    assert (state / "records.db-wal").stat().st_size > 0
    copy = {p.name: p.read_bytes() for p in state.iterdir()}  # as a killed process left it
    old.close()
    for name, data in copy.items():
        (state / name).write_bytes(data)
    path = store_path(state)
    assert path == state / "hits.db" and not (state / "records.db").exists()
    with Store(path) as store:
        assert store.total_hits() == 3


def test_add_hits_merges_per_address_category_hour(store):
    assert add_hits(store, [row(hits=3, first=100, last=200, feeds=["a"])]) == 1
    add_hits(store, [row(hits=2, first=50, last=150, feeds=["b", "a"])])
    add_hits(store, [row(hits=5, first=300, last=3000)])
    (h,) = store.hits()
    assert (h.address, h.category, h.hour, h.hits) == ("198.18.0.2", 1, int(H.timestamp()), 10)
    assert iso(h.first_us) == "2026-11-03T10:00:50Z"
    assert iso(h.last_us) == "2026-11-03T10:50:00Z"
    assert store.feeds_of(h.address, 1, h.hour) == ["a", "b"]
    # Another category, another hour, another family: rows of their own.
    add_hits(store, [row(cat=2, name="qakbot"), row(hour=H + timedelta(hours=1)),
                    row(addr=A6)])
    assert len(store.hits()) == 4
    assert store.categories() == {1: "emotet", 2: "qakbot"}
    assert store.total_hits() == 13


def test_ipv4_mapped_is_kept_as_ipv4(store):
    add_hits(store, [row(addr=ipaddress.ip_address("::ffff:198.18.0.2"), hits=2), row()])
    (h,) = store.hits()
    assert (h.address, h.hits) == ("198.18.0.2", 3)


def test_microseconds_are_exact(store):
    t = H + timedelta(microseconds=123457)
    add_hits(store, [HitRow(A4, 0, None, H, 1, t, t)])
    (h,) = store.hits()
    assert iso(h.first_us) == "2026-11-03T10:00:00.123457Z"
    assert store.categories() == {}


@pytest.mark.parametrize(
    "bad, message",
    [
        (row(hour=H + timedelta(minutes=1)), "not on the hour"),
        (row(hour=H.replace(tzinfo=None)), "time without a time zone"),
        (row(first=10, last=5), "first_seen after last_seen"),
        (row(hits=-1), "non-negative"),
        (row(cat=65536), "category id out of range"),
        (row(name=""), "category name"),
        (row(feeds=[""]), "feed names"),
        (("198.18.0.2", 1, None, H, 1, H, H), "not an IPv4Address"),
        ((A4, 1, None, H, 1, H), "7 or 8 fields"),
    ],
    ids=["hour", "naive", "order", "negative", "category", "name", "feed", "address-text",
         "short"],
)
def test_bad_rows_write_nothing(store, bad, message):
    add_hits(store, [row()], {"cp": 1})
    with pytest.raises(StoreError, match=message):
        add_hits(store, [row(hits=5), bad], {"cp": 2})
    assert store.total_hits() == 1
    assert store.checkpoint() == {"cp": 1}


def test_checkpoint_updated_with_hits(store):
    assert store.checkpoint() == {}
    big = (1 << 64) - 1  # a u64 counter survives, whatever SQLite's integers are
    add_hits(store, [row()], {"cpu0": big, "cpu1": 7})
    assert store.checkpoint() == {"cpu0": big, "cpu1": 7}
    add_hits(store, [], {"cpu1": 8, "gen": -1})  # given keys change, the others stay
    assert store.checkpoint() == {"cpu0": big, "cpu1": 8, "gen": -1}
    add_hits(store, [row()])  # no checkpoint given: it stays as it was
    add_hits(store, [], {"cpu0": None, "nothing": None})  # None deletes a key
    assert store.checkpoint() == {"cpu1": 8, "gen": -1}
    with pytest.raises(StoreError, match="integers"):
        add_hits(store, [row()], {"x": "1"})
    assert store.total_hits() == 2


def test_add_hit_counts_in_stored_form(store):
    hour = int(H.timestamp())
    first = hour * 10**6
    add_hits(store, [row(hits=2, first=10, last=20)], {"cp": 1})
    assert store.add_hit_counts(
        [(hour, "198.18.0.2", 1, 3, first + 5 * 10**6, first + 30 * 10**6),
         (hour, "fd00:cc::2", 2, 1, first, first)],
        {"cp": 2}, {2: "qakbot"},
    ) == 2
    got = {(h.address, h.category): (h.hits, iso(h.first_us), iso(h.last_us))
           for h in store.hits()}
    assert got == {("198.18.0.2", 1): (5, "2026-11-03T10:00:05Z", "2026-11-03T10:00:30Z"),
                   ("fd00:cc::2", 2): (1, "2026-11-03T10:00:00Z", "2026-11-03T10:00:00Z")}
    assert store.checkpoint() == {"cp": 2}
    assert store.categories() == {1: "emotet", 2: "qakbot"}


@pytest.mark.parametrize(
    "bad",
    [(int(H.timestamp()) + 60, "198.18.0.3", 1, 1, 0, 0),  # not on the hour
     (int(H.timestamp()), "198.18.0.3", 1, 0, 0, 0),  # no hits
     (int(H.timestamp()), "198.18.0.3", 1, 1, 5, 4),  # first after last
     (int(H.timestamp()), "198.18.0.3", 70000, 1, 0, 0)],  # category
    ids=["hour", "hits", "order", "category"],
)
def test_add_hit_counts_refuses_malformed_rows(store, bad):
    add_hits(store, [row()], {"cp": 1})
    good = (int(H.timestamp()), "198.18.0.4", 1, 1, 0, 0)
    with pytest.raises(StoreError, match="breaks the store's rules"):
        store.add_hit_counts([good, bad], {"cp": 2})
    assert store.total_hits() == 1 and store.checkpoint() == {"cp": 1}


def test_zero_hit_rows_are_skipped(store):
    assert add_hits(store, [row(hits=0)]) == 0
    assert store.hits() == []


def test_new_hits_wait_beside_an_attributed_row_for_attribution(store):
    add_hits(store, [row(hits=2)])
    (h,) = store.hits()
    assert store.attribute([(h.address, h.category, h.hour, h.hits, "L-1")]) == 1
    assert store.hits()[0].line == "L-1"
    add_hits(store, [row(hits=1, first=3000, last=3599)])
    new, kept = store.hits()
    assert (new.line, new.hits, kept.line, kept.hits) == (None, 1, "L-1", 2)
    assert (new.first_us - to_us(H), new.last_us - to_us(H)) == (3000 * 10**6, 3599 * 10**6)
    # An assignment made from a stale read (hits changed meanwhile) is not applied.
    assert store.attribute([(new.address, new.category, new.hour, 2, "L-1")]) == 0
    assert [(h.line, h.hits) for h in store.hits()] == [(None, 1), ("L-1", 2)]
    # Attributed to the same line, the new hits join the row that was.
    assert store.attribute([(new.address, new.category, new.hour, 1, "L-1")]) == 1
    (h,) = store.hits()
    assert (h.line, h.hits, h.last_us - to_us(H)) == ("L-1", 3, 3599 * 10**6)


def test_expire_folds_attributed_rows_and_keeps_the_rest(store):
    old, new = H, H + timedelta(days=40)
    add_hits(store, [row(hour=old, hits=2, feeds=["f"]), row(addr=A6, hour=old, hits=3),
                    row(addr=ipaddress.ip_address("198.18.0.9"), hour=old, hits=4),
                    row(hour=new, hits=5)])
    for h in store.hits():
        if h.address != "198.18.0.9":
            store.attribute([(h.address, h.category, h.hour, h.hits, "L-1")])
    start, end = period_bounds("2026-11")
    before = sorted(r[:6] for r in store.line_hits(start, end))
    assert store.expire(old + timedelta(days=30)) == 2
    left = store.hits()
    assert [(h.address, h.hour) for h in left] == [
        ("198.18.0.2", int(new.timestamp())), ("198.18.0.9", int(old.timestamp()))]
    folded = store.line_hits(start, end)
    assert folded == [("L-1", 1, int(old.timestamp()), 5, int(old.timestamp()) * 10**6,
                       int(old.timestamp()) * 10**6, None)]
    assert sum(r[3] for r in folded) == sum(r[3] for r in before)
    assert store.line_feeds(start, end) == [("L-1", "f")]
    assert store.total_hits() == 14
    # Unattributed rows go only when asked, and an hour that has not ended stays.
    assert store.expire(old + timedelta(minutes=30), attributed_only=False) == 0
    assert store.expire(old + timedelta(days=30), attributed_only=False) == 1
    assert store.total_hits() == 10


def test_notifications_claim_once(store):
    rec = {"record": {"line": "L-1"}, "language": "en", "message": "x"}
    assert store.claim("L-1", "2026-11", "smtp", "a@example.net", "<1@x>", rec)
    assert not store.claim("L-1", "2026-11", "outbox", "a@example.net", "<2@x>", rec)
    n = store.notification("L-1", "2026-11")
    assert (n.state, n.channel, n.message_id, n.record, n.sent_at) == (
        "pending", "smtp", "<1@x>", rec, None)
    store.release("L-1", "2026-11", "<other@x>")  # not its message: nothing happens
    assert store.notification("L-1", "2026-11") is not None
    store.mark_sent("L-1", "2026-11", "<1@x>")
    assert store.notification("L-1", "2026-11").state == "sent"
    store.release("L-1", "2026-11", "<1@x>")  # a sent one is never released
    assert store.notification("L-1", "2026-11").state == "sent"
    assert store.claim("L-1", "2026-12", "smtp", "a@example.net", "<3@x>", rec)
    assert [(n.line, n.period) for n in store.notifications()] == [
        ("L-1", "2026-11"), ("L-1", "2026-12")]
    assert [n.period for n in store.notifications(period="2026-12")] == ["2026-12"]


def test_period_bounds():
    assert period_bounds("2026-12") == (
        int(datetime(2026, 12, 1, tzinfo=UTC).timestamp()),
        int(datetime(2027, 1, 1, tzinfo=UTC).timestamp()))
    for bad in ("2026-13", "2026-1", "26-11", "2026/11", ""):
        with pytest.raises(StoreError, match="invalid period"):
            period_bounds(bad)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "hits.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match="records schema 99 is newer"):
        Store(path)


# A collector stand-in: adds one hit per call with the checkpoint counting the calls, as
# fast as it can, until killed. Exactly once means: after any kill -9, the hits stored equal
# the checkpoint.
WRITER = """
import sys
from ccxdp.hits.store import Store
store = Store(sys.argv[1])
n = store.checkpoint().get("taken", 0)
hour = 1_793_700_000 // 3600 * 3600
print("ready", flush=True)
while True:
    n += 1
    us = hour * 1_000_000
    store.add_hit_counts([(hour, f"198.18.1.{n % 49 + 1}", n % 3, 1, us, us)], {"taken": n})
"""


def test_kill_minus_9_never_splits_hits_from_checkpoint(tmp_path):
    path = tmp_path / "hits.db"
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.3 + 0.1 * round_)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        with Store(path) as store:
            taken = store.checkpoint()["taken"]
            assert taken > 0
            assert store.total_hits() == taken
    with Store(path) as store:
        assert json.dumps(store.checkpoint()) == json.dumps({"taken": store.total_hits()})


# -- staged counters and the fold ---------------------------------------------------------------

H_US = to_us(H)


def hits_of(store) -> dict[tuple[str, int, int], tuple[int, int, int, str | None]]:
    """The unattributed rows."""
    return {(h.address, h.category, h.hour): (h.hits, h.first_us, h.last_us, h.line)
            for h in store.hits() if h.line is None}


def test_staged_counters_are_decoded_and_merged_by_the_fold(store):
    hour = H_US // 1_000_000
    store.add_hit_counts([(hour, "198.18.0.2", 1, 2, H_US + 5, H_US + 6)])
    store.attribute([("198.18.0.2", 1, hour, 2, "L-1")])
    batch = counters(
        ("198.18.0.2", 1, 3, H_US + 1, H_US + 9),  # adds to the attributed row
        ("fd00:cc::2", 7, 1, H_US + 2, H_US + 2),
        ("::ffff:0:0", 7, 4, H_US + 3_600_000_000 - 1, H_US + 3_600_000_000),  # two hours
    )
    assert store.stage_counters([batch], BOOT, {"taken": 1}, {7: "emotet"}) == 3
    assert store.staged() == 3
    assert store.checkpoint() == {"taken": 1}
    assert store.categories() == {7: "emotet"}
    folded = store.fold()
    assert (folded.batches, folded.counters, folded.rows, folded.hits, folded.sources) == (
        1, 3, 4, 8, 3)
    assert store.staged() == 0
    assert hits_of(store) == {
        ("198.18.0.2", 1, hour): (3, H_US + 1, H_US + 9, None),  # waits for attribution
        ("fd00:cc::2", 7, hour): (1, H_US + 2, H_US + 2, None),
        ("0.0.0.0", 7, hour): (1, H_US + 3_599_999_999, H_US + 3_599_999_999, None),
        ("0.0.0.0", 7, hour + 3600): (3, H_US + 3_600_000_000, H_US + 3_600_000_000, None),
    }
    assert store.line_hits(hour, hour + 3600) == [
        ("L-1", 1, hour, 2, H_US + 5, H_US + 6, "198.18.0.2")]  # what was attributed stays
    assert store.fold().counters == 0  # nothing twice


def test_readers_see_staged_hits(tmp_path):
    path = tmp_path / "hits.db"
    hour = H_US // 1_000_000
    with Store(path) as store:
        store.add_hit_counts([(hour, "198.18.0.2", 1, 2, H_US, H_US)])
        store.attribute([("198.18.0.2", 1, hour, 2, "L-1")])
        store.stage_counters([counters(("198.18.0.3", 1, 4, H_US, H_US + 1))], BOOT)
    readers = {
        "total_hits": lambda s: s.total_hits() == 6,
        "hits": lambda s: [(h.address, h.hits) for h in s.hits()] == [
            ("198.18.0.2", 2), ("198.18.0.3", 4)],
        "periods": lambda s: s.periods() == ["2026-11"],
        "feeds_of": lambda s: s.feeds_of("198.18.0.3", 1, hour) == [],
        "line_hits": lambda s: s.line_hits(hour, hour + 3600) == [
            ("L-1", 1, hour, 2, H_US, H_US, "198.18.0.2")],
    }
    for name, check in readers.items():
        with Store(path) as store:
            assert store.staged() == 1, name
            assert check(store), name
            assert store.staged() == 0, name
        # the next reader starts from the staged state again
        with Store(path) as store:
            store.db.execute("DELETE FROM hits WHERE address = '198.18.0.3'")
            store.stage_counters([counters(("198.18.0.3", 1, 4, H_US, H_US + 1))], BOOT)


def test_expire_folds_first(store):
    store.stage_counters([counters(("198.18.0.3", 1, 4, H_US, H_US + 1))], BOOT)
    assert store.expire(H + timedelta(days=400), attributed_only=False) == 1
    assert store.staged() == 0 and store.total_hits() == 0


def test_stage_refuses_torn_batches_and_writes_nothing(store):
    keys, values = counters(("198.18.0.3", 1, 4, H_US, H_US))
    for bad in [(keys[:-1], values), (keys, values + values)]:
        with pytest.raises(StoreError, match="not n x 20 and n x 24"):
            store.stage_counters([bad], BOOT, {"taken": 1})
    assert store.staged() == 0 and store.checkpoint() == {}


def test_a_fold_that_dies_midway_keeps_everything_staged(store, monkeypatch):
    store.stage_counters([counters(("198.18.0.3", 1, 4, H_US, H_US))], BOOT)
    store.stage_counters([counters(("198.18.0.4", 1, 5, H_US, H_US))], BOOT)
    real = Store._upsert
    calls = []

    def upsert(self, *args):
        real(self, *args)
        calls.append(1)
        if len(calls) == 2:  # after both batches went into hits, before the DELETE
            raise KeyboardInterrupt

    monkeypatch.setattr(Store, "_upsert", upsert)
    with pytest.raises(KeyboardInterrupt):
        store.fold()
    monkeypatch.undo()
    assert store.db.execute("SELECT count(*) FROM hits").fetchone()[0] == 0
    assert store.staged() == 2
    assert store.total_hits() == 9 and store.staged() == 0


def _old_store(path, version: int) -> None:
    """A store as ccxdp made it at schema ``version``: the base tables, then each step."""
    from ccxdp.hits import store as hits_store

    steps = {2: hits_store._SCHEMA_2, 3: hits_store._SCHEMA_3, 4: hits_store._SCHEMA_4,
             5: hits_store._SCHEMA_5}
    later = sum(len(steps[v]) for v in steps)
    db = sqlite3.connect(path)
    for statement in hits_store._SCHEMA[: len(hits_store._SCHEMA) - later]:
        db.execute(statement)
    for v in range(2, version + 1):
        for statement in steps[v]:
            db.execute(statement)
    db.execute(f"PRAGMA user_version={version}")
    db.commit()
    db.close()


def test_a_schema_1_store_gains_the_staged_table(tmp_path):
    path = tmp_path / "hits.db"
    _old_store(path, 1)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO hits (hour, address, category, hits, first_us, last_us) "
               "VALUES (?, '198.18.0.2', 1, 2, ?, ?)", (H_US // 1_000_000 // 3600 * 3600,
                                                        H_US, H_US))
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        store.stage_counters([counters(("198.18.0.3", 1, 4, H_US, H_US))], BOOT)
        assert store.total_hits() == 6


def test_a_schema_2_store_gains_the_feeds_of_staged_counters(tmp_path):
    """A counter staged before the upgrade folds without feeds; one staged after, with the
    feeds the collection gave for its category."""
    path = tmp_path / "hits.db"
    _old_store(path, 2)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO staged (offset_ns, keys, counters) VALUES (?, ?, ?)",
               (BOOT, *counters(("198.18.0.2", 1, 2, H_US, H_US))))
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        store.stage_counters([counters(("198.18.0.3", 1, 4, H_US, H_US))], BOOT,
                             feeds={1: ["local", "abuse"], 2: ["other"]})
        hour = H_US // 1_000_000 // 3600 * 3600
        assert store.feeds_of("198.18.0.2", 1, hour) == []
        assert store.feeds_of("198.18.0.3", 1, hour) == ["abuse", "local"]
        assert store.total_hits() == 6


def test_a_schema_3_store_keeps_its_staged_batches_and_never_reuses_their_ids(tmp_path):
    """The fleet marks shipped batches by id: ids must keep growing after the table was
    emptied, which a plain rowid does not do."""
    path = tmp_path / "hits.db"
    _old_store(path, 3)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO staged (id, offset_ns, keys, counters) VALUES (7, ?, ?, ?)",
               (BOOT, *counters(("198.18.0.2", 1, 2, H_US, H_US))))
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.db.execute("SELECT id FROM staged").fetchall() == [(7,)]
        instance = store.db.execute("SELECT value FROM meta WHERE key='instance'").fetchone()
        assert len(instance[0]) == 32
        assert store.total_hits() == 2  # folded: staged is empty now
        store.stage_counters([counters(("198.18.0.3", 1, 4, H_US, H_US))], BOOT, epoch=9)
        assert store.db.execute("SELECT id, epoch FROM staged").fetchall() == [(8, 9)]


def test_a_schema_4_store_keeps_its_lines_and_rows(tmp_path):
    path = tmp_path / "hits.db"
    _old_store(path, 4)
    db = sqlite3.connect(path)
    hour = H_US // 1_000_000 // 3600 * 3600
    db.executemany("INSERT INTO hits (hour, address, category, hits, first_us, last_us, line) "
                   "VALUES (?, ?, 1, ?, ?, ?, ?)",
                   [(hour, "198.18.0.2", 2, H_US, H_US + 1, "L-1"),
                    (hour, "198.18.0.3", 4, H_US + 2, H_US + 3, None)])
    db.commit()
    db.close()
    with Store(path) as store:
        assert [(h.address, h.hits, h.first_us - H_US, h.last_us - H_US, h.line)
                for h in store.hits()] == [("198.18.0.2", 2, 0, 1, "L-1"),
                                           ("198.18.0.3", 4, 2, 3, None)]
        store.add_hit_counts([(hour, "198.18.0.2", 1, 5, H_US + 9, H_US + 9)])
        assert store.line_hits(hour, hour + 3600) == [
            ("L-1", 1, hour, 2, H_US, H_US + 1, "198.18.0.2")]
        assert store.total_hits() == 11


def test_opt_outs_are_kept_by_line():
    with Store(":memory:") as store:
        assert store.opt_out(["L-2", "L-1", "L-2"]) == ["L-2", "L-1"]
        assert store.opt_out(["L-1"]) == []
        assert list(store.opted_out()) == ["L-1", "L-2"]
        assert store.opt_in(["L-1", "L-9"]) == ["L-1"]
        assert list(store.opted_out()) == ["L-2"]


# A collector stand-in for the staged path: stages one batch of a few counters per call with
# the checkpoint counting the hits, and folds now and then, as fast as it can, until killed.
# Exactly once: after any kill -9 (between a stage and a fold, inside either), the hits the
# store holds, staged or folded, equal the checkpoint, and a fold then makes them all rows.
STAGER = """
import sys
sys.path.insert(0, sys.argv[2])
from test_store import BOOT, H_US, counters
from ccxdp.hits.store import Store
store = Store(sys.argv[1])
n = store.checkpoint().get("taken", 0)
print("ready", flush=True)
i = 0
while True:
    i += 1
    batch = counters(*[(f"198.18.{i % 7}.{j}", j % 3, j, H_US + j, H_US + 2 * j)
                       for j in range(1, 200)])
    n += sum(range(1, 200))
    store.stage_counters([batch], BOOT, {"taken": n})
    if i % 3 == 0:
        store.fold()
"""


def test_kill_minus_9_between_or_inside_stage_and_fold_keeps_totals_exact(tmp_path):
    path = tmp_path / "hits.db"
    tests_dir = os.path.dirname(__file__)
    states = set()
    for round_ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", STAGER, str(path), tests_dir],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.2 + 0.07 * round_)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        with Store(path) as store:
            taken = store.checkpoint()["taken"]
            states.add(store.staged() > 0)
            assert taken > 0
            assert store.total_hits() == taken  # folds what was staged
            assert store.staged() == 0
    assert True in states  # some kills landed between a stage and its fold


def test_stored_hits_per_category_spell_no_category_as_every_view(store):
    """Category 0 (entries without one) is "(none)", as in stats, top, records and report;
    a category this store has no name for is "category-N"."""
    add_hits(store, [row(cat=1, name="emotet", hits=3), row(addr=A6, cat=0, name=None, hits=2),
                     row(cat=7, name=None, hits=1)])
    assert store.stored_per_category() == {"emotet": 3, "(none)": 2, "category-7": 1}


@pytest.mark.parametrize("us", [0, 1, 999_999, 1_000_000, 1_793_700_000_000_005,
                                1_793_703_599_999_999, 4_102_444_800_000_000])
def test_iso_is_the_one_time_form(us):
    """iso is made without time zone arithmetic, for speed: the same text as utc_text."""
    from ccxdp.hits.store import from_us
    from ccxdp.utc import utc_text

    assert iso(us) == utc_text(from_us(us), "auto")


def test_kernel_sources_become_addresses_and_ipv6_prefixes():
    """The kernel key's prefix length names the source: IPv4 an address, IPv6 a prefix
    unless 128 (or 0, in counters staged before sources had a length)."""
    def key(address: str, plen: int) -> bytes:
        raw = packed(address)
        return COUNTER_KEY.pack(raw[:12], raw[12:], 3, 0, plen)

    keys = (key("198.18.0.2", 128) + key("fd00:cc:0:100::", 56) + key("fd00:cc::", 64)
            + key("fd00:cc::7", 128) + key("fd00:cc::8", 0))
    values = COUNTER_VALUE.pack(1, 0, 0) * 5
    rows = counter_rows(keys, values, BOOT)
    assert [r[1] for r in rows] == ["198.18.0.2", "fd00:cc:0:100::/56", "fd00:cc::/64",
                                    "fd00:cc::7", "fd00:cc::8"]
    assert address_text("FD00:CC::/64") == "fd00:cc::/64"
    assert address_text("fd00:cc::7/128") == "fd00:cc::7"
    with pytest.raises(StoreError, match="not an IPv6 source prefix: '198.18.0.0/24'"):
        address_text("198.18.0.0/24")
