"""The kernel's name table: two buffers of sorted (hash, entry) slots, the live one chosen by
one word, and the bloom pre-filter in front of them (bpf/maps.h says why this is atomic).

Every change of the list, one name or a million, is a ``publish`` of the whole new list: it
is written into the buffer no packet reads, the bloom filter gains the new hashes, the live
word switches, and an RCU grace period passes before ``publish`` returns. From then on no
packet can see the old list, and the old buffer is free for the next change. The maps are
memory-mapped: a million slots are one copy, not a million system calls.

Values travel as 64-bit words whose low 32 bits are a ``shared.Entry`` (``pack_entry``).
"""

from __future__ import annotations

import ctypes as ct
import mmap
import struct
from array import array

from ccxdp.datapath import bulk, libbpf, shared
from ccxdp.datapath.libbpf import wait_for_readers
from ccxdp.datapath.loader import Datapath
from ccxdp.errors import CcxdpError


class TableError(CcxdpError):
    pass


def _mmap(m: libbpf.Map, value_size: int) -> mmap.mmap:
    size = -(-m.info.max_entries * value_size // mmap.PAGESIZE) * mmap.PAGESIZE
    return mmap.mmap(m.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


class NameTable:
    """Open on a loaded datapath; use as a context manager (closes the maps)."""

    def __init__(self, dp: Datapath):
        self._maps = [dp.open_map(n) for n in (
            shared.MAP_NAME_SLOTS, shared.MAP_NAME_RANGES, shared.MAP_NAME_ACTIVE,
            shared.MAP_BLOOM)]
        slots, ranges, self._active, bloom = self._maps
        self.capacity = slots.info.max_entries // 2
        self.index_bits = (ranges.info.max_entries // 2).bit_length() - 1
        self.bloom_bits = bloom.info.max_entries.bit_length() - 1
        self._slots = _mmap(slots, ct.sizeof(shared.NameSlot))
        self._ranges = _mmap(ranges, ct.sizeof(shared.NameRange))
        self._bloom = _mmap(bloom, 8)

    def close(self) -> None:
        for mm in (self._slots, self._ranges, self._bloom):
            mm.close()
        for m in self._maps:
            m.close()

    def __enter__(self) -> NameTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------
    def active(self) -> int:
        return self._active.lookup(ct.c_uint32(0)).value & 1

    def count(self, buffer: int | None = None) -> int:
        """Names in a buffer (the live one by default): the end of its last range."""
        b = self.active() if buffer is None else buffer
        last = ((b + 1) << self.index_bits) - 1
        return int.from_bytes(self._ranges[8 * last + 4 : 8 * last + 8], "little")

    def read(self, buffer: int | None = None) -> tuple[array, array]:
        """(hashes, values) of a buffer, sorted by hash."""
        b = self.active() if buffer is None else buffer
        n = self.count(b)
        start = 16 * b * self.capacity
        words = array("Q")
        words.frombytes(self._slots[start : start + 16 * n])
        return words[0::2], words[1::2]

    def lookup(self, h: int) -> tuple[int, int, int] | None:
        """(action, flags, category) the live list holds for one hash, or None: the range
        of its top bits, then its slots, as the program reads them."""
        b = self.active()
        r = (b << self.index_bits) | (h >> (64 - self.index_bits))
        start, end = struct.unpack_from("<II", self._ranges, 8 * r)
        base = 16 * b * self.capacity
        for i in range(start, end):
            slot_hash, value = struct.unpack_from("<QQ", self._slots, base + 16 * i)
            if slot_hash == h:
                return shared.unpack_entry(value)
        return None

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
        ranges, longest = bulk.build_ranges(hashes, self.index_bits)
        if longest > shared.NAME_RUN_MAX:
            raise TableError(
                f"{longest} names share one range of the name table (at most "
                f"{shared.NAME_RUN_MAX}): a one-in-many-thousands chance; a new hash key "
                "(move the state folder's hash.key away and attach again) makes another "
                "list. Nothing was changed"
            )
        live = self.active()
        spare = 1 - live
        slots = array("Q", bytes(16 * n))
        slots[0::2] = hashes
        slots[1::2] = values
        start = 16 * spare * self.capacity
        self._slots[start : start + 16 * n] = slots.tobytes()
        rstart = 8 * (spare << self.index_bits)
        self._ranges[rstart : rstart + len(ranges) * 8] = ranges.tobytes()
        # The filter must hold the new hashes before they go live, and the old ones until no
        # packet can read the old buffer: first the union, after the switch the new alone.
        new_words = bulk.bloom_words(hashes, self.bloom_bits)
        size = 8 << self.bloom_bits
        union = int.from_bytes(self._bloom[:size], "little") | int.from_bytes(
            new_words.tobytes(), "little")
        self._bloom[:size] = union.to_bytes(size, "little")
        self._active.update(ct.c_uint32(0), ct.c_uint32(spare))
        wait_for_readers()
        self._bloom[:size] = new_words.tobytes()


def count_names(dp: Datapath) -> int:
    """Names in the live buffer of the kernel's name table."""
    with NameTable(dp) as table:
        return table.count()
