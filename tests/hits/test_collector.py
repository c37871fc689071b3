"""The collector (ccxdp/hits/collector.py): real kernel, real packets through BPF_PROG_TEST_RUN,
exact counts.

- the program counts into the buffer of the current epoch, and a full map counts the hit as
  lost instead of evicting anything;
- a collection stores every counted hit once, with the hour rule and the times right;
- a collection that dies at any point (every step, and twice in a row) loses and doubles
  nothing once a later one has run;
- the real ``ccxdp collect``: its output, kill -9 at random moments while traffic flows, and
  several at once.
"""

from __future__ import annotations

import ctypes as ct
import fcntl
import ipaddress
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ccxdp.datapath import libbpf, shared
from ccxdp.datapath.hashing import name_hash
from ccxdp.datapath.loader import Datapath, Limits
from ccxdp.hits import collector
from ccxdp.hits.collector import CollectError, Collector, collect
from ccxdp.hits.stats import hit_clock_offset_ns, read_stats
from ccxdp.hits.store import (
    COUNTER_BUFFER_AT,
    COUNTER_CATEGORY_AT,
    COUNTER_KEY,
    COUNTER_VALUE,
    Store,
    address_text,
    hour_rows,
    packed_address_text,
    store_path,
    to_us,
)
from tests.conftest import make_pin_dir, one_line_error, remove_pins, set_entries
from tests.harness.frames import query, udp4, udp6

XDP_DROP, XDP_PASS = 1, 2
HOUR_US = 3600 * 1_000_000
CATEGORIES = {7: "emotet", 9: "qakbot"}


def kernel_entries(dp) -> dict[tuple[str, int, int], int]:
    """{(address, category, buffer): hits} of the per-source map, both buffers."""
    with dp.open_map(shared.MAP_SOURCES) as m:
        return {
            (packed_address_text(bytes(k.addr), k.prefix_len), k.category, k.buffer): v.hits
            for k, v in m.lookup_batch()
        }


def kernel_epoch(dp) -> int:
    with dp.open_map(shared.MAP_SOURCE_EPOCH) as m:
        return m.lookup(ct.c_uint32(0)).value


def set_epoch(dp, epoch: int) -> None:
    with dp.open_map(shared.MAP_SOURCE_EPOCH) as m:
        m.update(ct.c_uint32(0), ct.c_uint64(epoch))


def stored(store: Store) -> dict[tuple[str, int], int]:
    """{(address, category): hits} over every hour."""
    out: Counter = Counter()
    for h in store.hits():
        out[h.address, h.category] += h.hits
    return dict(out)


class Traffic:
    """Blocked queries through BPF_PROG_TEST_RUN, each one counted in ``sent``."""

    SOURCES = ["198.18.0.2", "198.18.0.3", "198.18.1.200", "fd00:cc::2", "fd00:cc::99"]

    def __init__(self, fd: int, names: dict[str, int]):
        self.fd = fd
        self.names = names  # name -> category
        self.sent: Counter = Counter()
        self.rng = random.Random(5)
        self.frames: dict[tuple[str, str], bytes] = {}

    def send(self, source: str, name: str, repeat: int = 1) -> None:
        frame = self.frames.get((source, name))
        if frame is None:
            make = udp6 if ":" in source else udp4
            frame = self.frames[source, name] = make(query(name), src=source)
        # One run each: repeat > 1 costs the kernel about 20 ms a call here.
        for _ in range(repeat):
            assert libbpf.prog_test_run(self.fd, frame).retval == XDP_DROP
            self.sent[source, self.names[name]] += 1

    def burst(self, n: int = 20) -> None:
        for _ in range(n):
            self.send(self.rng.choice(self.SOURCES), self.rng.choice(list(self.names)),
                      self.rng.randint(1, 5))

    @property
    def total(self) -> int:
        return sum(self.sent.values())


