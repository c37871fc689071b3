"""The match rule, as the XDP program applies it (tests/test_parity.py holds them equal).

The most specific matching entry decides: an exact entry matches only its own name, a subtree
entry its name and every name below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from .hashing import HashKey, suffix_hashes


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
