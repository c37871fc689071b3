"""The collector: the kernel's per-source counters into the hits store, every hit exactly once.

The kernel counts hits per (source address, category) into one of two buffers of the
per-source map, the one the low bit of the epoch (``ccxdp_sepoch``) names (bpf/maps.h). The
store's checkpoint holds D, the last epoch whose buffer is in the store, and the identity of
the maps it came from. One collection, under the datapath's lock, with E the kernel's epoch:

1. If D < E - 1, buffer (E - 1) & 1 holds epoch E - 1 and the store does not: a collector
   was killed after it switched the epoch and before it committed. Wait for readers (it may
   have been killed before its own wait), store the buffer's hits with D = E - 1 in one
   transaction, then delete its entries.
   If D = E - 1 and that buffer is not known empty, what it still holds is in the store
   already (a collector was killed after committing, before or while deleting): delete it
   without storing it again.
2. Switch: write E + 1, so that new hits go to buffer (E + 1) & 1, which step 1 emptied.
3. Wait for readers: membarrier(MEMBARRIER_CMD_GLOBAL) returns after an RCU grace period,
   so every XDP run that began before the switch has ended (XDP runs under RCU), and every
   later one reads E + 1. No query adds to buffer E & 1 any more: its counters are final.
4. Store the buffer's hits with D = E in one transaction, then delete its entries, then note
   in the checkpoint that the buffer is empty (so the next collection need not look).

Why no hit is lost: a hit is added to the buffer of the epoch its query read, and an entry
leaves the map only once the hits it holds are committed to the store (steps 1 and 4 delete
after the commit, and only entries of a buffer no query writes any more: its epoch is over
and a grace period has passed since). A buffer goes live again (step 2) only after step 1 made
sure it is stored and empty. A full map cannot evict anything: the kernel counts the query it
could not count as ``source_lost`` instead, and ``collect`` reports those.

Why no hit is counted twice: a buffer's hits reach the store in the same transaction that
moves D to its epoch, and a buffer is stored only while D is below its epoch; the entries that
remain after that commit are deleted without going into the store again. A kill at any
point leaves either the old checkpoint with the hits not stored (step 1 stores them), or the
new one with the hits stored (step 1 deletes the leftovers), never a mix, because SQLite
commits both or neither. Collectors never run at once: the datapath's lock orders them.
The kernel's source_lost counter is taken the same way: its value goes into the checkpoint
with the hits, and a collection reports the difference from the value stored before.

The checkpoint also names the maps (their kernel ids and the boot): maps made afresh (a purge,
a reboot) start from nothing, however far the store's epoch had gone.

"Store" in steps 1 and 4 means stage (Store.stage_counters): the buffer's entries go in as
the batch lookups returned them, the kernel's bytes, appended to the store's ``staged`` table
in the transaction that moves the checkpoint, with no index to keep up and no object made per
entry. That is all the collection path does with them, so a million sources commit in a
fraction of a second. Store.fold turns staged counters into ``hits`` rows (addresses as text,
the hour rule, merged into rows already there), and deletes them from ``staged`` in the same
transaction: a hit is in ``staged`` or in ``hits``, never both and never neither. ``collect``
folds after its collection (timed apart), and every reader of hits folds first.
"""

from __future__ import annotations

import ctypes as ct
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ccxdp.datapath import libbpf, shared
from ccxdp.datapath.libbpf import wait_for_readers
from ccxdp.datapath.loader import Datapath
from ccxdp.errors import CcxdpError
from ccxdp.hits.stats import hit_clock_offset_ns
from ccxdp.hits.store import (
    COUNTER_BUFFER_AT,
    COUNTER_KEY,
    COUNTER_VALUE,
    FoldResult,
    Store,
    counter_categories,
    counter_hits,
)
from ccxdp.policy.catalog import Catalog

CHUNK = 1 << 16  # entries per batch syscall: a million sources in 16 calls
DELETE_THREADS = 2  # the kernel deletes under per-bucket locks: threads scale