@pytest.fixture
def traffic(datapath):
    """Blocked names and sources counted per address (IPv6 too: source_prefix_v6 128, so
    that fd00:cc::2 and fd00:cc::99 stay two sources here)."""
    dp, fd = datapath
    key = dp.hash_key()
    set_entries(dp, {name_hash("a.test", key): (0, 7), name_hash("b.test", key): (0, 9)})
    set_epoch(dp, 0)
    before = dp.settings()
    dp.set_settings(replace(before, source_prefix_v6=128))
    try:
        yield dp, Traffic(fd, {"a.test": 7, "b.test": 9})
    finally:
        dp.set_settings(before)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "hits.db") as s:
        yield s


def run_collect(dp, store) -> collector.CollectResult:
    with dp:
        return collect(dp, store, CATEGORIES)


# -- the program's side -----------------------------------------------------------------------


@pytest.mark.root
def test_hits_go_to_the_buffer_of_the_current_epoch(traffic):
    dp, t = traffic
    t.send("198.18.0.2", "a.test", 2)
    assert kernel_entries(dp) == {("198.18.0.2", 7, 0): 2}
    set_epoch(dp, 5)
    t.send("198.18.0.2", "a.test", 3)
    t.send("fd00:cc::2", "b.test")
    assert kernel_entries(dp) == {("198.18.0.2", 7, 0): 2, ("198.18.0.2", 7, 1): 3,
                                  ("fd00:cc::2", 9, 1): 1}
    set_epoch(dp, 6)  # only the low bit picks the buffer
    t.send("198.18.0.2", "a.test")
    assert kernel_entries(dp) == {("198.18.0.2", 7, 0): 3, ("198.18.0.2", 7, 1): 3,
                                  ("fd00:cc::2", 9, 1): 1}
    # stats shows both buffers as one: every hit the kernel holds.
    got = {(s.address, s.category): s.hits for s in read_stats(dp).sources}
    assert got == {("198.18.0.2", 7): 6, ("fd00:cc::2", 9): 1}


@pytest.fixture(scope="module")
def tiny(state_root):
    """A program whose per-source map holds 2 x 4 entries."""
    pin_dir = make_pin_dir()
    dp = Datapath(pin_dir, state_root / "tiny")
    try:
        with dp:
            fd = dp.load(Limits(max_names=1024, max_sources=4))
        yield dp, fd
        libbpf.close(fd)
    finally:
        remove_pins(pin_dir)


@pytest.mark.root
def test_a_full_map_counts_lost_hits_and_still_blocks(tiny, tmp_path):
    dp, fd = tiny
    with dp.open_map(shared.MAP_SOURCES) as m:
        assert m.info.max_entries == 8
    set_entries(dp, {name_hash("a.test", dp.hash_key()): (0, 7)})
    t = Traffic(fd, {"a.test": 7})
    lost_before = read_stats(dp).events["source_lost"]
    sources = [f"198.18.3.{i}" for i in range(1, 13)]
    for s in sources:
        t.send(s, "a.test")  # every one is dropped, counted or not
    t.send(sources[0], "a.test", 4)  # an entry that exists still counts
    assert len(kernel_entries(dp)) == 8
    assert read_stats(dp).events["source_lost"] - lost_before == 4
    with Store(tmp_path / "r.db") as store:
        first = run_collect(dp, store)
        assert (first.hits, first.counters, first.lost, first.lost_total) == (12, 8, 4, 4)
        assert stored(store) == {(s, 7): 5 if s == sources[0] else 1 for s in sources[:8]}
        # The map has room again; the loss is reported once.
        for s in sources[8:]:
            t.send(s, "a.test")
        second = run_collect(dp, store)
        assert (second.hits, second.lost, second.lost_total) == (4, 0, 4)
        assert store.total_hits() == 16
        assert store.checkpoint()[collector.LOST_TOTAL] == 4
    assert kernel_entries(dp) == {}


# -- one collection -----------------------------------------------------------------------------


