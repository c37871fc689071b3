"""The fleet store on a real PostgreSQL server: schema by explicit command, shipping each
resolver's backlog exactly once through kills of either side, names bound to one host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from ccxdp.hits import fleet as fleet_mod
from ccxdp.hits.fleet import FleetStore, ResolverClash, check_uri
from ccxdp.hits.store import Store, StoreError, to_us
from tests.harness.hits import BOOT, counters
from tests.harness.postgres import running_server

H = datetime(2026, 11, 3, 10, tzinfo=UTC)
H_US = to_us(H)
HOUR_S = H_US // 1_000_000


def fleet(uri: str) -> FleetStore:
    store = FleetStore(uri, schema=False)
    store.init()
    store.close()
    return FleetStore(uri)


def stage(local: Store, entries, epoch: int = 1, names=None, feeds=None) -> None:
    local.stage_counters([counters(*entries)], BOOT, None, names or {}, feeds, epoch=epoch)


def test_a_database_without_the_schema_says_which_command_makes_it(fleet_uri):
    with pytest.raises(StoreError, match=r"no ccxdp schema: run 'ccxdp store init"):
        FleetStore(fleet_uri)
    with FleetStore(fleet_uri, schema=False) as store:
        assert store.init() is True
        assert store.init() is False  # there already: nothing changes
        assert store.schema_version() == fleet_mod.SCHEMA_VERSION
    FleetStore(fleet_uri).close()


def test_a_newer_or_older_schema_is_refused_with_the_command_to_run(fleet_uri, postgres_server):
    fleet(fleet_uri).close()
    db = fleet_uri.rsplit("/", 1)[1]
    postgres_server.psql("INSERT INTO ccxdp_schema (version) VALUES (99)", db, "ccxdp")
    with pytest.raises(StoreError, match="version 99, newer than this ccxdp"):
        FleetStore(fleet_uri)
    postgres_server.psql("DELETE FROM ccxdp_schema; INSERT INTO ccxdp_schema VALUES (0)", db,
                         "ccxdp")
    with pytest.raises(StoreError, match=r"version 0, this ccxdp needs 2: run 'ccxdp store "
                                         r"migrate"):
        FleetStore(fleet_uri)


def test_migrate_from_schema_1_keeps_lines_and_rows(fleet_uri, tmp_path):
    """A version 1 database (made as ccxdp 1 made it): migrate keeps each row's line, and
    hits shipped afterwards into an attributed hour wait beside it."""
    with FleetStore(fleet_uri, schema=False) as store:
        for statement in fleet_mod._SCHEMA:
            store._q(statement)
        store._q("INSERT INTO ccxdp_schema (version) VALUES (1)")
        store._q("INSERT INTO hits (hour, resolver, address, category, hits, first_us, "
                 "last_us, line) VALUES (0, 'rs-a', '198.18.0.2', 0, 2, 1, 2, 'L-1'), "
                 "(0, 'rs-a', '198.18.0.3', 0, 4, 3, 4, NULL)")
    cp = _ccxdp(tmp_path, "store", "migrate", "--store", fleet_uri)
    assert cp.stdout == "upgraded the fleet store's schema from version 1 to 2\n", cp.stderr
    with FleetStore(fleet_uri) as store:
        assert [(h.address, h.hits, h.line) for h in store.hits()] == [
            ("198.18.0.2", 2, "L-1"), ("198.18.0.3", 4, None)]
        assert store.line_hits(0, 3600) == [("L-1", 0, 0, 2, 1, 2, "198.18.0.2")]


def test_a_password_in_the_uri_is_refused():
    for uri in ("postgresql://ccxdp:secret@db.example/ccxdp",
                "postgresql:///ccxdp?password=secret"):
        with pytest.raises(StoreError) as e:
            check_uri(uri)
        assert str(e.value) == (
            "the store URI holds a password: leave it out and give it by libpq's conventions "
            "(~/.pgpass, a file named by PGPASSFILE, or a service file)")
    with pytest.raises(StoreError) as e:
        check_uri("postgresql://ccxdp:secret@[bad")
    assert str(e.value) == "the store URI is not a libpq URI or key=value string"


def test_without_the_pgpass_file_the_connection_fails_in_one_line(fleet_uri, monkeypatch,
                                                                   tmp_path):
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(StoreError) as e:
        FleetStore(fleet_uri)
    assert str(e.value).startswith("cannot reach the fleet store: ")
    assert "\n" not in str(e.value)


def test_ship_moves_the_backlog_with_each_rows_resolver_and_category_by_name(fleet_uri):
    with fleet(fleet_uri) as store, Store(":memory:") as a, Store(":memory:") as b:
        # The two resolvers' catalogs gave "emotet" different ids.
        stage(a, [("198.18.0.2", 1, 3, H_US + 1, H_US + 9)], names={1: "emotet"},
              feeds={1: ["abuse"]})
        stage(b, [("198.18.0.2", 4, 2, H_US + 5, H_US + 6),
                  ("fd00:cc::2", 5, 1, H_US + 7, H_US + 7)], names={4: "emotet", 5: "qakbot"})
        ra = store.ship(a, "r1")
        rb = store.ship(b, "r2")
        assert (ra.batches, ra.counters, ra.hits, ra.rows, ra.skipped) == (1, 1, 3, 1, 0)
        assert (rb.batches, rb.counters, rb.hits, rb.rows) == (1, 2, 3, 2)
        assert (rb.backlog_batches, rb.backlog_counters, rb.backlog_hits) == (0, 0, 0)
        names = store.categories()
        rows = sorted((h.resolver, h.address, names[h.category], h.hits, h.first_us, h.last_us)
                      for h in store.hits())
        assert rows == [
            ("r1", "198.18.0.2", "emotet", 3, H_US + 1, H_US + 9),
            ("r2", "198.18.0.2", "emotet", 2, H_US + 5, H_US + 6),
            ("r2", "fd00:cc::2", "qakbot", 1, H_US + 7, H_US + 7),
        ]
        emotet = next(i for i, n in names.items() if n == "emotet")
        assert store.feeds_of("198.18.0.2", emotet, HOUR_S // 3600 * 3600) == ["abuse"]
        assert store.total_hits() == 6
        assert a.backlog() == (0, 0, 0) and b.backlog() == (0, 0, 0)
        assert [(r["name"], r["shipped_batch"], r["shipped_epoch"], r["hits"])
                for r in store.resolvers()] == [("r1", 1, 1, 3), ("r2", 1, 1, 3)]


def test_a_second_ship_into_the_same_hour_adds_to_the_row(fleet_uri):
    with fleet(fleet_uri) as store, Store(":memory:") as a:
        stage(a, [("198.18.0.2", 1, 3, H_US + 1, H_US + 9)], epoch=1)
        stage(a, [("198.18.0.2", 1, 4, H_US + 10, H_US + 20)], epoch=2)
        store.ship(a, "r1")
        stage(a, [("198.18.0.2", 1, 5, H_US + 0, H_US + 30)], epoch=3)
        r = store.ship(a, "r1")
        assert (r.batches, r.hits) == (1, 5)
        [h] = store.hits()
        assert (h.hits, h.first_us, h.last_us) == (12, H_US, H_US + 30)
        assert store.resolvers()[0]["shipped_epoch"] == 3


def test_a_local_backlog_is_not_folded_into_the_local_store(fleet_uri, tmp_path):
    with fleet(fleet_uri) as store, Store(tmp_path / "hits.db") as a:
        stage(a, [("198.18.0.2", 1, 3, H_US + 1, H_US + 9)])
        store.ship(a, "r1")
        stage(a, [("198.18.0.2", 1, 1, H_US + 1, H_US + 9)])
        with pytest.raises(StoreError, match="backlog for the fleet store postgresql://"):
            a.hits()
        assert a.backlog() == (1, 1, 1)


def test_batches_the_fleet_already_holds_are_dropped_not_stored_again(fleet_uri):
    """A kill after the fleet's commit and before the local delete: the next ship finds
    the batches below the resolver's mark."""
    with fleet(fleet_uri) as store, Store(":memory:") as a:
        stage(a, [("198.18.0.2", 1, 3, H_US + 1, H_US + 9)])
        stage(a, [("198.18.0.3", 1, 2, H_US + 1, H_US + 9)])
        batches = a.staged_batches(0, 1 << 20)
        store._ship_batches("r1", a.instance(), batches[:1], {})  # committed, not dropped
        r = store.ship(a, "r1")
        assert (r.batches, r.hits, r.skipped) == (1, 2, 1)
        assert store.total_hits() == 5


