"""Listing changes: sources' listings, the catalog's entries and the kernel's name table
changed together, or not at all.

Every change, from ``block add`` of one name to a million-name feed sync, goes through
``apply``: given new listings for some sources, it derives what each kind's effective list
becomes (the manual source wins, then feeds in the order they were added), updates the
entries table by the difference, and publishes the kernel list that follows from the
effective lists (``kernel_list``) as one atomic swap (nametable.py). What the kernel holds is
a function of the listings alone, so ``reconcile`` (run at every attach) and ``apply`` cannot
disagree. A failure anywhere (a hash collision, a full table) rolls the catalog back before
the kernel was touched, or leaves the kernel on its old list.
"""

from __future__ import annotations

import bisect
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import filterfalse, repeat

from ccxdp.datapath import bulk, shared
from ccxdp.datapath.hashing import HashKey
from ccxdp.datapath.loader import Datapath
from ccxdp.datapath.nametable import NameTable
from ccxdp.datapath.settings import parse_action
from ccxdp.errors import CcxdpError, InvalidNameError
from ccxdp.policy.catalog import (
    ALLOW,
    BLOCK,
    KINDS,
    MATCHES,
    Catalog,
    Listing,
    normalize_category,
    pack,
    signed,
    unpack,
    unsigned,
)
from ccxdp.policy.names import is_ip_literal, is_top_level, normalize

MANUAL_ID = 1


@dataclass(frozen=True)
class Change:
    name: str
    status: str  # "added", "updated", "unchanged", "removed", "not listed"
    match: str | None = None
    action: str | None = None  # block entries: "default" or an action name
    category: str | None = None  # block entries: the category's name

    @property
    def subtree(self) -> bool | None:
        return None if self.match is None else self.match == "subtree"


@dataclass
class Applied:
    """What one apply changed in the effective lists, per kind."""

    added: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    changed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    kernel_names: int | None = None  # names in the kernel's live list after, if loaded


def canonical_action(action: str) -> str:
    """An action as the catalog stores it: "default", or the kernel's name for it."""
    return action if action == "default" else parse_action(action)


# -- what the kernel holds -------------------------------------------------------------------
def effective(listings: dict[tuple[int, str], Listing], kind: str) -> Listing:
    """One kind's effective list: every source's listing, the earlier source giving a name
    its action and category, and the broadest of the sources' matches (one feed listing a
    name exactly must not narrow another's block of its whole subtree: the C&C host is
    often below the listed name)."""
    out = Listing.empty()
    none = array("Q")
    listed = []
    for sid in sorted({sid for sid, k in listings if k == kind}, reverse=True):
        lst = listings[(sid, kind)]
        if len(lst):
            out = Listing(*bulk.merge(out.hashes, out.values, none, lst.hashes, lst.values))
            listed.append(lst)
    if len(listed) > 1:
        _broaden(out, listed)
    return out


_MATCH_FLAGS = shared.ENTRY_SUBTREE | shared.ENTRY_NOT_SELF


def _broaden(out: Listing, listed: list[Listing]) -> None:
    """Give each name several sources list the union of what they cover: the name itself
    (any without ENTRY_NOT_SELF) and the names below it (any with ENTRY_SUBTREE). Only
    names listed twice are looked at; the largest listing is searched, not copied."""
    # Sources that all cover alike (several exact-only lists, several subtree-only ones: the
    # usual case) cannot broaden each other: set() of the values runs at C speed.
    if len({_cover(v) for lst in listed for v in set(lst.values)}) == 1:
        return
    listed = sorted(listed, key=len)
    largest, others = listed[-1], listed[:-1]
    seen: dict[int, int] = {}  # hash -> OR of (covers self, covers below) bits, so far
    twice: set[int] = set()
    for lst in others:
        for h, v in zip(lst.hashes, lst.values, strict=True):
            cover = _cover(v)
            if h in seen:
                twice.add(h)
            seen[h] = seen.get(h, 0) | cover
    hashes = largest.hashes
    for h in list(seen):
        i = bisect.bisect_left(hashes, h)
        if i < len(hashes) and hashes[i] == h:
            seen[h] |= _cover(largest.values[i])
            twice.add(h)
    for h in twice:
        i = bisect.bisect_left(out.hashes, h)
        value = out.values[i]
        cover = seen[h]
        flags = (shared.ENTRY_SUBTREE if cover & 2 else 0) | (
            0 if cover & 1 else shared.ENTRY_NOT_SELF)
        out.values[i] = value & ~(_MATCH_FLAGS << 8) | flags << 8