# Checkpoint keys (the store keeps them opaque).
DRAINED = "drained"  # the last epoch whose buffer is in the store
CLEARED = "cleared"  # the last epoch whose buffer is known empty since
LOST_SEEN = "lost_seen"  # the kernel's source_lost counter at the last collection
LOST_TOTAL = "lost_total"  # every hit lost, over every collection into this store

_KEY_SIZE = COUNTER_KEY.size
_VALUE_SIZE = COUNTER_VALUE.size
_ZERO = ct.c_uint32(0)


class CollectError(CcxdpError):
    pass


@dataclass(frozen=True)
class CollectResult:
    """One collection, in exact integers."""

    epoch: int  # the epoch stored by this collection; the kernel now counts into epoch + 1
    rows: int  # hits rows the fold after it wrote: one per address, category and hour
    hits: int  # hits stored (recovered included)
    sources: int  # distinct source addresses the fold saw
    counters: int  # kernel entries stored
    recovered: int  # of hits, those a killed collector had left in the kernel
    lost: int  # hits the kernel could not count (map full) since the last collection
    lost_total: int  # ... and over every collection into this store
    seconds: float  # the collection: kernel to store, committed, and the buffer deleted
    fold_seconds: float  # the fold of staged counters into hits that followed (0: none)

    def with_fold(self, folded: FoldResult) -> CollectResult:
        """This collection with the fold that followed it (rows, sources, its time)."""
        return replace(self, rows=folded.rows, sources=folded.sources,
                       fold_seconds=folded.seconds)

    def to_json(self) -> dict:
        return {
            "epoch": self.epoch,
            "rows": self.rows,
            "hits": self.hits,
            "sources": self.sources,
            "counters": self.counters,
            "recovered": self.recovered,
            "lost": self.lost,
            "lost_total": self.lost_total,
            "seconds": round(self.seconds, 3),
            "fold_seconds": round(self.fold_seconds, 3),
        }


@dataclass
class _Drained:
    """One buffer read: the kernel's bytes of its entries, batch by batch (keys, counters),
    the keys again in one piece to delete afterwards, and what they hold."""

    batches: list = field(default_factory=list)
    keys: bytearray = field(default_factory=bytearray)
    hits: int = 0
    counters: int = 0  # kernel entries (source, category)
    categories: set = field(default_factory=set)


def boot_id() -> int:
    return uuid.UUID(Path("/proc/sys/kernel/random/boot_id").read_text().strip()).int


def _without(raw: bytes, size: int, skip: list[int]) -> bytes:
    """``raw``, entries of ``size`` bytes, less the entries at the indexes ``skip`` (sorted):
    a slice per run of kept entries, not one per entry."""
    parts, start = [], 0
    for i in skip:
        parts.append(raw[start * size : i * size])
        start = i + 1
    parts.append(raw[start * size :])
    return b"".join(parts)


def _drain(srcs: libbpf.Map, buffer: int) -> _Drained:
    """Every entry of one buffer, read in batches. Only call it for a buffer no query writes
    (its epoch is over and a grace period has passed): then each entry is read exactly once,
    with its final count. Entries of the live buffer are left out.

    The collector's hot path (a million entries), so nothing here makes an object per entry:
    the batch arrays' bytes are kept as they are (the store stages them, its fold decodes
    them), the buffer bytes are one strided slice, and live-buffer entries, usually few, are
    found with bytes.find and cut out run by run."""
    out = _Drained()
    ks, vs, at = _KEY_SIZE, _VALUE_SIZE, COUNTER_BUFFER_AT
    other = bytes([buffer ^ 1])
    for keys, values, count in srcs.lookup_batch_arrays(CHUNK):
        kraw = bytes(memoryview(keys).cast("B")[: count * ks])
        vraw = bytes(memoryview(values).cast("B")[: count * vs])
        buffers = kraw[at::ks]
        kept = buffers.count(buffer)
        if kept + buffers.count(other) != count:
            raise CollectError(f"{srcs.label}: an entry of a buffer other than 0 or 1")
        if not kept:
            continue
        if kept < count:
            skip = []
            i = buffers.find(other)
            while i >= 0:
                skip.append(i)
                i = buffers.find(other, i + 1)
            kraw, vraw = _without(kraw, ks, skip), _without(vraw, vs, skip)
        out.batches.append((kraw, vraw))
        out.keys += kraw
        out.counters += kept
        out.hits += counter_hits(vraw)
        out.categories |= counter_categories(kraw)
    return out