def test_two_hosts_with_one_name_are_refused_not_merged(fleet_uri):
    with fleet(fleet_uri) as store, Store(":memory:") as a, Store(":memory:") as b:
        stage(a, [("198.18.0.2", 1, 3, H_US + 1, H_US + 9)])
        stage(b, [("198.18.0.9", 1, 7, H_US + 1, H_US + 9)])
        store.ship(a, "r1")
        with pytest.raises(ResolverClash, match="resolver name 'r1' is taken by another "
                                                "host's store"):
            store.ship(b, "r1")
        assert store.total_hits() == 3
        assert b.backlog() == (1, 1, 7)  # kept for when it has a name of its own
        assert store.forget_resolver("r1") is True
        store.ship(b, "r1")  # the host that replaced it, after the operator said so
        assert store.total_hits() == 10


_SHIP_LOOP = """
import sys
from ccxdp.hits import fleet
from ccxdp.hits.store import Store
fleet.SHIP_COUNTERS = 3  # many small transactions: a kill lands inside one
with fleet.FleetStore(sys.argv[1]) as f, Store(sys.argv[2]) as local:
    print("shipping", flush=True)
    f.ship(local, "r1")
"""


def test_a_shipper_killed_at_any_point_loses_and_doubles_nothing(fleet_uri, tmp_path):
    path = tmp_path / "hits.db"
    expected = 0
    with Store(path) as local:
        for epoch in range(1, 401):
            entries = [(f"198.18.{epoch // 200}.{epoch % 200}", 1, epoch, H_US + epoch,
                        H_US + epoch + 5)]
            expected += epoch
            stage(local, entries, epoch=epoch)
    fleet(fleet_uri).close()
    left = []
    for delay in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5):
        child = subprocess.Popen([sys.executable, "-c", _SHIP_LOOP, fleet_uri, str(path)],
                                 stdout=subprocess.PIPE, text=True, env=os.environ)
        child.stdout.readline()
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        with Store(path) as local:
            left.append(local.backlog()[0])
    assert any(0 < n < 400 for n in left), left  # some kills landed amid the ship
    with FleetStore(fleet_uri) as store, Store(path) as local:
        store.ship(local, "r1")
        assert local.backlog() == (0, 0, 0)
        assert store.total_hits() == expected == 80_200
        assert len(store.hits()) == 400


