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
"""

from __future__ import annotations

import ctypes as ct
import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from socket import AF_INET, AF_INET6, inet_ntop

from . import bpfsys, layout
from .datapath import Datapath
from .errors import CcxdpError
from .nametable import wait_for_readers
from .store import Store, address_text

CHUNK = 1 << 16  # entries per batch syscall: a million sources in 16 calls

# Checkpoint keys (the store keeps them opaque).
DRAINED = "drained"  # the last epoch whose buffer is in the store
CLEARED = "cleared"  # the last epoch whose buffer is known empty since
LOST_SEEN = "lost_seen"  # the kernel's source_lost counter at the last collection
LOST_TOTAL = "lost_total"  # every hit lost, over every collection into this store

_HOUR_US = 3600 * 1_000_000
_KEY = struct.Struct("<16sHBx")
_KEY_SPLIT = struct.Struct("<12s4sHBx")  # the IPv4 of an IPv4-mapped address apart
_KEY_BUFFER_AT = 18  # offset of SourceKey.buffer
_HITS = struct.Struct("<QQQ")
_MAPPED = bytes(10) + b"\xff\xff"
_ZERO = ct.c_uint32(0)


class CollectError(CcxdpError):
    pass


@dataclass(frozen=True)
class CollectResult:
    """One collection, in exact integers."""

    epoch: int  # the epoch stored by this collection; the kernel now counts into epoch + 1
    rows: int  # store rows taken: one per source address, category and hour
    hits: int  # hits stored (recovered included)
    sources: int  # distinct source addresses among them
    counters: int  # kernel entries stored
    recovered: int  # of hits, those a killed collector had left in the kernel
    lost: int  # hits the kernel could not count (map full) since the last collection
    lost_total: int  # ... and over every collection into this store
    seconds: float

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
        }


@dataclass
class _Drained:
    """One buffer read: store rows, the raw keys to delete afterwards, and what they hold."""

    rows: list = field(default_factory=list)
    keys: bytearray = field(default_factory=bytearray)
    hits: int = 0
    counters: int = 0  # kernel entries (source, category)
    addresses: set = field(default_factory=set)
    categories: set = field(default_factory=set)


def boot_id() -> int:
    return uuid.UUID(Path("/proc/sys/kernel/random/boot_id").read_text().strip()).int


def boot_clock_offset_ns() -> int:
    """Nanoseconds to add to CLOCK_BOOTTIME (what the program stamps) to get Unix time. Taken
    once per collection, so that first_seen <= last_seen holds after the conversion."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def hour_rows(address: str, category: int, hits: int, first_us: int, last_us: int) -> list:
    """Store rows (hour, address, category, hits, first_us, last_us) for one kernel counter
    of ``hits`` between ``first_us`` and ``last_us`` (Unix microseconds).

    A counter knows only when its first and last hit came. Within one hour: one row. Across
    hours: the first hit goes to the first's hour, at that time, and the others to the last's
    hour, at the last's time. So every row's hour, first and last are times a hit certainly
    came (the days with hits, which notification counts, are never made up); the hits whose
    times are unknown (somewhere between the two) go with the last."""
    first_hour = first_us // _HOUR_US
    last_hour = last_us // _HOUR_US
    if first_hour == last_hour:
        return [(first_hour * 3600, address, category, hits, first_us, last_us)]
    rows = [(first_hour * 3600, address, category, 1, first_us, first_us)]
    if hits > 1:
        rows.append((last_hour * 3600, address, category, hits - 1, last_us, last_us))
    return rows


def _address_text(raw: bytes) -> str:
    """As the store keeps addresses: IPv4-mapped as IPv4, IPv6 as ipaddress prints it."""
    if raw[:12] == _MAPPED:
        return inet_ntop(AF_INET, raw[12:])
    text = inet_ntop(AF_INET6, raw)
    if "." in text:  # libc writes ::a.b.c.d forms that ipaddress does not
        return address_text(text)
    return text


