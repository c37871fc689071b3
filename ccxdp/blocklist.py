"""Block and allow entries: catalog and kernel map changed together, or not at all.

The kernel's name map holds one value per name hash, so a name that is both blocked and
allowed is held there as its allow entry (at equal specificity, allow wins); the block entry
stays in the catalog and comes back into the kernel when the allow entry goes. What the kernel
should hold is a function of the catalog alone (``kernel_entries``): every change writes that
function's value for the names it touched, and ``reconcile`` writes it for all of them, so the
two paths cannot disagree.
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import bloom, layout
from .catalog import ALLOW, BLOCK, Catalog, CatalogEntry, normalize_category
from .datapath import Datapath
from .errors import CcxdpError
from .hashing import HashKey, name_hash
from .names import normalize
from .settings import ACTION_NAMES, BLOCK_ACTIONS


@dataclass(frozen=True)
class Change:
    name: str
    status: str  # "added", "updated", "unchanged", "removed", "not listed"
    subtree: bool | None = None
    action: str | None = None  # block entries: "default" or an action name
    category: str | None = None  # block entries: the category's name


def action_code(action: str) -> layout.Action:
    """The kernel's code for an action as the catalog stores it."""
    if action == "default":
        return layout.Action.DEFAULT
    if action == "allow":
        return layout.Action.ALLOW
    return layout.Action(ACTION_NAMES[action])


def kernel_value(block: CatalogEntry | None, allow: CatalogEntry | None) -> layout.Entry | None:
    """What the kernel holds for one name, given its block and allow entries (or None)."""
    if allow is not None and block is not None and block.subtree and not allow.subtree:
        # The name itself is allowed, the names below it stay blocked: one entry says both.
        flags = layout.ENTRY_SUBTREE | layout.ENTRY_ALLOW_NAME
        return layout.Entry(action_code(block.action), flags, block.category)
    if allow is not None:
        return layout.Entry(layout.Action.ALLOW, layout.ENTRY_SUBTREE if allow.subtree else 0, 0)
    if block is not None:
        flags = layout.ENTRY_SUBTREE if block.subtree else 0
        return layout.Entry(action_code(block.action), flags, block.category)
    return None


def kernel_entries(catalog: Catalog, names: Iterable[str] | None = None) -> dict[int, layout.Entry]:
    """{hash: value} the kernel should hold for these names (all names with None). A name
    with no entry left is absent from the result."""
    if names is None:
        entries = catalog.entries(kind=None)
    else:
        entries = [e for n in dict.fromkeys(names) for k in (BLOCK, ALLOW)
                   if (e := catalog.get(n, k)) is not None]
    by_name: dict[str, dict[str, CatalogEntry]] = {}
    for e in entries:
        by_name.setdefault(e.name, {})[e.kind] = e
    out = {}
    for kinds in by_name.values():
        block, allow = kinds.get(BLOCK), kinds.get(ALLOW)
        value = kernel_value(block, allow)
        if value is not None:
            out[(allow or block).hash] = value
    return out


def _value_tuple(v: layout.Entry) -> tuple[int, int, int]:
    """A kernel value as comparable numbers (ctypes structures do not compare by value)."""
    return (v.action, v.flags, v.category)


def add(
    dp: Datapath,
    catalog: Catalog,
    names: Sequence[str],
    subtree: bool,
    action: str = "default",
    category: str | None = None,
    kind: str = BLOCK,
) -> list[Change]:
    """List names as block entries (action "default": the configured default action decides
    at query time) or as allow entries (kind ALLOW). Adding a listed name again replaces its
    match, action and category."""
    if kind == ALLOW:
        action, category = "allow", None
    elif action != "default":
        if action not in ACTION_NAMES:
            raise CcxdpError(f"{action!r} is not an action ({', '.join(BLOCK_ACTIONS)})")
        action = layout.Action(ACTION_NAMES[action]).name.lower()  # "redirect" is "sinkhole"
    if category is not None:
        category = normalize_category(category)
    normalized = list(dict.fromkeys(normalize(n) for n in names))
    key = dp.hash_key()
    _hashes_for_key(catalog, key)
    changes = []
    with catalog.transaction():
        category_id = catalog.category_id(category) if category else 0
        wanted = []
        for name in normalized:
            entry = CatalogEntry(name, name_hash(name, key), subtree, action, category_id,
                                 kind=kind)
            old = catalog.get(name, kind)
            if old is None:
                status = "added"
            elif (old.subtree, old.action, old.category) != (subtree, action, category_id):
                status = "updated"
            else:
                status = "unchanged"
            changes.append(_change(entry, status, category))
            wanted.append(entry)
        catalog.upsert(wanted)
        if dp.is_loaded():
            write_kernel_entries(dp, kernel_entries(catalog, normalized))
    return changes