def test_the_database_killed_mid_transaction_loses_and_doubles_nothing(tmp_path, monkeypatch):
    """The ship is held inside its transaction (a row it adds to is locked by another
    session), with rows already written, when the server is killed."""
    import psycopg

    server = running_server(port=5433)
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        uri = server.database()
        fleet(uri).close()
        expected = 0
        path = tmp_path / "hits.db"

        def stage_epochs(local, epochs):
            nonlocal expected
            for epoch in epochs:
                entries = [(f"fd00:{epoch:x}::{i:x}", 2, i, H_US + i, H_US + i)
                           for i in range(1, 101)]
                if epoch == 150:
                    entries[-1] = ("fd00:1::1", 2, 7, H_US + 1, H_US + 1)  # batch 1's row
                expected += sum(e[2] for e in entries)
                stage(local, entries, epoch=epoch)

        with FleetStore(uri) as store, Store(path) as local:
            stage_epochs(local, range(1, 101))
            store.ship(local, "r1")
            stage_epochs(local, range(101, 201))
        monkeypatch.setattr(fleet_mod, "SHIP_COUNTERS", 500)  # 5 batches per transaction
        blocker = psycopg.connect(uri)
        blocker.execute("SELECT 1 FROM hits WHERE address = 'fd00:1::1' FOR UPDATE")
        failures = []

        def ship():
            try:
                with FleetStore(uri) as store, Store(path) as local:
                    store.ship(local, "r1")
            except StoreError as e:
                failures.append(str(e))

        worker = threading.Thread(target=ship)
        worker.start()
        watcher = psycopg.connect(uri, autocommit=True)  # a fresh view of activity each time
        deadline = time.monotonic() + 30
        while not watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'ccxdp' AND "
                "wait_event_type = 'Lock'").fetchone():
            assert time.monotonic() < deadline, "the ship never waited on the locked row"
            time.sleep(0.02)
        watcher.close()
        server.kill()
        worker.join(60)
        blocker.close()
        assert len(failures) == 1 and "\n" not in failures[0]
        with Store(path) as local:
            assert local.backlog()[0] == 55  # 101-145 shipped; 146-150 died with the server
        with pytest.raises(StoreError, match="cannot reach the fleet store"):
            FleetStore(uri)
        server.start()  # crash recovery: the committed ships are there, the one killed not
        with FleetStore(uri) as store, Store(path) as local:
            r = store.ship(local, "r1")
            assert (r.batches, r.skipped, r.backlog_batches) == (55, 0, 0)
            assert store.total_hits() == expected
            assert len(store.hits()) == 19_999
    finally:
        server.remove()


def _ccxdp(tmp_path, *args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "ccxdp")
    return subprocess.run([exe, "--state-dir", str(tmp_path / "state"), *args],
                          capture_output=True, text=True, timeout=60, env=os.environ)


def test_store_commands_make_and_upgrade_the_schema_only_when_asked(fleet_uri, tmp_path):
    cp = _ccxdp(tmp_path, "records", "--store", fleet_uri)
    assert (cp.returncode, cp.stderr) == (1, "Error: the fleet store has no ccxdp schema: run "
                                             "'ccxdp store init --store URI' once\n")
    assert _ccxdp(tmp_path, "store", "init", "--store", fleet_uri).stdout == (
        "made the fleet store's schema (version 2)\n")
    assert _ccxdp(tmp_path, "store", "init", "--store", fleet_uri).stdout == (
        "the fleet store has its schema already (version 2): nothing changed\n")
    assert _ccxdp(tmp_path, "store", "migrate", "--store", fleet_uri).stdout == (
        "the fleet store's schema is version 2 already: nothing changed\n")
    cp = _ccxdp(tmp_path, "store", "migrate")
    assert cp.returncode == 2 and "'store migrate' is for the fleet store" in cp.stderr
    cp = _ccxdp(tmp_path, "store", "forget-resolver", "rs9", "--store", fleet_uri)
    assert (cp.returncode, cp.stderr) == (1, "Error: no resolver named 'rs9' in the fleet "
                                             "store\n")
    cp = _ccxdp(tmp_path, "records", "--store", "postgresql://ccxdp:pw@db/ccxdp")
    assert cp.returncode == 1 and "pw" not in cp.stderr.replace("password", "")
    assert cp.stderr.startswith("Error: the store URI holds a password")