@pytest.mark.root
def test_collect_stores_every_hit_once(traffic, store):
    dp, t = traffic
    before = to_us(datetime.now(UTC))
    t.send("198.18.0.2", "a.test", 3)
    t.send("198.18.0.2", "b.test")
    t.send("fd00:cc::2", "a.test", 2)
    t.send("198.18.0.3", "a.test")
    after = to_us(datetime.now(UTC))
    result = run_collect(dp, store)
    assert (result.epoch, result.hits, result.counters, result.sources) == (0, 7, 4, 3)
    assert (result.recovered, result.lost) == (0, 0)
    assert stored(store) == {("198.18.0.2", 7): 3, ("198.18.0.2", 9): 1, ("fd00:cc::2", 7): 2,
                             ("198.18.0.3", 7): 1}
    for h in store.hits():
        assert before - 20_000 <= h.first_us <= h.last_us <= after + 20_000, h
        assert h.hour == h.first_us // HOUR_US * 3600 or h.hour == h.last_us // HOUR_US * 3600
        assert h.line is None
    assert store.categories() == CATEGORIES
    assert kernel_entries(dp) == {}
    assert kernel_epoch(dp) == 1
    cp = store.checkpoint()
    assert (cp[collector.DRAINED], cp[collector.CLEARED]) == (0, 0)

    # Nothing new: nothing taken. New hits go to the other buffer and are taken next.
    empty = run_collect(dp, store)
    assert (empty.epoch, empty.rows, empty.hits) == (1, 0, 0)
    t.send("198.18.0.2", "a.test", 5)
    assert kernel_entries(dp) == {("198.18.0.2", 7, 0): 5}
    assert run_collect(dp, store).hits == 5
    assert stored(store)["198.18.0.2", 7] == 8
    assert store.total_hits() == 12 == t.total


@pytest.mark.root
def test_a_collection_stages_and_the_fold_or_any_reader_makes_rows(traffic, store):
    """Without its fold, a collection leaves the kernel's counters staged: committed with
    the checkpoint, in no hits row yet. A reader folds them first; the fold takes them once."""
    dp, t = traffic
    t.send("198.18.0.2", "a.test", 3)
    t.send("fd00:cc::2", "b.test", 2)
    with dp, Collector(dp, CATEGORIES) as c:
        result = c.collect(store, fold=False)
    assert (result.hits, result.counters, result.rows, result.fold_seconds) == (5, 2, 0, 0.0)
    assert kernel_entries(dp) == {}
    assert store.staged() == 2
    assert store.db.execute("SELECT count(*) FROM hits").fetchone()[0] == 0
    assert stored(store) == {("198.18.0.2", 7): 3, ("fd00:cc::2", 9): 2}  # hits() folds
    assert store.staged() == 0
    t.send("198.18.0.2", "a.test")
    with dp, Collector(dp, CATEGORIES) as c:
        c.collect(store, fold=False)
    folded = store.fold()
    assert (folded.counters, folded.rows, folded.hits, folded.sources) == (1, 1, 1, 1)
    assert store.fold().counters == 0
    assert store.total_hits() == 6 == t.total


@pytest.mark.root
def test_collect_needs_the_lock(traffic, store):
    dp, _t = traffic
    with pytest.raises(CollectError, match="lock"):
        Collector(dp)


@pytest.mark.root
def test_maps_made_afresh_start_from_nothing(traffic, store):
    """A checkpoint of other maps (a purge, a reboot) says nothing about these: everything
    they hold is taken, even if the store's epoch is far ahead of theirs."""
    dp, t = traffic
    store.add_hit_counts([], {"boot": 1, "srcs_map": 1, "epoch_map": 1, "stats_map": 1,
                              collector.DRAINED: 1000, collector.CLEARED: 1000,
                              collector.LOST_SEEN: 10**9, collector.LOST_TOTAL: 3})
    set_epoch(dp, 4)
    t.send("198.18.0.2", "a.test", 2)
    set_epoch(dp, 5)  # as if a collector had switched and died before it stored anything
    t.send("198.18.0.2", "a.test", 3)
    result = run_collect(dp, store)
    assert (result.hits, result.recovered, result.lost, result.lost_total) == (5, 2, 0, 3)
    assert store.total_hits() == 5
    assert kernel_entries(dp) == {}