def _drain(srcs: bpfsys.Map, buffer: int, offset_ns: int, rows: bool = True) -> _Drained:
    """Every entry of one buffer, read in batches. Only call it for a buffer no query writes
    (its epoch is over and a grace period has passed): then each entry is read exactly once,
    with its final count. Entries of the live buffer are skipped. rows=False: keys only.

    The loop is the collector's hot path (a million entries): one tuple per entry from
    struct, the hour split inlined for the usual case (hour_rows gives the rule)."""
    out = _Drained()
    append, categories = out.rows.append, out.categories
    ks, vs, at = _KEY.size, _HITS.size, _KEY_BUFFER_AT
    texts: dict[bytes, str] = {}
    for keys, values, count in srcs.lookup_batch_arrays(CHUNK):
        kraw = bytes(memoryview(keys).cast("B")[: count * ks])
        vraw = memoryview(values).cast("B")[: count * vs]
        skipped = 0
        hits_in = 0
        for (head, v4, category, buf), (hits, first_ns, last_ns) in zip(
            _KEY_SPLIT.iter_unpack(kraw), _HITS.iter_unpack(vraw), strict=True
        ):
            if buf != buffer:
                skipped += 1
                continue
            if not rows or not hits:
                continue
            hits_in += hits
            if head == _MAPPED:
                text = inet_ntop(AF_INET, v4)
            else:
                text = texts.get(head + v4)
                if text is None:
                    text = texts[head + v4] = _address_text(head + v4)
            categories.add(category)
            first_us = (first_ns + offset_ns) // 1000
            # Two CPUs may stamp a new entry out of order by a few ns: last is at least first.
            last_us = ((last_ns if last_ns > first_ns else first_ns) + offset_ns) // 1000
            hour = first_us // _HOUR_US
            if hour == last_us // _HOUR_US:
                append((hour * 3600, text, category, hits, first_us, last_us))
            else:
                out.rows.extend(hour_rows(text, category, hits, first_us, last_us))
        out.hits += hits_in
        out.counters += count - skipped
        if not skipped:
            out.keys += kraw
        elif skipped < count:
            for i in range(at, count * ks, ks):
                if kraw[i] == buffer:
                    out.keys += kraw[i - at : i - at + ks]
    if rows:
        out.addresses = {row[1] for row in out.rows}
    return out


class Collector:
    """One datapath's per-source map, epoch and counters, opened (NotLoadedError when they are
    not there). The caller holds the datapath's lock (``with Datapath(...) as dp``) for as long
    as it uses this. ``categories``: the catalog's names of category ids."""

    def __init__(self, dp: Datapath, categories: Mapping[int, str] | None = None):
        if not dp.locked:
            raise CollectError("collect needs the datapath's lock: open it with 'with dp:'")
        self.store: Store | None = None
        self.category_names = dict(categories or {})
        self._maps = []
        try:
            for name in (layout.MAP_SOURCES, layout.MAP_SOURCE_EPOCH, layout.MAP_STATS):
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
        index = ct.c_uint32(layout.STAT_EVENT_BASE + layout.Event.SOURCE_LOST)
        return self.stats.lookup_sum(index).value

    def _delete(self, drained: _Drained) -> None:
        if drained.counters:
            self.srcs.delete_batch(bytes(drained.keys))

    def _mark_cleared(self, epoch: int) -> None:
        self.store.add_hit_counts([], {CLEARED: epoch})

    def _commit(self, drained: _Drained, checkpoint: dict[str, int | None]) -> int:
        names = {c: self.category_names[c] for c in drained.categories if c in self.category_names}
        return self.store.add_hit_counts(drained.rows, checkpoint, names)

    # -- one collection ---------------------------------------------------------------------
    def collect(self, store: Store) -> CollectResult:
        """One collection into ``store``: steps 1-4 of the module's docstring."""
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
                f"epoch {epoch}: was {layout.MAP_SOURCE_EPOCH} written by hand?"
            )
        offset_ns = boot_clock_offset_ns()
        previous = (epoch - 1) & 1

        # 1. What a killed collector left in the buffer that is about to go live again.
        recovered = _Drained()
        recovered_rows = 0
        if drained_epoch < epoch - 1:
            wait_for_readers()
            recovered = _drain(self.srcs, previous, offset_ns)
            recovered_rows = self._commit(recovered, {
                **ident, DRAINED: epoch - 1, CLEARED: None, LOST_SEEN: lost_seen,
                LOST_TOTAL: lost_total})
            self._delete(recovered)
        elif cleared != epoch - 1:
            self._delete(_drain(self.srcs, previous, offset_ns, rows=False))

        # 2, 3. Switch, then wait until no query adds to the old buffer.
        self.epoch_map.update(_ZERO, ct.c_uint64(epoch + 1))
        wait_for_readers()

        # 4. Store it, then delete it.
        drained = _drain(self.srcs, epoch & 1, offset_ns)
        lost_now = self.lost_counter()
        lost = max(0, lost_now - lost_seen)
        rows = self._commit(drained, {**ident, DRAINED: epoch, CLEARED: None,
                                      LOST_SEEN: lost_now, LOST_TOTAL: lost_total + lost})
        self._delete(drained)
        self._mark_cleared(epoch)

        return CollectResult(
            epoch=epoch,
            rows=rows + recovered_rows,
            hits=drained.hits + recovered.hits,
            sources=len(drained.addresses | recovered.addresses),
            counters=drained.counters + recovered.counters,
            recovered=recovered.hits,
            lost=lost,
            lost_total=lost_total + lost,
            seconds=time.monotonic() - started,
        )


def collect(dp: Datapath, store: Store, categories: Mapping[int, str] | None = None
            ) -> CollectResult:
    """One collection of the datapath's per-source counters into ``store``; the caller holds
    the datapath's lock. ``categories``: the catalog's names of category ids."""
    with Collector(dp, categories) as collector:
        return collector.collect(store)
