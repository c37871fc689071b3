"""Block entries: catalog and kernel map changed together, or not at all."""

from __future__ import annotations

import ctypes as ct
from collections.abc import Sequence
from dataclasses import dataclass

from . import bloom, layout
from .catalog import Catalog, CatalogEntry
from .datapath import Datapath
from .errors import CcxdpError
from .hashing import HashKey, name_hash
from .names import normalize


@dataclass(frozen=True)
class Change:
    name: str
    status: str  # "added", "updated", "unchanged", "removed", "not listed"
    subtree: bool | None = None


def _kernel_value(entry: CatalogEntry) -> layout.Entry:
    flags = layout.ENTRY_SUBTREE if entry.subtree else 0
    return layout.Entry(layout.Action[entry.action.upper()], flags, entry.category)


def _value_tuple(entry: CatalogEntry) -> tuple[int, int, int]:
    """The kernel value as comparable numbers (ctypes structures do not compare by value)."""
    v = _kernel_value(entry)
    return (v.action, v.flags, v.category)


def add(dp: Datapath, catalog: Catalog, names: Sequence[str], subtree: bool) -> list[Change]:
    normalized = list(dict.fromkeys(normalize(n) for n in names))
    key = dp.hash_key()
    _hashes_for_key(catalog, key)
    changes, wanted = [], []
    for name in normalized:
        entry = CatalogEntry(name, name_hash(name, key), subtree)
        old = catalog.get(name)
        if old is None:
            changes.append(Change(name, "added", subtree))
        elif old.subtree != subtree:
            changes.append(Change(name, "updated", subtree))
        else:
            changes.append(Change(name, "unchanged", subtree))
        wanted.append(entry)
    with catalog.transaction():
        catalog.upsert(wanted)
        if dp.is_loaded():
            _push(dp, wanted)
    return changes


def write_kernel_entries(dp: Datapath, entries: dict[int, layout.Entry]) -> None:
    """Write {hash: entry} to the kernel: bloom bits first, then the name map, so the
    pre-filter never hides a name that is in the map. If the kernel refuses part of the batch
    (map full), what was there before is put back: the map is never left half-changed."""
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


def _push(dp: Datapath, entries: Sequence[CatalogEntry]) -> None:
    write_kernel_entries(dp, {e.hash: _kernel_value(e) for e in entries})


def remove(dp: Datapath, catalog: Catalog, names: Sequence[str]) -> list[Change]:
    normalized = list(dict.fromkeys(normalize(n) for n in names))
    _hashes_for_key(catalog, dp.hash_key())
    changes, gone = [], []
    for name in normalized:
        old = catalog.get(name)
        if old is None:
            changes.append(Change(name, "not listed"))
        else:
            changes.append(Change(name, "removed", old.subtree))
            gone.append(old)
    with catalog.transaction():
        catalog.remove(e.name for e in gone)
        if dp.is_loaded() and gone:
            with dp.open_map(layout.MAP_NAMES) as m:
                for e in gone:
                    m.delete(ct.c_uint64(e.hash))
    return changes


def _hashes_for_key(catalog: Catalog, key: HashKey) -> None:
    """Make the catalog's stored hashes those of this key. They differ only when the key was
    adopted from pins made elsewhere (the state folder was lost or moved); then every name is
    hashed again, once."""
    if catalog.meta("key") == key.fingerprint:
        return
    entries = [
        CatalogEntry(e.name, name_hash(e.name, key), e.subtree, e.action, e.category, e.added_at)
        for e in catalog.entries()
    ]
    with catalog.transaction():
        catalog.db.execute("DELETE FROM entries")
        catalog.upsert(entries)
        catalog.set_meta("key", key.fingerprint)


def reconcile(dp: Datapath, catalog: Catalog) -> tuple[int, int]:
    """Make the kernel's name map hold exactly the catalog's entries, and rebuild the bloom
    filter from them; returns (written, deleted). Run at every attach: it brings back the
    entries of purged pins and mends whatever a crash between catalog and kernel left."""
    _hashes_for_key(catalog, dp.hash_key())
    wanted = {e.hash: e for e in catalog.entries()}
    with dp.open_map(layout.MAP_NAMES) as m:
        present = {}
        for keys, values, count in m.lookup_batch_arrays():
            for i in range(count):
                v = values[i]
                present[keys[i]] = (v.action, v.flags, v.category)
        stale = [h for h in present if h not in wanted]
        if stale:
            m.delete_batch(stale)
    missing = [e for h, e in wanted.items() if present.get(h) != _value_tuple(e)]
    if missing:
        _push(dp, missing)
    with dp.open_map(layout.MAP_BLOOM) as bloom_map:
        bloom.rebuild(bloom_map, wanted)
    return len(missing), len(stale)