@pytest.mark.root
def test_a_checkpoint_ahead_of_the_kernel_is_refused(traffic, store):
    dp, t = traffic
    t.send("198.18.0.2", "a.test")
    run_collect(dp, store)
    set_epoch(dp, 0)  # written by hand, behind the store
    t.send("198.18.0.2", "a.test")
    with pytest.raises(CollectError, match="the store holds epoch 0 of these maps but the "
                                           "kernel is at epoch 0"):
        run_collect(dp, store)
    assert kernel_entries(dp) == {("198.18.0.2", 7, 0): 1}  # untouched


# -- killed at any point -------------------------------------------------------------------------


class Killed(BaseException):
    """What a kill -9 looks like from inside: the collector stops dead there."""


# Where a collection can die, and what it has done by then. Traffic arrives at each point, as
# it would on a live resolver.
CRASH_POINTS = ["start", "switched", "drained", "committed", "half_deleted", "deleted",
                "folding"]


def arm(monkeypatch, point: str, t: Traffic, when: int = 1) -> None:
    """Make the `when`-th passage through `point` die there (one collection)."""
    seen = Counter()

    def here(name: str) -> None:
        t.burst(3)
        seen[name] += 1
        if name == point and seen[name] == when:
            raise Killed(name)

    real_epoch, real_commit = Collector.epoch, Collector._commit
    real_delete, real_cleared = Collector._delete, Collector._mark_cleared
    real_wait = collector.wait_for_readers
    real_fold = Store.fold

    def epoch(self):
        here("start")
        return real_epoch(self)

    def wait():
        here("switched")
        real_wait()

    def commit(self, drained, checkpoint):
        here("drained")
        rows = real_commit(self, drained, checkpoint)
        here("committed")
        return rows

    def delete(self, drained):
        if point == "half_deleted" and drained.counters > 1:
            half = drained.counters // 2 * COUNTER_KEY.size
            self.srcs.delete_batch(bytes(drained.keys[:half]))
        here("half_deleted")
        real_delete(self, drained)

    def cleared(self, epoch):
        here("deleted")
        real_cleared(self, epoch)

    def fold(self):  # collected and committed (staged), not yet folded into hits
        here("folding")
        return real_fold(self)

    monkeypatch.setattr(Collector, "epoch", epoch)
    monkeypatch.setattr(Collector, "_commit", commit)
    monkeypatch.setattr(Collector, "_delete", delete)
    monkeypatch.setattr(Collector, "_mark_cleared", cleared)
    monkeypatch.setattr(collector, "wait_for_readers", wait)
    monkeypatch.setattr(Store, "fold", fold)


def pending(dp, store) -> int:
    """Hits in the kernel that the store does not hold yet (the collector's own rule)."""
    entries = kernel_entries(dp)
    epoch = kernel_epoch(dp)
    cp = store.checkpoint()
    with dp.open_map(shared.MAP_SOURCES) as m:
        same = cp.get("srcs_map") == m.info.id
    drained = cp.get(collector.DRAINED, epoch - 2) if same else epoch - 2
    buffers = {epoch & 1} | ({(epoch - 1) & 1} if drained < epoch - 1 else set())
    return sum(h for (_a, _c, b), h in entries.items() if b in buffers)


@pytest.mark.root
@pytest.mark.parametrize("second", [None, *CRASH_POINTS])
@pytest.mark.parametrize("first", CRASH_POINTS)
def test_a_collection_killed_anywhere_loses_and_doubles_nothing(
    traffic, store, monkeypatch, first, second
):
    """Die at `first`, then (a collection that recovers from it) die at `second`; then a
    clean collection. At every point the store (staged hits included: total_hits folds
    them) plus what the kernel holds beyond it is exactly what was sent; at the end the
    store alone is."""
    dp, t = traffic
    t.burst()
    run_collect(dp, store)  # a checkpoint to start from
    for point in (first, second):
        if point is None:
            continue
        t.burst()
        with monkeypatch.context() as m:
            arm(m, point, t)
            with pytest.raises(Killed):
                run_collect(dp, store)
        assert store.total_hits() + pending(dp, store) == t.total, f"killed at {point}"
        # stored hits per source never exceed what was sent from it
        for k, hits in stored(store).items():
            assert hits <= t.sent[k]
    t.burst()
    run_collect(dp, store)
    assert stored(store) == {k: v for k, v in t.sent.items() if v}
    assert store.total_hits() == t.total
    assert kernel_entries(dp) == {}


