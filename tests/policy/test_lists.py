"""Listings, catalog and kernel change together or not at all."""

from __future__ import annotations

from array import array

import pytest

from ccxdp.datapath import shared
from ccxdp.datapath.hashing import name_hash
from ccxdp.datapath.loader import Datapath, Limits
from ccxdp.errors import CcxdpError
from ccxdp.policy.catalog import ALLOW, BLOCK, Catalog, Listing, pack
from ccxdp.policy.lists import apply, combine, kernel_list, listing_from
from tests.conftest import kernel_names, publish_entries

A = shared.Action
SUB, NOT_SELF = shared.ENTRY_SUBTREE, shared.ENTRY_NOT_SELF
ALLOW_NAME, ALLOW_BELOW = shared.ENTRY_ALLOW_NAME, shared.ENTRY_ALLOW_BELOW


@pytest.mark.parametrize("block_match, allow_match, expected", [
    # The allow entry covers all the block entry does: a plain allow entry.
    ("exact", "exact", (A.ALLOW, 0, 0)),
    ("subtree", "subtree", (A.ALLOW, SUB, 0)),
    ("exact", "subtree", (A.ALLOW, SUB, 0)),
    ("below", "below", (A.ALLOW, SUB | NOT_SELF, 0)),
    ("below", "subtree", (A.ALLOW, SUB, 0)),
    # Part stays blocked: the block entry with the allowed part marked.
    ("subtree", "exact", (A.REFUSED, SUB | ALLOW_NAME, 5)),
    ("below", "exact", (A.REFUSED, SUB | ALLOW_NAME, 5)),
    ("subtree", "below", (A.REFUSED, SUB | ALLOW_BELOW, 5)),
    ("exact", "below", (A.REFUSED, SUB | ALLOW_BELOW, 5)),
])
def test_an_allow_entry_wins_where_it_covers_the_same_name(block_match, allow_match, expected):
    value = combine(pack(BLOCK, block_match, "refused", 5), pack(ALLOW, allow_match, "allow", 0))
    assert shared.unpack_entry(value) == expected


def test_the_kernel_list_holds_one_value_per_name_hash():
    block = listing_from({1: pack(BLOCK, "exact", "refused", 3),
                          2: pack(BLOCK, "subtree", "default", 0),
                          3: pack(BLOCK, "exact", "sinkhole", 3)})
    allow = listing_from({1: pack(ALLOW, "subtree", "allow", 0),
                          4: pack(ALLOW, "exact", "allow", 0)})
    hashes, values = kernel_list(block, allow)
    assert list(hashes) == [1, 2, 3, 4]
    assert [shared.unpack_entry(v) for v in values] == [
        (A.ALLOW, SUB, 0), (A.DEFAULT, SUB, 0), (A.SINKHOLE, 0, 3), (A.ALLOW, 0, 0)]


def unloaded(tmp_path) -> Datapath:
    """A datapath whose program is not loaded: changes reach the catalog only."""
    return Datapath(tmp_path / "pins", tmp_path / "state")


def test_a_second_name_with_a_listed_hash_is_refused_and_nothing_changes(tmp_path):
    dp = unloaded(tmp_path)
    with Catalog(tmp_path / "c.db") as c:
        apply(dp, c, {(1, BLOCK): listing_from({42: pack(BLOCK, "exact", "drop", 0)})},
              {42: "evil.test"})
        feed = c.add_source("feed", "/x", "plain", None, None, 0, False)
        bad = {(feed.id, ALLOW): listing_from({42: pack(ALLOW, "exact", "allow", 0)})}
        with pytest.raises(CcxdpError, match="'bad.test' hashes like the listed 'evil.test'"):
            apply(dp, c, bad, {42: "bad.test"})
        assert [(e.name, e.kind) for e in c.entries(kind=None)] == [("evil.test", "block")]
        assert len(c.listing(feed.id, ALLOW)) == 0
        # The same name from a second source is fine, and listed once per kind.
        apply(dp, c, bad, {42: "evil.test"})
        assert [(e.name, e.kind) for e in c.entries(kind=None)] == [("evil.test", "allow"),
                                                                    ("evil.test", "block")]


def test_the_catalog_keeps_unsigned_64_bit_hashes(tmp_path):
    big = (1 << 64) - 1
    with Catalog(tmp_path / "c.db") as c:
        apply(unloaded(tmp_path), c, {(1, BLOCK): Listing(array("Q", [big]), array("Q", [
            pack(BLOCK, "subtree", "drop", 0)]))}, {big: "big.test"})
        assert c.get(big).name == "big.test" and c.get(big).match == "subtree"
        assert list(c.listing(1, BLOCK).hashes) == [big]