def _cover(value: int) -> int:
    """What a listing value covers: bit 0 the name itself, bit 1 the names below it."""
    flags = (value >> 8) & 0xFF
    return (0 if flags & shared.ENTRY_NOT_SELF else 1) | (2 if flags & shared.ENTRY_SUBTREE
                                                          else 0)


def combine(block_value: int, allow_value: int) -> int:
    """The kernel entry of a name both blocked and allowed. Per part of the name's tree (the
    name itself, the names below it), an allow entry that covers it beats a block entry of
    the same name."""
    b_action, b_flags, category = shared.unpack_entry(block_value)
    _, a_flags, _ = shared.unpack_entry(allow_value)

    def covers(flags: int) -> tuple[bool, bool]:  # (the name itself, the names below)
        return not flags & shared.ENTRY_NOT_SELF, bool(flags & shared.ENTRY_SUBTREE)

    (b_self, b_below), (a_self, a_below) = covers(b_flags), covers(a_flags)
    if not (b_self and not a_self) and not (b_below and not a_below):
        return allow_value  # nothing is left blocked: a plain allow entry
    flags = 0
    if not (a_self or b_self):
        flags |= shared.ENTRY_NOT_SELF
    if a_below or b_below:
        flags |= shared.ENTRY_SUBTREE
    if a_self:
        flags |= shared.ENTRY_ALLOW_NAME
    if a_below:
        flags |= shared.ENTRY_ALLOW_BELOW
    return shared.pack_entry(b_action, flags, category)


def kernel_list(block: Listing, allow: Listing) -> tuple[array, array]:
    """(hashes, values) the kernel's table should hold: one value per name hash."""
    values = array("Q", allow.values)
    for i, h in enumerate(allow.hashes):
        j = bisect.bisect_left(block.hashes, h)
        if j < len(block.hashes) and block.hashes[j] == h:
            values[i] = combine(block.values[j], allow.values[i])
    return bulk.merge(block.hashes, block.values, array("Q"), allow.hashes, values)


def listing_from(entries: dict[int, int]) -> Listing:
    """A listing from {hash: packed value}."""
    hashes = array("Q", entries.keys())
    values = array("Q", entries.values())
    return Listing(*bulk.sort_pairs(hashes, values))


# -- the one way listings change -------------------------------------------------------------
def apply(
    dp: Datapath,
    catalog: Catalog,
    changes: dict[tuple[int, str], Listing],
    names: dict[int, str],
) -> Applied:
    """Give sources new listings. ``names`` holds {hash: name} for every hash a new listing
    adds to its source; a hash the catalog lists already under another name is refused."""
    result = Applied()
    with catalog.transaction():
        before = catalog.listings()
        after = dict(before)
        after.update(changes)
        old = {k: effective(before, k) for k in KINDS}
        new = {k: effective(after, k) for k in KINDS}
        _check_collisions(catalog, before, changes, old, names)
        for kind in KINDS:
            added, removed, changed = bulk.diff(
                old[kind].hashes, old[kind].values, new[kind].hashes, new[kind].values)
            n, o = new[kind], old[kind]
            catalog.unlist_entries(kind, (o.hashes[i] for i in removed))
            stamp = int(time.time())
            for positions in (added, changed):
                # Rows in hash order (the lists are sorted), built by C-level iteration: a
                # million new names must not cost a million Python steps.
                if len(positions) == len(n):
                    hashes, values = n.hashes, n.values
                else:
                    hashes = array("Q", map(n.hashes.__getitem__, positions))
                    values = array("Q", map(n.values.__getitem__, positions))
                # Names come with the change, or from the catalog for an entry another
                # source gives now.
                missing = list(filterfalse(names.__contains__, hashes))
                known = catalog.names_of(missing) if missing else {}
                lookup_name = names.__getitem__ if not known else (
                    lambda h, known=known: names.get(h) or known[h])
                catalog.upsert_entries(kind, zip(
                    array("q", hashes.tobytes()), map(lookup_name, hashes), values,
                    repeat(stamp)))
            result.added[kind] = len(added)
            result.removed[kind] = len(removed)
            result.changed[kind] = len(changed)
        for (sid, kind), listing in changes.items():
            catalog.set_listing(sid, kind, listing)
        if dp.is_loaded():
            hashes, values = kernel_list(new[BLOCK], new[ALLOW])
            with NameTable(dp) as table:
                table.publish(hashes, values)
            result.kernel_names = len(hashes)
    return result


