"""The subscriber address plan and per-prefix IPv6 sources, on the program through
BPF_PROG_TEST_RUN: which hits are counted per source, under which key, and what a flood of
spoofed sources leaves of a real line's hits. The loaded program's per-source map holds 8,192
entries (4,096 per collection buffer, tests/conftest.py)."""

from __future__ import annotations

import ipaddress
from contextlib import contextmanager
from dataclasses import replace

import pytest

from ccxdp.datapath import libbpf, shared
from ccxdp.datapath.hashing import name_hash
from ccxdp.hits.stats import read_stats
from ccxdp.policy import plan
from ccxdp.policy.catalog import Catalog
from tests.conftest import set_entries
from tests.harness.flood import random_sources, with_source
from tests.harness.frames import CLIENT4, query, udp4, udp6

pytestmark = pytest.mark.root

XDP_DROP = 1
BLOCKED = "evil.test"
PLAN = ["198.18.0.0/24", "fd00:cc::/32"]
OUTSIDE_V4, OUTSIDE_V6 = "198.19.0.0/16", "fd00:dd::/32"  # spoofed, outside PLAN


@contextmanager
def planned(dp, prefixes, **settings):
    """The program with this plan (and settings) for the test, and none afterwards."""
    before = dp.settings()
    with Catalog(dp.catalog_path) as catalog:
        try:
            plan.set_prefixes(dp, catalog, prefixes)
            if settings:
                dp.set_settings(replace(before, **settings))
            yield catalog
        finally:
            plan.set_prefixes(dp, catalog, [])
            dp.set_settings(before)


@pytest.fixture
def blocking(datapath):
    dp, fd = datapath
    set_entries(dp, {name_hash(BLOCKED, dp.hash_key()): (0, 5)})
    return dp, fd


def hits(dp) -> dict[str, int]:
    return {s.address: s.hits for s in read_stats(dp).sources}


def send(fd, frame) -> None:
    assert libbpf.prog_test_run(fd, frame).retval == XDP_DROP


def test_no_plan_counts_every_source(blocking):
    dp, fd = blocking
    before = read_stats(dp)
    send(fd, udp4(query(BLOCKED), src="203.0.113.9"))
    send(fd, udp6(query(BLOCKED), src="2001:db8:9::1"))
    after = read_stats(dp)
    assert hits(dp) == {"203.0.113.9": 1, "2001:db8:9::/64": 1}
    assert after.events["outside_plan"] == before.events["outside_plan"]


def test_outside_plan_blocked_but_counted_only_globally(blocking):
    dp, fd = blocking
    with planned(dp, PLAN) as catalog:
        assert plan.state(dp, catalog).prefixes == ("198.18.0.0/24", "fd00:cc::/32")
        before = read_stats(dp)
        send(fd, udp4(query(BLOCKED), src="198.19.4.4"))
        send(fd, udp6(query(BLOCKED), src="fd00:dd::4"))
        send(fd, udp4(query(BLOCKED), src="198.18.0.77"))
        send(fd, udp6(query(BLOCKED), src="fd00:cc:1:2::77"))
        # IPv4 written IPv4-mapped in an IPv6 header is the same source as the IPv4 one.
        send(fd, udp6(query(BLOCKED), src="::ffff:198.19.5.5"))
        after = read_stats(dp)
    assert after.outcomes["blocked"] - before.outcomes["blocked"] == 5
    assert after.events["outside_plan"] - before.events["outside_plan"] == 3
    assert after.events["source_lost"] == before.events["source_lost"]
    assert hits(dp) == {"198.18.0.77": 1, "fd00:cc:1:2::/64": 1}


def test_plan_removed_counts_every_source_again(blocking):
    dp, fd = blocking
    with planned(dp, PLAN) as catalog:
        plan.remove(dp, catalog, PLAN)
        with dp.open_map(shared.MAP_PLAN) as m:
            assert list(m.keys()) == []  # ::/0 went with the last prefix
        send(fd, udp4(query(BLOCKED), src="198.19.4.4"))
    assert hits(dp) == {"198.19.4.4": 1}


def test_plan_trie_holds_prefixes_and_catch_all(blocking):
    dp, _fd = blocking
    with planned(dp, PLAN), dp.open_map(shared.MAP_PLAN) as m:
        got = {(k.prefixlen, str(ipaddress.IPv6Address(bytes(k.addr)))): m.lookup(k).value
               for k in m.keys()}
    assert got == {(0, "::"): 0, (120, "::ffff:c612:0"): 1, (32, "fd00:cc::"): 1}


