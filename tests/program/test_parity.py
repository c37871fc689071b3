"""The hash and the match rule exist in C (bpf/dns.h) and in Python (ccxdp/datapath/hashing.py,
tests/harness/matching.py). Here the real program judges many names through BPF_PROG_TEST_RUN and
must agree with the Python prediction on every one."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from ccxdp.datapath import bulk, libbpf, shared
from ccxdp.datapath.hashing import HashKey, name_hash, suffix_hashes
from ccxdp.hits.stats import read_stats
from ccxdp.policy.names import to_wire, wire_labels
from tests.conftest import clear_entries, publish_entries, set_entries
from tests.harness.frames import query, raw_wire, udp4, udp6
from tests.harness.matching import decide, decide_entry

pytestmark = pytest.mark.root

XDP_DROP, XDP_PASS = 1, 2
# Bytes a label may hold on the wire: anything but nothing; '.' and upper case included.
LABEL_BYTES = bytes(range(1, 256))
HOSTNAME_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


@dataclass(frozen=True)
class E:
    subtree: bool


def random_wire(rng: random.Random, labels: int, budget: int = 254) -> bytes:
    """A wire-form name of `labels` labels whose lengths fill up to `budget` bytes."""
    lengths = [1] * labels
    spare = budget - 2 * labels
    while spare > 0:
        i = rng.randrange(labels)
        if lengths[i] < 63:
            grow = min(spare, 63 - lengths[i], rng.randint(1, 20))
            lengths[i] += grow
            spare -= grow
        if rng.random() < 0.05:
            break
    out = b""
    for n in lengths:
        alphabet = LABEL_BYTES if rng.random() < 0.3 else HOSTNAME_BYTES
        out += bytes([n]) + bytes(rng.choice(alphabet) for _ in range(n))
    return out + b"\0"


def names_to_judge() -> list[bytes]:
    rng = random.Random(20261127)
    names = [random_wire(rng, n) for n in range(1, 128)]  # every label count, max length
    names += [random_wire(rng, rng.randint(1, 40), rng.randint(4, 254)) for _ in range(300)]
    names += [to_wire("x" * 63 + ".test"), to_wire("a.b"), to_wire("a" * 8 + "." + "b" * 16)]
    return names


def flip_case(wire: bytes, rng: random.Random) -> bytes:
    labels = wire_labels(wire)
    out = b""
    for label in labels:
        out += bytes([len(label)]) + bytes(
            c ^ 0x20 if chr(c).isascii() and chr(c).isalpha() and rng.random() < 0.5 else c
            for c in label
        )
    return out + b"\0"


def test_the_c_bulk_hash_is_the_python_hash_of_every_dotted_name():
    """The control plane hashes feeds with bulk.c, which compiles bpf/name_hash.h, the
    XDP program's own arithmetic; the tests below hold Python and the XDP program equal."""
    key = HashKey.generate()
    allowed = set(HOSTNAME_BYTES)
    dotted = [".".join(label.decode() for label in wire_labels(w)) for w in names_to_judge()
              if all(set(label) <= allowed for label in wire_labels(w))]
    rng = random.Random(5)
    dotted += [".".join("".join(rng.choice("abcXYZ019-_") for _ in range(rng.choice(
        [1, 7, 8, 9, 16, 63]))) for _ in range(rng.randint(1, 3))) for _ in range(500)]
    assert len(dotted) > 500
    assert list(bulk.hash_names(dotted, key)) == [
        suffix_hashes(to_wire(n), key)[0] for n in dotted]


def test_python_hash_is_case_insensitive_and_keyed():
    k1, k2 = HashKey.generate(), HashKey.generate()
    assert name_hash("evil.test", k1) == suffix_hashes(to_wire("EVIL.test"), k1)[0]
    assert name_hash("evil.test", k1) != name_hash("evil.test", k2)
    assert suffix_hashes(to_wire("a.evil.test"), k1)[1:] == suffix_hashes(to_wire("evil.test"), k1)
    # zero padding of the last word must not make "a" and "a\0" collide: the length byte is hashed
    assert suffix_hashes(b"\x01a\x00", k1) != suffix_hashes(b"\x02a\x00\x00", k1)


# Near-twins that collided for about half of all keys under an earlier, unkeyed-in-effect
# per-word step (a multiply's top-bit difference does not depend on the key).
TWINS = [
    ("abcdef1ghijklmn.example.com", "abcdefqghibklmn.example.com"),
    ("abcdef1ghi0klmn.example", "abcdefqghi8klmn.example"),
    ("abcdefaghijklmn.example", "abcdef\xe1ghizklmn.example"),
]


@pytest.mark.parametrize("listed, twin", TWINS)
def test_crafted_twins_do_not_collide_under_any_key(listed, twin):
    for _ in range(2000):
        key = HashKey.generate()
        assert suffix_hashes(raw_wire(listed), key)[0] != suffix_hashes(raw_wire(twin), key)[0]


@pytest.mark.parametrize("listed, twin", TWINS)
def test_crafted_twin_of_a_listed_name_passes(datapath, listed, twin):
    dp, fd = datapath
    set_entries(dp, {suffix_hashes(raw_wire(listed), dp.hash_key())[0]: (0, 0)})
    assert libbpf.prog_test_run(fd, udp4(query(raw_wire(listed)))).retval == XDP_DROP
    assert libbpf.prog_test_run(fd, udp4(query(raw_wire(twin)))).retval == XDP_PASS