# -- the hour rule ---------------------------------------------------------------------------------


def test_hour_rows_one_hour():
    h = 1_800_000_000 // 3600 * 3600
    us = h * 1_000_000
    assert hour_rows("a", 1, 5, us, us + HOUR_US - 1) == [(h, "a", 1, 5, us, us + HOUR_US - 1)]
    assert hour_rows("a", 1, 1, us + 7, us + 7) == [(h, "a", 1, 1, us + 7, us + 7)]


def test_hour_rows_across_hours():
    """The first hit in its hour, at its time; the rest with the last, at the last's time."""
    h = 1_800_000_000 // 3600 * 3600
    first = h * 1_000_000 + HOUR_US - 1  # the hour's last microsecond
    last = first + 1  # the next hour's first
    assert hour_rows("a", 3, 10, first, last) == [
        (h, "a", 3, 1, first, first),
        (h + 3600, "a", 3, 9, last, last),
    ]
    # Days apart: still two rows, so both days keep a hit (notification counts days).
    later = last + 30 * 24 * HOUR_US + 5
    assert hour_rows("a", 3, 2, first, later) == [
        (h, "a", 3, 1, first, first),
        (h + 3600 + 30 * 24 * 3600, "a", 3, 1, later, later),
    ]
    # One hit cannot span hours; if a counter says so, its one hit is the first.
    assert hour_rows("a", 3, 1, first, last) == [(h, "a", 3, 1, first, first)]


@pytest.mark.root
def test_a_counter_across_an_hour_is_split_by_the_rule(traffic, store):
    """A kernel counter whose first and last hit straddle an hour (times written into the
    map as the program writes them) becomes the rule's two rows."""
    dp, _t = traffic
    offset = hit_clock_offset_ns()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    boundary_us = (now + offset) // 1000 // HOUR_US * HOUR_US  # this hour's start
    if boundary_us * 1000 - offset - 2_000_000_000 < 0:
        # Booted less than this hour ago (plus 2 s): no hour began since boot, and the kernel
        # clock cannot go below zero, so the counter straddles the next hour's start instead.
        boundary_us += HOUR_US
    first_ns = boundary_us * 1000 - offset - 2_000_000_000  # 2 s before the hour
    last_ns = boundary_us * 1000 - offset + 3_000_000_000  # 3 s after
    key = shared.SourceKey(category=7, buffer=0)
    ct.memmove(key.addr, ipaddress.IPv6Address("::ffff:198.18.0.9").packed, 16)
    with dp.open_map(shared.MAP_SOURCES) as m:
        m.update(key, shared.SourceHits(hits=6, first_seen_ns=first_ns, last_seen_ns=last_ns))
    run_collect(dp, store)
    rows = [(h.hour, h.address, h.category, h.hits) for h in store.hits()]
    hour = boundary_us // 1_000_000
    assert rows == [(hour - 3600, "198.18.0.9", 7, 1), (hour, "198.18.0.9", 7, 5)]
    early, late = store.hits()
    assert early.first_us == early.last_us and late.first_us == late.last_us
    assert abs(early.first_us - (boundary_us - 2_000_000)) < 50_000
    assert abs(late.last_us - (boundary_us + 3_000_000)) < 50_000


@pytest.mark.parametrize("text", [
    "198.18.0.2", "0.0.0.0", "255.255.255.255", "fd00:cc::2", "::", "::1", "::2:3",
    "::102:304", "::ffff:0:0", "64:ff9b::c612:2", "2001:db8:0:0:1::1", "2001:db8::1:0:0:1",
    "fe80::1", "1:2:3:4:5:6:7:8", "1::8", "1:0:3:4:5:6:7:8",
])
def test_addresses_as_the_store_keeps_them(text):
    raw = ipaddress.ip_address(text)
    if raw.version == 4:
        raw = ipaddress.IPv6Address("::ffff:" + text)
    assert packed_address_text(raw.packed) == address_text(raw)


