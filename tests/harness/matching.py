"""The match rule, as the XDP program applies it (tests/program/test_parity.py holds them equal).

The most specific matching entry decides: an exact entry matches only its own name, a subtree
entry its name and every name below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from ccxdp.datapath.hashing import HashKey, suffix_hashes


class HasSubtree(Protocol):
    subtree: bool


E = TypeVar("E", bound=HasSubtree)


def decide(wire: bytes, key: HashKey, entries: Mapping[int, E]) -> E | None:
    """The entry that decides for a wire-form name, or None when nothing matches."""
    for depth, h in enumerate(suffix_hashes(wire, key)):  # whole name first
        entry = entries.get(h)
        if entry is not None and (depth == 0 or entry.subtree):
            return entry
    return None


def decide_entry(wire: bytes, key: HashKey, flags: Mapping[int, int]) -> tuple[int, bool] | None:
    """With the kernel's entry flags ({hash: CCXDP_ENTRY_* bits}): (hash of the deciding
    entry, whether it allows) for a wire-form name, or None when nothing matches. An entry
    applies to its own name unless NOT_SELF, to the names below it only with SUBTREE; at the
    name ALLOW_NAME, below it ALLOW_BELOW make the match an allow."""
    from ccxdp.datapath.shared import (
        ENTRY_ALLOW_BELOW,
        ENTRY_ALLOW_NAME,
        ENTRY_NOT_SELF,
        ENTRY_SUBTREE,
    )

    for depth, h in enumerate(suffix_hashes(wire, key)):  # whole name first
        f = flags.get(h)
        if f is None:
            continue
        if depth == 0:
            if not f & ENTRY_NOT_SELF:
                return h, bool(f & ENTRY_ALLOW_NAME)
        elif f & ENTRY_SUBTREE:
            return h, bool(f & ENTRY_ALLOW_BELOW)
    return None