@pytest.mark.parametrize("length,expected", [
    (56, {"fd00:cc:0:100::/56": 3, "fd00:cc:0:200::/56": 1}),
    (64, {"fd00:cc:0:101::/64": 2, "fd00:cc:0:1ff::/64": 1, "fd00:cc:0:200::/64": 1}),
    (128, {"fd00:cc:0:101::5": 1, "fd00:cc:0:101::9": 1, "fd00:cc:0:1ff::1": 1,
           "fd00:cc:0:200::1": 1}),
])
def test_ipv6_sources_per_configured_prefix(blocking, length, expected):
    dp, fd = blocking
    with planned(dp, [], source_prefix_v6=length):
        for src in ("fd00:cc:0:101::5", "fd00:cc:0:101::9", "fd00:cc:0:1ff::1",
                    "fd00:cc:0:200::1"):
            send(fd, udp6(query(BLOCKED), src=src))
        send(fd, udp4(query(BLOCKED)))
    assert hits(dp) == {**expected, CLIENT4: 1}


def test_spoofed_flood_outside_plan_cannot_erase_a_lines_hits(blocking):
    """Three times the map's room in spoofed sources, v4 and v6, around an infected line
    inside the plan whose IPv6 address rotates (privacy addresses) on every query."""
    dp, fd = blocking
    flood = 3 * 8192
    v4, v6 = udp4(query(BLOCKED)), udp6(query(BLOCKED))
    privacy = random_sources("fd00:cc:7:7::/64", 101, seed=2)
    spoofed4 = random_sources(OUTSIDE_V4, flood // 2, seed=3)
    spoofed6 = random_sources(OUTSIDE_V6, flood // 2, seed=4)
    with planned(dp, PLAN):
        before = read_stats(dp)
        for i, (a, b) in enumerate(zip(spoofed4, spoofed6, strict=True)):
            send(fd, with_source(v4, a))
            send(fd, with_source(v6, b))
            if i % 122 == 0:  # 101 times through the flood
                send(fd, v4)
                send(fd, with_source(v6, next(privacy)))
        after = read_stats(dp)
    assert hits(dp) == {CLIENT4: 101, "fd00:cc:7:7::/64": 101}
    assert after.events["source_lost"] - before.events["source_lost"] == 0
    assert after.events["outside_plan"] - before.events["outside_plan"] == flood
    assert after.outcomes["blocked"] - before.outcomes["blocked"] == flood + 202


def test_full_map_inside_plan_keeps_counting_known_sources(blocking):
    """Inside the plan (or with none) the map can fill. Deliberately, sources already in it
    keep counting; a new source's hit is blocked but lost, and counted as lost."""
    dp, fd = blocking
    frame = udp4(query(BLOCKED))
    send(fd, frame)  # the infected line, counted before the map fills
    before = read_stats(dp)
    newcomers = 8192 + 100  # the map holds 8,192 entries: the line's and 8,191 more
    for src in random_sources("198.18.0.0/15", newcomers * 2, seed=5):
        if src != ipaddress.IPv4Address(CLIENT4).packed:
            send(fd, with_source(frame, src))
            newcomers -= 1
            if newcomers == 0:
                break
    for _ in range(10):
        send(fd, frame)
    after = read_stats(dp)
    counted = hits(dp)
    assert len(counted) == 8192
    assert counted[CLIENT4] == 11
    assert after.events["source_lost"] - before.events["source_lost"] == 101


def test_a_source_in_the_old_and_the_new_plan_is_never_outside_it(blocking, monkeypatch):
    """Between every two writes of the trie while the plan changes, a source that both plans
    hold is counted per source, never as outside the plan."""
    dp, fd = blocking
    frame = udp4(query(BLOCKED), src="198.18.0.77")
    writes = []
    real_update, real_delete = libbpf.Map.update, libbpf.Map.delete

    def judge():
        before = read_stats(dp).events["outside_plan"]
        send(fd, frame)
        writes.append(read_stats(dp).events["outside_plan"] - before)

    def update(self, *a, **k):
        real_update(self, *a, **k)
        if self.info.name == shared.MAP_PLAN:
            judge()

    def delete(self, *a, **k):
        out = real_delete(self, *a, **k)
        if self.info.name == shared.MAP_PLAN:
            judge()
        return out

    with planned(dp, ["198.18.0.0/24", "fd00:cc::/32"]) as catalog:
        monkeypatch.setattr(libbpf.Map, "update", update)
        monkeypatch.setattr(libbpf.Map, "delete", delete)
        plan.set_prefixes(dp, catalog, ["198.18.0.0/16"])
        plan.set_prefixes(dp, catalog, ["198.18.0.0/23", "fd00::/8"])
        plan.set_prefixes(dp, catalog, [])
        monkeypatch.undo()
    # 3 writes each: one prefix in, two out; two in, one out; ::/0 out, then two prefixes.
    assert writes == [0] * 9