class FakeMap:
    """lookup_batch_arrays as libbpf.Map gives it, over fixed entries, in small batches."""

    label = "fake map"

    def __init__(self, entries):
        self.entries = entries  # (address, category, buffer, hits)

    def lookup_batch_arrays(self, chunk):
        for at in range(0, len(self.entries), 3):
            part = self.entries[at : at + 3]
            keys = (shared.SourceKey * 4)()  # one spare, as the kernel leaves them
            values = (shared.SourceHits * 4)()
            for i, (address, category, buffer, hits) in enumerate(part):
                ct.memmove(keys[i].addr, ipaddress.IPv6Address(address).packed, 16)
                keys[i].category, keys[i].buffer = category, buffer
                values[i].hits, values[i].first_seen_ns, values[i].last_seen_ns = hits, 1, 2
            yield keys, values, len(part)


def test_drain_keeps_the_bytes_of_one_buffer_only():
    entries = [(f"fd00::{i}", i % 3, b, i) for i, b in enumerate(
        [0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0], start=1)]
    for buffer in (0, 1):
        drained = collector._drain(FakeMap(entries), buffer)
        mine = [e for e in entries if e[2] == buffer]
        keys = b"".join(k for k, _v in drained.batches)
        values = b"".join(v for _k, v in drained.batches)
        assert bytes(drained.keys) == keys
        got = [(str(ipaddress.IPv6Address(bytes(k.addr))), k.category, k.buffer, v.hits)
               for k, v in zip((shared.SourceKey * len(mine)).from_buffer_copy(keys),
                               (shared.SourceHits * len(mine)).from_buffer_copy(values),
                               strict=True)]
        assert got == mine
        assert (drained.counters, drained.hits) == (len(mine), sum(e[3] for e in mine))
        assert drained.categories == {e[1] for e in mine}
    with pytest.raises(CollectError, match="a buffer other than 0 or 1"):
        collector._drain(FakeMap([("fd00::1", 1, 2, 1)]), 0)


def test_key_layout_of_the_staged_counters():
    """The store stages the kernel's bytes and decodes them with these."""
    assert COUNTER_KEY.size == ct.sizeof(shared.SourceKey)
    assert COUNTER_VALUE.size == ct.sizeof(shared.SourceHits)
    assert COUNTER_BUFFER_AT == shared.SourceKey.buffer.offset
    assert COUNTER_CATEGORY_AT == shared.SourceKey.category.offset
    assert COUNTER_VALUE.format[1:] == "QQQ" and shared.SourceHits.hits.offset == 0
    assert shared.SourceKey.addr.offset == 0 and shared.SourceKey.addr.size == 16


# -- the real `ccxdp collect` ------------------------------------------------------------------


class Live:
    """A private ccxdp attached to lo of an empty namespace, and traffic through its pinned
    program from a thread (BPF_PROG_TEST_RUN), while `ccxdp collect` runs as processes."""

    def __init__(self, ccxdp, netns: str, max_sources: int = 4096):
        self.ccxdp = ccxdp
        ccxdp.run("attach", "lo", "--netns", netns, "--mode", "generic", "--max-names", "1024",
                  "--max-sources", str(max_sources))
        ccxdp.run("block", "add", "a.test", "--category", "emotet")
        ccxdp.run("block", "add", "b.test", "--category", "qakbot")
        # Per address, so that Traffic's two IPv6 sources stay two (one /64 by default).
        ccxdp.run("config", "set", "source_prefix_v6", "128")
        cats = _categories(ccxdp)
        self.fd = libbpf.obj_get(ccxdp.pin_dir / shared.PROG_PIN)
        self.traffic = Traffic(self.fd, {"a.test": cats["emotet"], "b.test": cats["qakbot"]})
        self.dp = Datapath(ccxdp.pin_dir, ccxdp.state_dir)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    self.traffic.burst(5)
                time.sleep(0.002)
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error

    def collector(self) -> subprocess.Popen:
        c = self.ccxdp
        argv = [str(c.exe), "--pin-dir", str(c.pin_dir), "--state-dir", str(c.state_dir),
                "collect", "--json"]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def store(self) -> Store:
        return Store(store_path(self.ccxdp.state_dir))

    def check_accounted(self, where: str) -> None:
        """With no collector running and no traffic: store + kernel beyond it == sent."""
        with self.store() as store:
            assert store.total_hits() + pending(self.dp, store) == self.traffic.total, where

    def state(self) -> str:
        """Where the last collection stopped, as the kernel and the store tell."""
        epoch = kernel_epoch(self.dp)
        with self.store() as store:
            cp = store.checkpoint()
        drained = cp.get(collector.DRAINED)
        if drained is None:
            return "never stored" if epoch == 0 else "switched, not stored"
        if drained < epoch - 1:
            return "switched, not stored"
        if cp.get(collector.CLEARED) != drained:
            return "stored, not cleared"
        return "complete"

    def close(self) -> None:
        libbpf.close(self.fd)