def test_the_manual_source_wins_then_feeds_in_the_order_they_were_added(tmp_path):
    dp = unloaded(tmp_path)
    with Catalog(tmp_path / "c.db") as c:
        first = c.add_source("first", "/1", "plain", None, None, 0, False)
        second = c.add_source("second", "/2", "plain", None, None, 0, False)
        apply(dp, c, {(second.id, BLOCK): listing_from({7: pack(BLOCK, "exact", "tc", 2)})},
              {7: "x.test"})
        assert c.get(7).action == "tc"
        apply(dp, c, {(first.id, BLOCK): listing_from({7: pack(BLOCK, "exact", "nodata", 1)})},
              {7: "x.test"})
        assert (c.get(7).action, c.get(7).category) == ("nodata", 1)
        apply(dp, c, {(1, BLOCK): listing_from({7: pack(BLOCK, "subtree", "drop", 0)})},
              {7: "x.test"})
        assert (c.get(7).match, c.get(7).action) == ("subtree", "drop")
        apply(dp, c, {(1, BLOCK): Listing.empty(), (first.id, BLOCK): Listing.empty()}, {})
        assert c.get(7).action == "tc", "the last source holding it decides again"
        apply(dp, c, {(second.id, BLOCK): Listing.empty()}, {})
        assert c.entries(kind=None) == []


@pytest.fixture
def small(tmp_path, ccxdp):
    """The program loaded (not attached) with room for 4 names, used through the real CLI."""
    dp = Datapath(ccxdp.pin_dir, ccxdp.state_dir)
    with dp:
        from ccxdp.datapath import libbpf

        libbpf.close(dp.load(Limits(max_names=4, max_sources=16)))
    return ccxdp, dp


def kernel_hashes(dp) -> set[int]:
    return set(kernel_names(dp))


@pytest.mark.root
def test_full_name_map_changes_nothing(small):
    cli, dp = small
    cli.run("block", "add", "a.test", "b.test", "c.test")
    key = dp.hash_key()
    before = {name_hash(n, key) for n in ("a.test", "b.test", "c.test")}
    assert kernel_hashes(dp) == before

    cp = cli.run("block", "add", "d.test", "e.test", check=False)  # 5 names

    assert cp.returncode == 1
    assert "nothing was changed" in cp.stderr and "which holds 4" in cp.stderr
    assert "Traceback" not in cp.stderr
    assert [e["name"] for e in cli.json("block", "list")] == ["a.test", "b.test", "c.test"]
    assert kernel_hashes(dp) == before


@pytest.mark.root
def test_update_of_an_existing_entry_and_remove(small):
    cli, dp = small
    assert cli.json("block", "add", "a.test") == [
        {"name": "a.test", "status": "added", "subtree": False,
         "action": "default", "category": None}
    ]
    assert cli.json("block", "add", "A.TEST.", "--subtree") == [
        {"name": "a.test", "status": "updated", "subtree": True,
         "action": "default", "category": None}
    ]
    entry = kernel_names(dp)[name_hash("a.test", dp.hash_key())]
    # No --action: the configured default action decides at query time.
    assert entry == (shared.Action.DEFAULT, shared.ENTRY_SUBTREE, 0)
    cp = cli.run("block", "remove", "a.test", "never.test", "--json", check=False)
    assert cp.returncode == 1 and "not listed: never.test" in cp.stderr
    assert kernel_hashes(dp) == set()
    assert cli.json("block", "list") == []


@pytest.mark.root
def test_block_add_before_any_attach_takes_effect_at_attach(ccxdp, bare_netns):
    cp = ccxdp.run("block", "add", "early.test")
    assert "take effect at the next attach" in cp.stderr
    assert not ccxdp.pin_dir.exists()
    ccxdp.run("attach", "lo", "--netns", bare_netns, "--mode", "generic")
    dp = Datapath(ccxdp.pin_dir, ccxdp.state_dir)
    assert kernel_hashes(dp) == {name_hash("early.test", dp.hash_key())}
    assert ccxdp.json("status")["names"] == 1


@pytest.mark.root
def test_attach_mends_a_kernel_map_that_drifted_from_the_catalog(ccxdp, bare_netns):
    """What a crash between the catalog and the kernel could leave: a stray kernel entry and
    a missing one. The next attach puts the kernel back in line with the catalog."""
    ccxdp.run("attach", "lo", "--netns", bare_netns, "--mode", "generic")
    ccxdp.run("block", "add", "kept.test", "lost.test")
    dp = Datapath(ccxdp.pin_dir, ccxdp.state_dir)
    key = dp.hash_key()
    publish_entries(dp, {name_hash("kept.test", key): (shared.Action.DEFAULT, 0, 0),
                         12345: (shared.Action.DROP, 0, 0)})
    ccxdp.run("attach", "lo", "--netns", bare_netns)
    assert kernel_hashes(dp) == {name_hash("kept.test", key), name_hash("lost.test", key)}


@pytest.mark.root
def test_a_lookup_in_the_name_table_finds_what_the_program_finds(datapath):
    from ccxdp.datapath.nametable import NameTable

    dp, _ = datapath
    publish_entries(dp, {h: (A.NXDOMAIN, 0, h & 0xFF) for h in (5, 1 << 63, (1 << 64) - 1)})
    with NameTable(dp) as table:
        assert table.lookup(5) == (A.NXDOMAIN, 0, 5)
        assert table.lookup((1 << 64) - 1) == (A.NXDOMAIN, 0, 0xFF)
        assert table.lookup(1 << 63) == (A.NXDOMAIN, 0, 0)
        assert table.lookup(6) is None
