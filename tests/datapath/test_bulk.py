"""The bulk helper in C (ccxdp/datapath/bulk.c) against its pure-Python twins, on the same
inputs: each function must give exactly the same arrays."""

from __future__ import annotations

import random
from array import array

import pytest

from ccxdp.datapath import bulk, shared
from ccxdp.datapath.bulk import BulkError
from ccxdp.datapath.hashing import HashKey, name_hash


@pytest.fixture(scope="module")
def compiled():
    if bulk.lib() is None:
        pytest.fail("the C bulk helper did not build: scripts/setup.sh installs gcc")
    return bulk


def names(rng: random.Random, n: int) -> list[str]:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_"
    out = []
    for _ in range(n):
        labels = []
        for _ in range(rng.randint(1, 6)):
            size = rng.choice([1, 2, 7, 8, 9, 15, 16, 17, 63])
            labels.append("a" + "".join(rng.choice(alphabet) for _ in range(size - 1)))
        out.append(".".join(labels)[:253].strip(".-"))
    return [n.replace("..", ".a.") for n in out]


def test_hash_names_is_the_python_hash(compiled):
    rng = random.Random(1)
    key = HashKey.generate()
    some = names(rng, 2000) + ["a", "a.b", "x" * 63 + ".test", ".".join(["a"] * 127)]
    assert list(compiled.hash_names(some, key)) == [name_hash(n, key) for n in some]
    assert list(compiled.hash_names(some, key)) == list(
        compiled.hash_names(some, key, use_c=False))


def test_hash_names_refuses_what_is_not_a_name(compiled):
    key = HashKey.generate()
    for bad in ["a..b", "x" * 64 + ".test", ""]:
        with pytest.raises(BulkError, match="not a valid normalized name"):
            compiled.hash_names(["ok.test", bad], key)


def pairs(rng: random.Random, n: int, bits: int = 64) -> tuple[array, array]:
    keys = rng.sample(range(1 << bits), n) if bits < 64 else [rng.getrandbits(64)
                                                                for _ in range(n)]
    return array("Q", keys), array("Q", (rng.getrandbits(32) for _ in range(n)))


@pytest.mark.parametrize("n", [0, 1, 2, 1000, 70000])
def test_sort_pairs(compiled, n):
    h, v = pairs(random.Random(n), n)
    got = compiled.sort_pairs(h, v)
    assert got == compiled.sort_pairs(h, v, use_c=False)
    assert list(got[0]) == sorted(h)


def test_first_repeat(compiled):
    for h in ([], [5], [1, 2, 3], [1, 2, 2, 3, 3], [7, 7]):
        a = array("Q", h)
        assert compiled.first_repeat(a) == compiled.first_repeat(a, use_c=False)
    assert compiled.first_repeat(array("Q", [1, 2, 2])) == 2


NB = 65536  # the fewest buckets a table has (shared.NAME_BUCKETS_MIN)


def entries(rng: random.Random, n: int) -> tuple[array, array]:
    """n sorted, distinct hashes with values a slot can hold (action and flags 0-15)."""
    h = array("Q", sorted({rng.getrandbits(64) for _ in range(n)}))
    v = array("Q", (rng.randrange(9) | rng.randrange(16) << 8 | rng.randrange(1 << 16) << 16
                    for _ in h))
    return h, v


def metas(buf: bytes) -> list[int]:
    return list(buf[63::64])


# 0 to 3.5 names a bucket: at 3.5 a few hundred names live in their second bucket and some
# of them moved there to make room for another (evictions).
@pytest.mark.parametrize("n", [0, 1, 1000, 200_000, 229_376])
def test_build_buckets_c_and_python_agree_and_read_back(compiled, n):
    h, v = entries(random.Random(n), n)
    built = compiled.build_buckets(h, v, NB)
    assert len(built) == 64 * NB
    assert built == compiled.build_buckets(h, v, NB, use_c=False)
    assert compiled.read_buckets(built, NB) == (h, v)
    assert compiled.read_buckets(built, NB, use_c=False) == (h, v)
    m = metas(built)
    assert sum(x & 7 for x in m) == len(h)
    if n >= 200_000:  # spilled buckets exist, and every name is where a lookup looks
        assert sum(1 for x in m if x & shared.NB_SPILLED) > 10
        second = 0
        for x, val in zip(h, v, strict=True):
            found = bucket_lookup(built, x)
            assert found == val, hex(x)
            second += bulk.bucket_first(x, NB) != found_in
        assert second > 0


found_in = -1


def bucket_lookup(buf: bytes, x: int) -> int | None:
    """The value the program would find for hash x (ccxdp.bpf.c's lookup_name, in Python),
    noting in found_in the bucket it was found in."""
    global found_in
    first = bulk.bucket_first(x, NB)
    for nr, own in ((first, True), (bulk.bucket_second(x, first, NB), False)):
        b = shared.NameBucket.from_buffer_copy(buf[64 * nr : 64 * nr + 64])
        used, primary = b.meta & 7, (b.meta >> 3) & 7
        for at in range(primary) if own else range(primary, used):
            if b.tag_lo[at] == x & 0xFFFFFFFF and b.tag_hi[at] == (x >> 32) & 0xFFFF:
                found_in = nr
                return (b.what[at] & 15) | (b.what[at] >> 4) << 8 | b.category[at] << 16
        if not b.meta & shared.NB_SPILLED:
            return None
    return None


def test_a_hash_that_differs_only_in_bits_the_bucket_holds_is_not_found(compiled):
    h, v = entries(random.Random(5), 5000)
    built = compiled.build_buckets(h, v, NB)
    for x in h[:500]:
        # The same low 48 bits (what a slot stores) and another first bucket; or the same
        # first bucket and another tag.
        assert bucket_lookup(built, x ^ (1 << 63)) is None
        assert bucket_lookup(built, x ^ 1) is None