def _categories(ccxdp) -> dict[str, int]:
    """The catalog's category ids by name, as the kernel holds them."""
    from ccxdp.policy.catalog import Catalog

    with Catalog(ccxdp.state_dir / "catalog.db") as catalog:
        return {name: id_ for id_, name in catalog.categories().items()}


@pytest.fixture
def live(ccxdp, bare_netns):
    lv = Live(ccxdp, bare_netns)
    try:
        yield lv
    finally:
        lv._stop.set()
        if lv._thread is not None:
            lv._thread.join()
        lv.close()


@pytest.mark.root
def test_ccxdp_collect_prints_what_it_took(live):
    t = live.traffic
    live.ccxdp.run("config", "set", "source_prefix_v6", "64")
    t.send("198.18.0.2", "a.test", 3)
    t.send("fd00:cc::2", "b.test", 1)
    t.send("fd00:cc::99", "b.test", 1)  # the same /64: one source
    out = live.ccxdp.json("collect")
    assert out == {"epoch": 0, "rows": 2, "hits": 5, "sources": 2, "counters": 2,
                   "recovered": 0, "lost": 0, "lost_total": 0, "seconds": out["seconds"],
                   "fold_seconds": out["fold_seconds"]}
    text = live.ccxdp.run("collect")
    assert "collected epoch 1" in text.stdout and "hits" in text.stdout
    assert text.stderr == ""
    with live.store() as store:
        assert stored(store) == {("198.18.0.2", t.names["a.test"]): 3,
                                 ("fd00:cc::/64", t.names["b.test"]): 2}
        assert set(store.categories().values()) == {"emotet", "qakbot"}


