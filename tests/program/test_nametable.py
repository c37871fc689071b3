"""The program's lookups in the name table's buckets through BPF_PROG_TEST_RUN, where the
table is at its least common: names whose first bucket overflowed, so that the program must
read their second bucket, and unlisted names that share the overflowed bucket."""

from __future__ import annotations

from collections import defaultdict

import pytest

from ccxdp.datapath import bulk, libbpf, shared
from ccxdp.datapath.nametable import NameTable, TableError
from ccxdp.hits.stats import read_stats
from tests.conftest import set_entries
from tests.harness.frames import query, udp4

pytestmark = pytest.mark.root

XDP_DROP, XDP_PASS = 1, 2


def crowded_names(dp, buckets: int, want: int) -> list[tuple[str, int]]:
    """want names (with their hashes, in hash order) whose first bucket is the same, under
    this datapath's key: with 3 names a bucket on average, about 1% of buckets get 8."""
    key = dp.hash_key()
    names = [f"host{i}.crowd.test" for i in range(4 * buckets)]
    by_bucket = defaultdict(list)
    for name, h in zip(names, bulk.hash_names(names, key), strict=True):
        by_bucket[bulk.bucket_first(h, buckets)].append((h, name))
    crowd = max(by_bucket.values(), key=len)
    assert len(crowd) >= want, len(crowd)
    return [(n, h) for h, n in sorted(crowd)[:want]]


def verdict(fd: int, name: str) -> int:
    return libbpf.prog_test_run(fd, udp4(query(name))).retval


def test_names_in_their_second_bucket_are_found_and_their_neighbours_are_not(datapath):
    dp, fd = datapath
    with NameTable(dp) as table:
        buckets = table.buckets
    crowd = crowded_names(dp, buckets, shared.NAME_BUCKET_SLOTS + 3)
    listed, unlisted = crowd[: shared.NAME_BUCKET_SLOTS + 2], crowd[shared.NAME_BUCKET_SLOTS + 2:]
    set_entries(dp, {h: (0, 7) for _, h in listed})
    with NameTable(dp) as table:
        first = bulk.bucket_first(listed[0][1], buckets)
        assert all(table.lookup(h) == (shared.Action.DROP, 0, 7) for _, h in listed)
        # The bucket is full of its own names and says that two went to their second bucket.
        view = table._buffer(table.active())
        meta = view[64 * first + 63]
        view.release()
    assert meta == shared.NAME_BUCKET_SLOTS | shared.NAME_BUCKET_SLOTS << 3 | shared.NB_SPILLED

    before = read_stats(dp).outcomes
    assert [verdict(fd, n) for n, _ in listed] == [XDP_DROP] * len(listed)
    assert [verdict(fd, n) for n, _ in unlisted] == [XDP_PASS] * len(unlisted)
    after = read_stats(dp).outcomes
    assert after["blocked"] - before["blocked"] == len(listed)
    assert after["passed"] - before["passed"] == len(unlisted)


def test_a_full_table_is_refused_without_change(datapath):
    dp, _ = datapath
    with NameTable(dp) as table:
        capacity = table.capacity
    set_entries(dp, {5: (0, 1)})
    with pytest.raises(TableError, match=f"{capacity + 1} names do not fit the kernel's name "
                                        f"table, which holds {capacity}"):
        set_entries(dp, {h: (0, 1) for h in range(1, capacity + 2)})
    with NameTable(dp) as table:
        assert table.count() == 1 and table.lookup(5) == (shared.Action.DROP, 0, 1)
