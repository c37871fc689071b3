"""The bloom pre-filter over listed name hashes, laid out as bpf/maps.h describes.

It only ever answers "certainly not listed" or "maybe": a name's bits are set before the name
enters the kernel's name map, and bits are cleared only by a rebuild from what the catalog
holds, so it never hides a listed name. Stale bits of removed names only cost a lookup.
"""

from __future__ import annotations

import array
from collections.abc import Iterable

from . import bpfsys


def slot(h: int, words_log2: int) -> tuple[int, int]:
    """(word index, bit mask) of one name hash."""
    return h >> (64 - words_log2), (1 << (h & 63)) | (1 << ((h >> 6) & 63))


def words_log2(bloom: bpfsys.Map) -> int:
    n = bloom.info.max_entries
    if n & (n - 1):
        raise ValueError(f"bloom map holds {n} words, not a power of two")
    return n.bit_length() - 1


def add(bloom: bpfsys.Map, hashes: Iterable[int]) -> None:
    """Set the bits of hashes (read, OR, write back only the words that change)."""
    log2 = words_log2(bloom)
    wanted: dict[int, int] = {}
    for h in hashes:
        index, mask = slot(h, log2)
        wanted[index] = wanted.get(index, 0) | mask
    if not wanted:
        return
    if len(wanted) > bloom.info.max_entries // 8:
        current = _read_all(bloom)
        updates = {i: current[i] | m for i, m in wanted.items() if current[i] | m != current[i]}
    else:
        updates = {}
        for i, m in wanted.items():
            old = bloom.lookup(i).value
            if old | m != old:
                updates[i] = old | m
    if updates:
        bloom.update_batch(list(updates), list(updates.values()))


def rebuild(bloom: bpfsys.Map, hashes: Iterable[int]) -> None:
    """Rewrite the whole filter from exactly these hashes. Each word is written once with a
    superset of the bits its listed names need, so no listed name is missed meanwhile."""
    log2 = words_log2(bloom)
    words = array.array("Q", bytes(8 * bloom.info.max_entries))
    for h in hashes:
        index, mask = slot(h, log2)
        words[index] |= mask
    current = _read_all(bloom)
    changed = [i for i in range(len(words)) if words[i] != current[i]]
    if changed:
        bloom.update_batch(changed, [words[i] for i in changed])


def _read_all(bloom: bpfsys.Map) -> array.array:
    words = array.array("Q", bytes(8 * bloom.info.max_entries))
    for k, v in bloom.lookup_batch():
        words[k.value] = v.value
    return words
