"""Catalog and kernel change together or not at all."""

from __future__ import annotations

import ctypes as ct

import pytest

from ccxdp import layout
from ccxdp.blocklist import kernel_entries
from ccxdp.catalog import ALLOW, Catalog, CatalogEntry, CatalogError
from ccxdp.datapath import Datapath, Limits
from ccxdp.hashing import name_hash


def test_catalog_refuses_a_second_name_with_the_same_hash(tmp_path):
    with Catalog(tmp_path / "c.db") as c:
        c.upsert([CatalogEntry("evil.test", 42, False)])
        with pytest.raises(CatalogError, match="'bad.test' hashes like the listed 'evil.test'"):
            c.upsert([CatalogEntry("bad.test", 42, True)])
        assert [e.name for e in c.entries()] == ["evil.test"]


def test_catalog_keeps_unsigned_64_bit_hashes(tmp_path):
    with Catalog(tmp_path / "c.db") as c:
        c.upsert([CatalogEntry("big.test", (1 << 64) - 1, True)])
        assert c.get("big.test").hash == (1 << 64) - 1


def test_kernel_entries_hold_one_value_per_name_and_the_allow_wins(tmp_path):
    """What the kernel should hold is a function of the catalog alone: changes write it for
    the names they touch, reconcile for all names."""
    A = layout.Action
    with Catalog(tmp_path / "c.db") as c:
        emotet = c.category_id("emotet")
        c.upsert([
            CatalogEntry("both.test", 1, False, "refused", emotet),
            CatalogEntry("both.test", 1, True, "allow", kind=ALLOW),
            CatalogEntry("block.test", 2, True, "default"),
            CatalogEntry("sink.test", 3, False, "sinkhole", emotet),
            CatalogEntry("allow.test", 4, False, "allow", kind=ALLOW),
        ])
        got = {h: (v.action, v.flags, v.category) for h, v in kernel_entries(c).items()}
        assert got == {
            1: (A.ALLOW, layout.ENTRY_SUBTREE, 0),
            2: (A.DEFAULT, layout.ENTRY_SUBTREE, 0),
            3: (A.SINKHOLE, 0, emotet),
            4: (A.ALLOW, 0, 0),
        }
        c.remove(["both.test"], ALLOW)
        some = kernel_entries(c, ["both.test", "gone.test"])
        assert {h: (v.action, v.category) for h, v in some.items()} == {1: (A.REFUSED, emotet)}


def test_a_name_may_be_both_blocked_and_allowed_but_not_share_a_hash(tmp_path):
    with Catalog(tmp_path / "c.db") as c:
        c.upsert([CatalogEntry("a.test", 7, False), CatalogEntry("a.test", 7, False,
                                                                  "allow", kind=ALLOW)])
        with pytest.raises(CatalogError, match="'b.test' hashes like the listed 'a.test'"):
            c.upsert([CatalogEntry("b.test", 7, False, "allow", kind=ALLOW)])
        assert [(e.name, e.kind) for e in c.entries(kind=None)] == [("a.test", "allow"),
                                                                    ("a.test", "block")]


@pytest.fixture
def small(tmp_path, ccxdp):
    """The program loaded (not attached) with room for 4 names, used through the real CLI."""
    dp = Datapath(ccxdp.pin_dir, ccxdp.state_dir)
    with dp:
        from ccxdp import bpfsys

        bpfsys.close(dp.load(Limits(max_names=4, max_sources=16)))
    return ccxdp, dp


def kernel_hashes(dp) -> set[int]:
    with dp.open_map(layout.MAP_NAMES) as m:
        return {k.value for k in m.keys()}


@pytest.mark.root
def test_full_name_map_changes_nothing(small):
    cli, dp = small
    cli.run("block", "add", "a.test", "b.test", "c.test")
    key = dp.hash_key()
    before = {name_hash(n, key) for n in ("a.test", "b.test", "c.test")}
    assert kernel_hashes(dp) == before

    cp = cli.run("block", "add", "d.test", "e.test", check=False)

    assert cp.returncode == 1
    assert "nothing was changed" in cp.stderr and "at most 4" in cp.stderr
    assert "Traceback" not in cp.stderr
    assert [e["name"] for e in cli.json("block", "list")] == ["a.test", "b.test", "c.test"]
    assert kernel_hashes(dp) == before


@pytest.mark.root
def test_update_of_an_existing_entry_and_remove(small):
    cli, dp = small
    assert cli.json("block", "add", "a.test") == [
        {"name": "a.test", "status": "added", "subtree": False, "action": "default",
         "category": None}
    ]
    assert cli.json("block", "add", "A.TEST.", "--subtree") == [
        {"name": "a.test", "status": "updated", "subtree": True, "action": "default",
         "category": None}
    ]
    with dp.open_map(layout.MAP_NAMES) as m:
        entry = m.lookup(ct.c_uint64(name_hash("a.test", dp.hash_key())))
    # No --action: the configured default action decides at query time.
    assert (entry.action, entry.flags, entry.category) == (layout.Action.DEFAULT, 1, 0)
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
    with dp.open_map(layout.MAP_NAMES) as m:
        m.delete(ct.c_uint64(name_hash("lost.test", key)))
        m.update(ct.c_uint64(12345), layout.Entry(layout.Action.DROP, 0, 0))
    ccxdp.run("attach", "lo", "--netns", bare_netns)
    assert kernel_hashes(dp) == {name_hash("kept.test", key), name_hash("lost.test", key)}