def _check_collisions(
    catalog: Catalog,
    before: dict[tuple[int, str], Listing],
    changes: dict[tuple[int, str], Listing],
    old: dict[str, Listing],
    names: dict[int, str],
) -> None:
    """A hash a source newly lists that the catalog already holds must be the same name."""
    suspects = []
    if not any(len(lst) for lst in old.values()):
        return  # nothing listed before: nothing to collide with
    for key, listing in changes.items():
        prior = before.get(key, Listing.empty())
        fresh, _, _ = bulk.diff(prior.hashes, prior.values, listing.hashes, listing.values)
        fresh_h = array("Q", (listing.hashes[i] for i in fresh))
        for kind in KINDS:
            missing, _, _ = bulk.diff(
                old[kind].hashes, old[kind].hashes, fresh_h, fresh_h)
            absent = set(missing)
            suspects += [fresh_h[i] for i in range(len(fresh_h)) if i not in absent]
    if not suspects:
        return
    listed = catalog.names_of(suspects)
    for h in suspects:
        if h in listed and h in names and listed[h] != names[h]:
            raise CcxdpError(
                f"{names[h]!r} hashes like the listed {listed[h]!r}; refusing to list both "
                "(nothing was changed)"
            )


def hash_entries(names: Sequence[str], key: HashKey) -> tuple[array, dict[int, str]]:
    """The hashes of distinct normalized names, and {hash: name}; two names with one hash
    are refused loudly (the keyed hash makes that astronomically rare)."""
    hashes = bulk.hash_names(names, key)
    by_hash = dict(zip(hashes, names, strict=True))
    if len(by_hash) != len(names):
        seen: dict[int, str] = {}
        for h, n in zip(hashes, names, strict=True):
            if h in seen and seen[h] != n:
                raise CcxdpError(f"{n!r} hashes like {seen[h]!r}; refusing to list both")
            seen[h] = n
    return hashes, by_hash


# -- manual entries: block add / remove, allow add / remove --------------------------------
def check_by_hand(names: Sequence[str], match: str, kind: str, force: bool) -> None:
    """The guard rails of a name listed by hand: an IP literal is never a name the program
    sees in a query's name (feeds skip them; exempt add takes source prefixes), and a
    subtree of a top-level domain blocks, or allows, everything registered under it: only
    with ``force``."""
    for name in names:
        if is_ip_literal(name):
            raise InvalidNameError(name, "an IP address, not a domain name (ccxdp matches "
                                         "the names queried; 'exempt add' takes sources)")
    if not force and match != "exact":
        tlds = [n for n in names if is_top_level(n)]
        if tlds:
            what = "blocks" if kind == BLOCK else "allows"
            raise CcxdpError(
                f"{', '.join(tlds)}: a top-level domain; a subtree of it {what} every name "
                f"registered under it: nothing was changed (--force lists it all the same)")


def add(
    dp: Datapath,
    catalog: Catalog,
    names: Sequence[str],
    subtree: bool | str,
    action: str = "default",
    category: str | None = None,
    kind: str = BLOCK,
    force: bool = False,
) -> list[Change]:
    """List names in the manual source as block entries (action "default": the configured
    default action decides at query time) or as allow entries (kind ALLOW). ``subtree`` is a
    match ("exact", "subtree", "below") or a bool. Adding a listed name again replaces its
    match, action and category. Refused: IP literals, and without ``force`` the subtree of
    a top-level domain (check_by_hand)."""
    match = subtree if isinstance(subtree, str) else ("subtree" if subtree else "exact")
    if match not in MATCHES:
        raise CcxdpError(f"{match!r} is not a match ({', '.join(MATCHES)})")
    if kind == ALLOW:
        action, category = "allow", None
    else:
        action = canonical_action(action)
    if category is not None:
        category = normalize_category(category)
    normalized = list(dict.fromkeys(normalize(n) for n in names))
    check_by_hand(normalized, match, kind, force)
    key = dp.hash_key()
    rehash_if_needed(key, catalog)
    with catalog.transaction():
        category_id = catalog.category_id(category) if category else 0
        hashes, by_hash = hash_entries(normalized, key)
        manual = catalog.listing(MANUAL_ID, kind)
        wanted = dict(zip(manual.hashes, manual.values, strict=True))
        changes = []
        for h, name in zip(hashes, normalized, strict=True):
            value = pack(kind, match, action, category_id)
            old = wanted.get(h)
            status = "added" if old is None else ("unchanged" if old == value else "updated")
            wanted[h] = value
            changes.append(_change(name, kind, match, action, category, status))
        apply(dp, catalog, {(MANUAL_ID, kind): listing_from(wanted)}, by_hash)
    return changes


