"""The kernel's name table: two buffers of buckets of one cache line, the live one chosen by
one word, and the filter in front of them (bpf/maps.h says why a switch is atomic,
ccxdp_shared.h what a bucket holds).

Every change of the list, one name or a million, is a ``publish`` of the whole new list: its
buckets are built (bulk.c) and written into the buffer no packet reads, the live word
switches, and an RCU grace period passes before ``publish`` returns. From then on no packet
can see the old list, and the old buffer is free for the next change. The buckets are
memory-mapped: a million names are one copy, not a million system calls.

Values travel as 64-bit words whose low 32 bits are a ``shared.Entry`` (``pack_entry``).
"""

from __future__ import annotations

import ctypes as ct
import mmap
from array import array

from ccxdp.datapath import bulk, libbpf, shared
from ccxdp.datapath.libbpf import wait_for_readers
from ccxdp.datapath.loader import Datapath
from ccxdp.errors import CcxdpError

_BUCKET = ct.sizeof(shared.NameBucket)


class TableError(CcxdpError):
    pass


def _mmap(m: libbpf.Map, value_size: int) -> mmap.mmap:
    size = -(-m.info.max_entries * value_size // mmap.PAGESIZE) * mmap.PAGESIZE
    return mmap.mmap(m.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


class NameTable:
    """Open on a loaded datapath; use as a context manager (closes the maps)."""

    def __init__(self, dp: Datapath):
        self._maps = [dp.open_map(n) for n in (
            shared.MAP_NAME_BUCKETS, shared.MAP_NAME_ACTIVE, shared.MAP_NAME_FILTER)]
        buckets, self._active, filt = self._maps
        self.buckets = buckets.info.max_entries // 2  # per buffer
        self.capacity = self._word(shared.NACT_CAPACITY)
        self._buckets = _mmap(buckets, _BUCKET)
        self._filter = _mmap(filt, 8)

    def close(self) -> None:
        self._buckets.close()
        self._filter.close()
        for m in self._maps:
            m.close()

    def __enter__(self) -> NameTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _word(self, index: int) -> int:
        return self._active.lookup(ct.c_uint32(index)).value

    def _buffer(self, b: int) -> memoryview:
        size = _BUCKET * self.buckets
        return memoryview(self._buckets)[b * size : (b + 1) * size]

    # -- reading ---------------------------------------------------------------------------
    def active(self) -> int:
        return self._word(shared.NACT_LIVE) & 1

    def count(self, buffer: int | None = None) -> int:
        """Names in a buffer (the live one by default)."""
        b = self.active() if buffer is None else buffer
        return self._word(shared.NACT_COUNT + b)

    def read(self, buffer: int | None = None) -> tuple[array, array]:
        """(hashes, values) of a buffer, sorted by hash."""
        b = self.active() if buffer is None else buffer
        view = self._buffer(b)
        try:
            return bulk.read_buckets(view, self.buckets)
        finally:
            view.release()

    def lookup(self, h: int) -> tuple[int, int, int] | None:
        """(action, flags, category) the live list holds for one hash, or None: the filter,
        its first bucket, then its second if the first spilled, as the program reads them."""
        nb = self.buckets
        first = bulk.bucket_first(h, nb)
        bits = (1 << (h & 63)) | (1 << ((h >> 6) & 63))
        if int.from_bytes(self._filter[8 * first : 8 * first + 8], "little") & bits != bits:
            return None
        view = self._buffer(self.active())
        try:
            for nr, own in ((first, True), (bulk.bucket_second(h, first, nb), False)):
                bucket = shared.NameBucket.from_buffer_copy(view[nr * _BUCKET : (nr + 1) * _BUCKET])
                used, primary = bucket.meta & 7, (bucket.meta >> 3) & 7
                for at in range(0, primary) if own else range(primary, used):
                    if (bucket.tag_lo[at], bucket.tag_hi[at]) == (h & 0xFFFFFFFF,
                                                                  (h >> 32) & 0xFFFF):
                        what = bucket.what[at]
                        return what & 0xF, what >> 4, bucket.category[at]
                if not own or not bucket.meta & shared.NB_SPILLED:
                    return None
            return None
        finally:
            view.release()

    # -- writing ---------------------------------------------------------------------------
    def publish(self, hashes: array, values: array) -> None:
        """Make exactly these (hash, value) pairs, sorted by hash, the live list."""
        n = len(hashes)
        if n > self.capacity:
            raise TableError(
                f"{n} names do not fit the kernel's name table, which holds {self.capacity} "
                "(attach with a larger --max-names after purging the pins); nothing was changed"
            )
        repeat = bulk.first_repeat(hashes)
        if repeat is not None:
            raise TableError(f"hash {hashes[repeat]:#x} listed twice; nothing was changed")
        try:
            buckets = bulk.build_buckets(hashes, values, self.buckets)
        except bulk.BucketError as e:
            raise TableError(f"{e}; nothing was changed") from None
        spare = 1 - self.active()
        size = _BUCKET * self.buckets
        self._buckets[spare * size : (spare + 1) * size] = buckets
        self._active.update(ct.c_uint32(shared.NACT_COUNT + spare), ct.c_uint32(n))
        # The filter must hold the new hashes before they go live, and the old ones until no
        # packet can read the old buffer: first the union, after the switch the new alone.
        new_words = bulk.filter_words(hashes, self.buckets)
        fsize = 8 * self.buckets
        union = int.from_bytes(self._filter[:fsize], "little") | int.from_bytes(
            new_words.tobytes(), "little")
        self._filter[:fsize] = union.to_bytes(fsize, "little")
        self._active.update(ct.c_uint32(shared.NACT_LIVE), ct.c_uint32(spare))
        wait_for_readers()
        self._filter[:fsize] = new_words.tobytes()


def count_names(dp: Datapath) -> int:
    """Names in the live buffer of the kernel's name table."""
    with NameTable(dp) as table:
        return table.count()