def test_c_and_python_agree_on_every_suffix(datapath):
    dp, fd = datapath
    key = dp.hash_key()
    rng = random.Random(7)
    for wire in names_to_judge():
        hashes = suffix_hashes(wire, key)
        depth = rng.randrange(len(hashes))
        subtree = rng.random() < 0.5
        entries = {hashes[depth]: E(subtree)}
        expected = XDP_DROP if decide(wire, key, entries) else XDP_PASS
        assert expected == (XDP_DROP if depth == 0 or subtree else XDP_PASS)
        set_entries(dp, {hashes[depth]: (shared.ENTRY_SUBTREE if subtree else 0, 0)})
        asked = flip_case(wire, rng)
        frame = udp4(query(asked)) if rng.random() < 0.5 else udp6(query(asked))
        got = libbpf.prog_test_run(fd, frame).retval
        assert got == expected, (
            f"C and Python disagree on {wire!r} ({len(wire)} bytes, {len(hashes)} labels): "
            f"entry at depth {depth}, subtree={subtree}"
        )
        # A one-bit change of the hash must never match: the C really compares the hash.
        clear_entries(dp)
        set_entries(dp, {hashes[depth] ^ 1: (shared.ENTRY_SUBTREE, 0)})
        assert libbpf.prog_test_run(fd, frame).retval == XDP_PASS
        clear_entries(dp)


def test_random_entry_sets_decide_as_python_predicts(datapath):
    """Several entries at once (exact and subtree at different depths, each with its own
    category): the kernel blocks exactly when Python's rule says so, and charges the
    category of the entry Python says decides."""
    dp, fd = datapath
    key = dp.hash_key()
    rng = random.Random(99)
    for n, wire in enumerate(names_to_judge()[:150]):
        hashes = suffix_hashes(wire, key)
        chosen = rng.sample(range(len(hashes)), k=min(len(hashes), rng.randint(1, 4)))
        entries = {hashes[d]: E(rng.random() < 0.5) for d in chosen}
        categories = {h: 100 + i for i, h in enumerate(entries)}
        clear_entries(dp)
        with dp.open_map(shared.MAP_SOURCES) as m:
            for k in list(m.keys()):
                m.delete(k)
        set_entries(dp, {h: (shared.ENTRY_SUBTREE if e.subtree else 0, categories[h])
                         for h, e in entries.items()})
        winner = decide(wire, key, entries)
        got = libbpf.prog_test_run(fd, udp4(query(wire))).retval
        assert got == (XDP_DROP if winner else XDP_PASS), f"name {n}: {wire!r}"
        charged = {s.category for s in read_stats(dp).sources}
        if winner is None:
            assert charged == set()
        else:
            (h,) = [h for h, e in entries.items() if e is winner]
            assert charged == {categories[h]}, f"name {n}: the most specific entry decides"


def test_every_flag_combination_decides_as_python_predicts(datapath):
    """Entries with any mix of SUBTREE, NOT_SELF, ALLOW_NAME and ALLOW_BELOW (RPZ's
    "*.name", allow entries on blocked names) at random depths: the kernel drops, allows or
    passes exactly as matching.decide_entry says."""
    dp, fd = datapath
    key = dp.hash_key()
    rng = random.Random(2026)
    for n, wire in enumerate(names_to_judge()[:120]):
        hashes = suffix_hashes(wire, key)
        chosen = rng.sample(range(len(hashes)), k=min(len(hashes), rng.randint(1, 3)))
        flags = {hashes[d]: rng.randrange(16) for d in chosen}
        publish_entries(dp, {h: (shared.Action.DROP, f, 7) for h, f in flags.items()})
        before = read_stats(dp).outcomes
        got = libbpf.prog_test_run(fd, udp4(query(wire))).retval
        after = read_stats(dp).outcomes
        decided = decide_entry(wire, key, flags)
        if decided is None:
            expected, outcome = XDP_PASS, "passed"
        elif decided[1]:
            expected, outcome = XDP_PASS, "allowed"
        else:
            expected, outcome = XDP_DROP, "blocked"
        assert got == expected, f"name {n}: {wire!r} flags {flags}"
        assert after[outcome] == before[outcome] + 1, f"name {n}: counted as {outcome}"


def test_most_specific_entry_decides(datapath):
    """An exact entry for the whole name beats a subtree entry above it, and the Python rule
    returns the same entry."""
    dp, fd = datapath
    key = dp.hash_key()
    wire = to_wire("a.b.evil.test")
    hashes = suffix_hashes(wire, key)
    entries = {hashes[2]: E(True), hashes[0]: E(False)}
    assert decide(wire, key, entries) is entries[hashes[0]]
    set_entries(dp, {hashes[2]: (shared.ENTRY_SUBTREE, 3), hashes[0]: (0, 5)})
    assert libbpf.prog_test_run(fd, udp4(query("a.b.evil.test"))).retval == XDP_DROP
    cats = {s.category for s in read_stats(dp).sources}
    assert cats == {5}