def _change(entry: CatalogEntry, status: str, category: str | None) -> Change:
    if entry.kind == ALLOW:
        return Change(entry.name, status, entry.subtree)
    return Change(entry.name, status, entry.subtree, entry.action, category)


def remove(dp: Datapath, catalog: Catalog, names: Sequence[str], kind: str = BLOCK) -> list[Change]:
    """Unlist names of one kind. Where the other kind lists the same name, the kernel gets
    that entry (the block entry comes back when its allow entry goes)."""
    normalized = list(dict.fromkeys(normalize(n) for n in names))
    key = dp.hash_key()
    _hashes_for_key(catalog, key)
    categories = catalog.categories()
    changes, gone = [], []
    for name in normalized:
        old = catalog.get(name, kind)
        if old is None:
            changes.append(Change(name, "not listed"))
        else:
            changes.append(_change(old, "removed", categories.get(old.category)))
            gone.append(old)
    with catalog.transaction():
        catalog.remove((e.name for e in gone), kind)
        if dp.is_loaded() and gone:
            names_gone = [e.name for e in gone]
            left = kernel_entries(catalog, names_gone)
            # Rewrites first (they may fail, and then nothing was deleted yet), then deletes.
            write_kernel_entries(dp, left)
            with dp.open_map(layout.MAP_NAMES) as m:
                for e in gone:
                    if e.hash not in left:
                        m.delete(ct.c_uint64(e.hash))
    return changes


def write_kernel_entries(dp: Datapath, entries: dict[int, layout.Entry]) -> None:
    """Write {hash: entry} to the kernel: bloom bits first, then the name map, so the
    pre-filter never hides a name that is in the map. If the kernel refuses part of the batch
    (map full), what was there before is put back: the map is never left half-changed."""
    if not entries:
        return
    keys = [ct.c_uint64(h) for h in entries]
    with dp.open_map(layout.MAP_BLOOM) as bloom_map:
        bloom.add(bloom_map, entries)
    with dp.open_map(layout.MAP_NAMES) as m:
        before = [m.lookup(k) for k in keys]
        try:
            m.update_batch(keys, list(entries.values()))
        except OSError as e:
            for k, old in zip(keys, before, strict=True):
                if old is None:
                    m.delete(k)
                else:
                    m.update(k, old)
            raise CcxdpError(
                f"cannot write {len(entries)} entries to the kernel map {layout.MAP_NAMES}: "
                f"{e.strerror or e} (map full? it holds at most {m.info.max_entries}); "
                "nothing was changed"
            ) from e


def _hashes_for_key(catalog: Catalog, key: HashKey) -> None:
    """Make the catalog's stored hashes those of this key. They differ only when the key was
    adopted from pins made elsewhere (the state folder was lost or moved); then every name is
    hashed again, once."""
    if catalog.meta("key") == key.fingerprint:
        return
    entries = [
        CatalogEntry(e.name, name_hash(e.name, key), e.subtree, e.action, e.category,
                     e.added_at, e.kind)
        for e in catalog.entries(kind=None)
    ]
    with catalog.transaction():
        catalog.db.execute("DELETE FROM entries")
        catalog.upsert(entries)
        catalog.set_meta("key", key.fingerprint)


def reconcile(dp: Datapath, catalog: Catalog) -> tuple[int, int]:
    """Make the kernel's name map hold exactly what the catalog says (``kernel_entries``),
    and rebuild the bloom filter from it; returns (written, deleted). Run at every attach: it
    brings back the entries of purged pins and mends whatever a crash between catalog and
    kernel left."""
    _hashes_for_key(catalog, dp.hash_key())
    wanted = kernel_entries(catalog)
    with dp.open_map(layout.MAP_NAMES) as m:
        present = {}
        for keys, values, count in m.lookup_batch_arrays():
            for i in range(count):
                present[keys[i]] = _value_tuple(values[i])
        stale = [h for h in present if h not in wanted]
        if stale:
            m.delete_batch(stale)
    missing = {h: v for h, v in wanted.items() if present.get(h) != _value_tuple(v)}
    write_kernel_entries(dp, missing)
    with dp.open_map(layout.MAP_BLOOM) as bloom_map:
        bloom.rebuild(bloom_map, wanted)
    return len(missing), len(stale)
