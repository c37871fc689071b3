"""The bulk helper in C (ccxdp/datapath/bulk.c) against its pure-Python twins, on the same
inputs: each function must give exactly the same arrays."""

from __future__ import annotations

import random
from array import array

import pytest

from ccxdp.datapath import bulk
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


@pytest.mark.parametrize("n, bits", [(0, 4), (1, 4), (5000, 10), (3000, 4)])
def test_build_ranges(compiled, n, bits):
    h, _ = pairs(random.Random(bits), n)
    h = array("Q", sorted(h))
    ranges, longest = compiled.build_ranges(h, bits)
    assert (ranges, longest) == compiled.build_ranges(h, bits, use_c=False)
    for r in range(1 << bits):
        start, end = ranges[r] & 0xFFFFFFFF, ranges[r] >> 32
        assert all(x >> (64 - bits) == r for x in h[start:end])
    assert (ranges[-1] >> 32) == n


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


def test_bloom_words(compiled):
    h, _ = pairs(random.Random(4), 3000)
    assert compiled.bloom_words(h, 10) == compiled.bloom_words(h, 10, use_c=False)


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