@pytest.mark.root
def test_ccxdp_collect_folds_after_releasing_the_lock(live, monkeypatch):
    """The fold (seconds for a million sources) only touches the store: `ccxdp collect` runs
    it after releasing the state folder's lock, so a feed sync or `block add` need not wait."""
    from click.testing import CliRunner

    from ccxdp.cli import cli

    t = live.traffic
    t.send("198.18.0.2", "a.test", 3)
    lock_free_during_fold = []
    real_fold = Store.fold

    def fold(self):
        fd = os.open(live.ccxdp.state_dir / "lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock_free_during_fold.append(True)
        except BlockingIOError:
            lock_free_during_fold.append(False)
        finally:
            os.close(fd)
        return real_fold(self)

    monkeypatch.setattr(Store, "fold", fold)
    result = CliRunner().invoke(cli, ["--pin-dir", str(live.ccxdp.pin_dir), "--state-dir",
                                      str(live.ccxdp.state_dir), "collect", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["rows"], out["hits"], out["sources"]) == (1, 3, 1)
    assert lock_free_during_fold == [True]


@pytest.mark.root
def test_ccxdp_collect_before_anything_is_loaded(ccxdp):
    cp = ccxdp.run("collect", check=False)
    one_line_error(cp, 1, "ccxdp is not loaded", "ccxdp attach IFACE")
    assert not store_path(ccxdp.state_dir).exists()


@pytest.mark.root
def test_ccxdp_collect_warns_when_hits_were_lost(ccxdp, bare_netns):
    lv = Live(ccxdp, bare_netns, max_sources=2)
    try:
        for i in range(1, 7):
            lv.traffic.send(f"198.18.4.{i}", "a.test")
        cp = ccxdp.run("collect")
        assert cp.stderr.split() == (
            "warning: 2 blocked queries since the last collection could not be counted per "
            "source: the per-source map was full. Collect more often, or make the maps again "
            "with a larger --max-sources (detach --purge, attach).").split()
        assert ccxdp.json("stats")["events"]["source_lost"] == 2
        again = ccxdp.run("collect", "--json")
        assert again.stderr == ""
    finally:
        lv.close()


def _drained(db: sqlite3.Connection) -> str | None:
    row = db.execute("SELECT value FROM checkpoint WHERE key = ?", (collector.DRAINED,))
    return (row.fetchone() or (None,))[0]


@pytest.mark.root
def test_ccxdp_collect_killed_at_random_moments_while_traffic_flows(live):
    """kill -9 of `ccxdp collect` after a random delay, many times, with queries arriving
    all along; after each kill (traffic paused) the store plus what the kernel holds beyond
    it is exactly what was sent; after a clean collect the store alone is."""
    rng = random.Random(11)
    started = time.monotonic()
    live.ccxdp.run("collect")
    duration = time.monotonic() - started
    outcomes = Counter()
    live.start()
    drained = sqlite3.connect(f"file:{store_path(live.ccxdp.state_dir)}?mode=ro", uri=True)
    for i in range(45):
        p = live.collector()
        if i % 3 == 0:  # anywhere in its life
            time.sleep(rng.uniform(0, 1.5) * duration)
        elif i % 3 == 1:  # once it has switched the epoch
            before = kernel_epoch(live.dp)
            while p.poll() is None and kernel_epoch(live.dp) == before:
                time.sleep(0.0005)
            time.sleep(rng.uniform(0, 0.05))
        else:  # once it has stored a buffer: while it deletes it
            before = _drained(drained)
            while p.poll() is None and _drained(drained) == before:
                time.sleep(0.0002)
        p.send_signal(signal.SIGKILL)
        _out, err = p.communicate(timeout=120)
        outcomes["finished" if p.returncode == 0 else "killed"] += 1
        assert p.returncode in (0, -signal.SIGKILL), err
        outcomes[live.state()] += 1
        if i % 5 == 4:
            live.stop()
            live.check_accounted(f"after kill {i}")
            live.start()
    live.stop()
    drained.close()
    # Kills landed before, inside and after the steps that matter (the deterministic test
    # above dies at each step on purpose).
    assert outcomes["killed"] >= 10, outcomes
    assert outcomes["switched, not stored"] + outcomes["stored, not cleared"] >= 1, outcomes
    live.ccxdp.run("collect")
    with live.store() as store:
        assert store.total_hits() == live.traffic.total
        assert stored(store) == {k: v for k, v in live.traffic.sent.items() if v}
    assert kernel_entries(live.dp) == {}


@pytest.mark.root
def test_concurrent_ccxdp_collects_count_exactly(live):
    """Several `ccxdp collect` at once, one of them killed, round after round, with traffic
    flowing: the datapath's lock orders them, and the totals are exact."""
    rng = random.Random(12)
    live.start()
    finished = 0
    for _ in range(5):
        procs = [live.collector() for _ in range(4)]
        time.sleep(rng.uniform(0.2, 1.0))
        victim = rng.choice(procs)
        victim.send_signal(signal.SIGKILL)
        for p in procs:
            _out, err = p.communicate(timeout=120)
            assert p.returncode in (0, -signal.SIGKILL), err
            finished += p.returncode == 0
    live.stop()
    assert finished >= 10
    live.check_accounted("after the rounds")
    live.ccxdp.run("collect")
    with live.store() as store:
        assert store.total_hits() == live.traffic.total
        assert stored(store) == {k: v for k, v in live.traffic.sent.items() if v}
