"""catalog.db gives its room back when a big feed goes (VACUUM when a quarter of the file
or more, and 8 MiB or more, is free), through the real CLI, and keeps every other name; a
small removal leaves the file as it is (a VACUUM rewrites the whole file)."""

from __future__ import annotations

import pytest

from tests.cli.test_policy import Policy

pytestmark = pytest.mark.root

BIG = 200_000


@pytest.fixture
def policy(ccxdp, bare_netns) -> Policy:
    p = Policy(ccxdp, bare_netns)
    p.attach()
    return p


def on_disk(policy: Policy) -> int:
    """The catalog's bytes: the file and its WAL (where recent pages wait)."""
    path = policy.dp.catalog_path
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def test_a_big_feed_gone_gives_the_room_back(policy, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("".join(f"keep{i}.evil.test\n" for i in range(10)))
    big = tmp_path / "big.txt"
    big.write_text("".join(f"n{i}.c2.bad.test\n" for i in range(BIG)))
    policy.cli.run("feed", "add", "keep", str(keep))
    small = policy.dp.catalog_path.stat().st_size
    policy.cli.run("feed", "add", "big", str(big))
    grown = on_disk(policy)
    assert grown > 8 * small

    policy.cli.run("feed", "remove", "big")
    shrunk = on_disk(policy)
    print(f"catalog.db: {small:,} B with 10 names, {grown:,} B with {BIG:,} more, "
          f"{shrunk:,} B after that feed went")
    assert shrunk * 4 < grown
    assert sorted(e["name"] for e in policy.cli.json("block", "list")) == sorted(
        f"keep{i}.evil.test" for i in range(10))
    assert policy.entry("keep3.evil.test") is not None
    assert policy.entry("n7.c2.bad.test") is None

    # A small feed gone frees too little to be worth a rewrite: the file stays as it is.
    before = policy.dp.catalog_path.stat().st_size
    policy.cli.run("feed", "remove", "keep")
    assert policy.dp.catalog_path.stat().st_size == before