class Collector:
    """One datapath's per-source map, epoch and counters, opened (NotLoadedError when they are
    not there). The caller holds the datapath's lock (``with Datapath(...) as dp``) for as long
    as it uses this. ``categories``: the catalog's names of category ids."""

    def __init__(self, dp: Datapath, categories: Mapping[int, str] | None = None,
                 feeds: Mapping[int, list[str]] | None = None):
        if not dp.locked:
            raise CollectError("collect needs the datapath's lock: open it with 'with dp:'")
        self.store: Store | None = None
        self._offset_ns = 0
        self.category_names = dict(categories or {})
        self.category_feeds = dict(feeds or {})
        self._maps = []
        try:
            for name in (shared.MAP_SOURCES, shared.MAP_SOURCE_EPOCH, shared.MAP_STATS):
                self._maps.append(dp.open_map(name))
        except BaseException:
            self.close()
            raise
        self.srcs, self.epoch_map, self.stats = self._maps

    def close(self) -> None:
        for m in self._maps:
            m.close()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the kernel's side ------------------------------------------------------------------
    def identity(self) -> dict[str, int]:
        return {
            "boot": boot_id(),
            "srcs_map": self.srcs.info.id,
            "epoch_map": self.epoch_map.info.id,
            "stats_map": self.stats.info.id,
        }

    def epoch(self) -> int:
        return self.epoch_map.lookup(_ZERO).value

    def lost_counter(self) -> int:
        index = ct.c_uint32(shared.STAT_EVENT_BASE + shared.Event.SOURCE_LOST)
        return self.stats.lookup_sum(index).value

    def _delete(self, drained: _Drained) -> None:
        """Delete a stored buffer's entries, in DELETE_THREADS parallel batches (ctypes lets
        the GIL go during the syscall, and the kernel's time is most of the cost). Any order
        and any split will do: the buffer is over and its hits are committed; a kill midway
        leaves entries the next collection deletes unread."""
        if not drained.counters:
            return
        keys = bytes(drained.keys)
        per = -(-drained.counters // DELETE_THREADS) * _KEY_SIZE
        parts = [keys[i : i + per] for i in range(0, len(keys), per)]
        errors: list[BaseException] = []

        def delete(part: bytes) -> None:
            try:
                self.srcs.delete_batch(part)
            except BaseException as e:  # noqa: BLE001 - raised below, in the caller
                errors.append(e)

        threads = [threading.Thread(target=delete, args=(p,)) for p in parts[1:]]
        for t in threads:
            t.start()
        delete(parts[0])
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _mark_cleared(self, epoch: int) -> None:
        self.store.add_hit_counts([], {CLEARED: epoch})

    def _commit(self, drained: _Drained, checkpoint: dict[str, int | None]) -> int:
        """Stage the buffer's counters with the checkpoint, in one transaction."""
        names = {c: self.category_names[c] for c in drained.categories if c in self.category_names}
        feeds = {c: self.category_feeds[c] for c in drained.categories if c in self.category_feeds}
        return self.store.stage_counters(drained.batches, self._offset_ns, checkpoint, names,
                                         feeds, epoch=checkpoint[DRAINED])

    # -- one collection ---------------------------------------------------------------------
    def collect(self, store: Store, fold: bool = True) -> CollectResult:
        """One collection into ``store``: steps 1-4 of the module's docstring; then, with
        ``fold``, the store's fold of what it staged into hits (timed apart)."""
        started = time.monotonic()
        self.store = store
        ident = self.identity()
        cp = self.store.checkpoint()
        same = all(cp.get(k) == v for k, v in ident.items())
        epoch = self.epoch()
        drained_epoch = cp.get(DRAINED, epoch - 2) if same else epoch - 2
        cleared = cp.get(CLEARED) if same else None
        lost_seen = cp.get(LOST_SEEN, 0) if same else 0
        lost_total = cp.get(LOST_TOTAL, 0)
        if drained_epoch > epoch - 1:
            raise CollectError(
                f"the store holds epoch {drained_epoch} of these maps but the kernel is at "
                f"epoch {epoch}: was {shared.MAP_SOURCE_EPOCH} written by hand?"
            )
        self._offset_ns = hit_clock_offset_ns()
        previous = (epoch - 1) & 1

        # 1. What a killed collector left in the buffer that is about to go live again.
        recovered = _Drained()
        if drained_epoch < epoch - 1:
            wait_for_readers()
            recovered = _drain(self.srcs, previous)
            self._commit(recovered, {
                **ident, DRAINED: epoch - 1, CLEARED: None, LOST_SEEN: lost_seen,
                LOST_TOTAL: lost_total})
            self._delete(recovered)
        elif cleared != epoch - 1:
            self._delete(_drain(self.srcs, previous))

        # 2, 3. Switch, then wait until no query adds to the old buffer.
        self.epoch_map.update(_ZERO, ct.c_uint64(epoch + 1))
        wait_for_readers()

        # 4. Store it, then delete it.
        drained = _drain(self.srcs, epoch & 1)
        lost_now = self.lost_counter()
        lost = max(0, lost_now - lost_seen)
        self._commit(drained, {**ident, DRAINED: epoch, CLEARED: None,
                               LOST_SEEN: lost_now, LOST_TOTAL: lost_total + lost})
        self._delete(drained)
        self._mark_cleared(epoch)
        seconds = time.monotonic() - started

        result = CollectResult(
            epoch=epoch,
            rows=0,
            hits=drained.hits + recovered.hits,
            sources=0,
            counters=drained.counters + recovered.counters,
            recovered=recovered.hits,
            lost=lost,
            lost_total=lost_total + lost,
            seconds=seconds,
            fold_seconds=0.0,
        )
        # The hits are in the store (staged); readers would fold them anyway, but the
        # collection that staged them folds them now, off the kernel's path. Callers that
        # hold the datapath's lock only for the kernel part fold after releasing it
        # (collect_then_fold).
        return result.with_fold(self.store.fold()) if fold else result


def collect(dp: Datapath, store: Store, categories: Mapping[int, str] | None = None,
            feeds: Mapping[int, list[str]] | None = None) -> CollectResult:
    """One collection of the datapath's per-source counters into ``store``; the caller holds
    the datapath's lock. ``categories``: the catalog's names of category ids; ``feeds``:
    its feeds per category id (Catalog.feeds_by_category)."""
    with Collector(dp, categories, feeds) as collector:
        return collector.collect(store)


def collect_staged(dp: Datapath, store_file: Path, spool_for: str | None = None
                   ) -> CollectResult:
    """One collection into the store at ``store_file``, staged and not folded: the kernel
    part, under the datapath's lock. The store file is made only once the maps are known to
    be there: a failed collection leaves no empty store behind. ``spool_for``: the fleet
    store the staged batches are for (Store.spool_for), marked before any is staged."""
    with dp:
        with Catalog(dp.catalog_path) as catalog:
            categories, feeds = catalog.categories(), catalog.feeds_by_category()
        with Collector(dp, categories, feeds) as collector, Store(store_file) as store:
            if spool_for is not None:
                store.spool_for(spool_for)
            return collector.collect(store, fold=False)


def collect_then_fold(dp: Datapath, store_file: Path) -> CollectResult:
    """One collection into the store at ``store_file``, as `ccxdp collect` and the daemon run
    it for one resolver: the kernel part under the datapath's lock, the fold after the lock
    is released. The fold touches only the store (its own transaction) and takes seconds for
    a million sources, so feed syncs and other commands do not wait for it."""
    result = collect_staged(dp, store_file)
    with Store(store_file) as store:
        return result.with_fold(store.fold())