def test_filter_words(compiled):
    h, _ = entries(random.Random(8), 3000)
    words = compiled.filter_words(h, 1024)
    assert words == compiled.filter_words(h, 1024, use_c=False)
    for x in h:  # never "no" for a listed hash
        bits = (1 << (x & 63)) | (1 << ((x >> 6) & 63))
        assert words[bulk.bucket_first(x, 1024)] & bits == bits


def test_build_buckets_refuses_what_does_not_fit(compiled):
    h, v = entries(random.Random(6), 10)
    for use_c in (True, False):
        with pytest.raises(bulk.BucketError, match="does not fit a slot"):
            compiled.build_buckets(h, array("Q", [*v[:9], 16]), NB, use_c=use_c)
        with pytest.raises(bulk.BucketError, match="does not fit a slot"):
            compiled.build_buckets(h, array("Q", [*v[:9], 16 << 8]), NB, use_c=use_c)
    # More names than slots.
    h, v = entries(random.Random(7), 7 * 1024 + 1)
    assert len(h) == 7169
    for use_c in (True, False):
        with pytest.raises(bulk.BucketError, match="^7169 names do not fit 1024 buckets$"):
            compiled.build_buckets(h, v, 1024, use_c=use_c)


def test_merge_and_diff(compiled):
    rng = random.Random(3)
    cur_h, cur_v = compiled.sort_pairs(*pairs(rng, 5000, bits=16))
    gone = array("Q", sorted(rng.sample(list(cur_h), 700) + [1 << 20]))  # one not there
    add_h, add_v = compiled.sort_pairs(*pairs(rng, 900, bits=16))  # some already in cur
    got = compiled.merge(cur_h, cur_v, gone, add_h, add_v)
    assert got == compiled.merge(cur_h, cur_v, gone, add_h, add_v, use_c=False)
    expected = {h: v for h, v in zip(cur_h, cur_v, strict=True) if h not in set(gone)}
    expected.update(zip(add_h, add_v, strict=True))
    assert dict(zip(*got, strict=True)) == expected and list(got[0]) == sorted(expected)
    d = compiled.diff(cur_h, cur_v, *got)
    assert d == compiled.diff(cur_h, cur_v, *got, use_c=False)
    added, removed, changed = d
    assert {got[0][i] for i in added} == set(got[0]) - set(cur_h)
    assert {cur_h[i] for i in removed} == set(cur_h) - set(got[0])
    assert all(got[0][i] in set(cur_h) for i in changed)


def test_line_hashes(compiled):
    key = HashKey.generate()
    text = ("one\ntwo\r\n\n" + "x" * 63 + "\n" + "y" * 200 + "\nTwo\ntwo\n" + "z" * 126
            + "\nlast").encode()
    got = compiled.line_hashes(text, key)
    assert got == compiled.line_hashes(text, key, use_c=False)
    hashes, starts = got
    assert list(starts) == [0, 4, 9, 10, 74, 275, 279, 283, 410]
    assert hashes[1] == hashes[6], "a line's '\\r' does not count"
    assert hashes[5] == hashes[1], "ASCII case is folded, as in names"
    assert len(set(hashes)) == 7


def test_unique_and_join(compiled):
    rng = random.Random(6)
    h = array("Q", sorted(rng.randrange(300) for _ in range(1000)))
    v = array("Q", range(1000))
    got = compiled.unique(h, v)
    assert got == compiled.unique(h, v, use_c=False)
    assert list(got[0]) == sorted(set(h)) and all(h[p] == x for x, p in zip(*got, strict=True))
    assert all(p == min(i for i in range(1000) if h[i] == x) for x, p in zip(*got, strict=True))
    old = got[0]
    new = array("Q", sorted(rng.sample(range(400), 150)))
    joined = compiled.join(old, new)
    assert joined == compiled.join(old, new, use_c=False)
    assert all((old[p] == x) if p != bulk.NOT_FOUND else x not in set(old)
               for x, p in zip(new, joined, strict=True))


def test_unique_agreeing(compiled):
    h, v = array("Q", [1, 1, 2, 3, 3, 3]), array("Q", [7, 7, 8, 9, 9, 9])
    for nat in (True, False):
        assert compiled.unique_agreeing(h, v, use_c=nat) == (array("Q", [1, 2, 3]),
                                                              array("Q", [7, 8, 9]))
        assert compiled.unique_agreeing(h, array("Q", [7, 7, 8, 9, 9, 5]), use_c=nat) is None


def test_gather_sort_positions_split_join(compiled):
    rng = random.Random(8)
    src = array("Q", (rng.getrandbits(64) for _ in range(500)))
    idx = array("Q", (rng.randrange(500) for _ in range(800)))
    assert compiled.gather(src, idx) == compiled.gather(src, idx, use_c=False)
    assert list(compiled.gather(src, idx)) == [src[i] for i in idx]
    assert compiled.sort_positions(src) == compiled.sort_positions(src, use_c=False)
    keys = array("Q", sorted(rng.sample(range(1000), 300)))
    at = compiled.join(array("Q", sorted(rng.sample(range(1000), 300))), keys)
    first = array("Q", range(300))
    assert compiled.split_join(at, first, keys) == compiled.split_join(at, first, keys,
                                                                       use_c=False)


def test_gather_refuses_a_position_beyond_the_source(compiled):
    with pytest.raises(IndexError):
        compiled.gather(array("Q", [1, 2]), array("Q", [0, 2]))