def _change(name, kind, match, action, category, status) -> Change:
    if kind == ALLOW:
        return Change(name, status, match)
    return Change(name, status, match, action, category)


def remove(dp: Datapath, catalog: Catalog, names: Sequence[str], kind: str = BLOCK) -> list[Change]:
    """Unlist names of one kind from the manual source. A name a feed lists stays listed."""
    normalized = list(dict.fromkeys(normalize(n) for n in names))
    key = dp.hash_key()
    rehash_if_needed(key, catalog)
    categories = catalog.categories()
    with catalog.transaction():
        hashes, _ = hash_entries(normalized, key)
        manual = catalog.listing(MANUAL_ID, kind)
        wanted = dict(zip(manual.hashes, manual.values, strict=True))
        changes = []
        for h, name in zip(hashes, normalized, strict=True):
            value = wanted.pop(h, None)
            if value is None:
                changes.append(Change(name, "not listed"))
                continue
            match, action, category = unpack(value)
            changes.append(_change(name, kind, match, action, categories.get(category),
                                   "removed"))
        if any(c.status == "removed" for c in changes):
            apply(dp, catalog, {(MANUAL_ID, kind): listing_from(wanted)}, {})
    return changes


def sources_of(catalog: Catalog, kind: str = BLOCK) -> dict[int, list[tuple[str, str | None]]]:
    """{hash: [(source name, when it was last synced)]} of every listed name of one kind,
    sources in precedence order."""
    out: dict[int, list[tuple[str, str | None]]] = {}
    for source in catalog.sources():
        stamp = (source.name, source.synced_at if source.is_feed else None)
        for h in catalog.listing(source.id, kind).hashes:
            out.setdefault(h, []).append(stamp)
    return out


# -- keeping the kernel in line ---------------------------------------------------------------
def rehash_if_needed(key: HashKey, catalog: Catalog) -> None:
    """Make the catalog's stored hashes those of the installation's key. They differ only
    when the key was adopted from pins made elsewhere (the state folder was lost or moved);
    then every name is hashed again, once."""
    if catalog.meta("key") == key.fingerprint:
        return
    with catalog.transaction():
        rows = catalog.db.execute(
            "SELECT hash, name, block, allow, block_added, allow_added FROM entries").fetchall()
        names = [r[1] for r in rows]
        new_hashes = bulk.hash_names(names, key) if names else array("Q")
        moved = {unsigned(r[0]): h for r, h in zip(rows, new_hashes, strict=True)}
        for (sid, kind), listing in catalog.listings().items():
            pairs = {moved[h]: v for h, v in zip(listing.hashes, listing.values, strict=True)
                     if h in moved}
            catalog.set_listing(sid, kind, listing_from(pairs))
        catalog.clear_entries()
        catalog.db.executemany(
            "INSERT INTO entries (hash, name, block, allow, block_added, allow_added) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            sorted((signed(h), *r[1:]) for r, h in zip(rows, new_hashes, strict=True)))
        catalog.set_meta("key", key.fingerprint)


def reconcile(dp: Datapath, catalog: Catalog) -> int:
    """Make the kernel's live list exactly what the listings say; returns the names it
    holds. Run at every attach: it brings back the entries of purged pins and mends whatever
    a crash between catalog and kernel left."""
    rehash_if_needed(dp.hash_key(), catalog)
    listings = catalog.listings()
    hashes, values = kernel_list(effective(listings, BLOCK), effective(listings, ALLOW))
    with NameTable(dp) as table:
        live_h, live_v = table.read()
        if live_h != hashes or live_v != values:
            table.publish(hashes, values)
    return len(hashes)
