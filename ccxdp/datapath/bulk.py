"""The bulk helper in C (bulk.c): hashing, sorting, merging and diffing a million names.

It is compiled on first use with the system's C compiler into a cache folder
(``CCXDP_CACHE_DIR``, default ``/var/cache/ccxdp``), keyed by the hash of its sources, the
way bcc compiles the XDP program at load time. Each function has a pure-Python twin here,
used when no compiler is available or the cache folder cannot be written (slow, but the
same results; the latter is reported once, through ``report``) and held equal to the C by
tests/datapath/test_bulk.py.

Arrays are ``array.array('Q')`` of unsigned 64-bit numbers: name hashes and the values that
travel with them.
"""

from __future__ import annotations

import ctypes as ct
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path

from ccxdp.datapath import shared
from ccxdp.datapath.hashing import HashKey, name_hash
from ccxdp.errors import CcxdpError

_SOURCE = Path(__file__).with_name("bulk.c")
CACHE_DIR = Path(os.environ.get("CCXDP_CACHE_DIR", "/var/cache/ccxdp"))

_lib: ct.CDLL | None = None
_tried = False


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


# Where the one line about falling back goes: stderr for a command; the daemon sets its log.
report: Callable[[str], None] = _warn


class BulkError(CcxdpError):
    pass


def _build() -> Path | None:
    sources = [_SOURCE, shared.bpf_dir() / "name_hash.h", shared.bpf_dir() / "ccxdp_shared.h"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    target = CACHE_DIR / f"ccxdp_bulk-{digest}.so"
    if target.exists():
        return target
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, suffix=".so")
    except OSError as e:
        # A read-only /var/cache (systemd's ProtectSystem=strict without CacheDirectory=):
        # slower, never fatal.
        report(f"cannot write the bulk helper's cache {CACHE_DIR} ({e.strerror}): using the "
               f"slower pure-Python path; set CCXDP_CACHE_DIR to a writable folder")
        return None
    os.close(fd)
    try:
        subprocess.run(
            [cc, "-O2", "-shared", "-fPIC", f"-I{shared.bpf_dir()}", "-o", tmp, str(_SOURCE)],
            check=True, capture_output=True, text=True,
        )
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # concurrent builders: each renames a whole file
    except (OSError, subprocess.CalledProcessError):
        Path(tmp).unlink(missing_ok=True)
        return None
    return target


def lib() -> ct.CDLL | None:
    """The compiled helper, or None when it cannot be built here (no C compiler)."""
    global _lib, _tried
    if not _tried:
        _tried = True
        path = _build()
        if path is not None:
            _lib = _bind(ct.CDLL(str(path)))
    return _lib


def _bind(so: ct.CDLL) -> ct.CDLL:
    u64p, sz = ct.c_void_p, ct.c_size_t
    so.ccxdp_hash_names.argtypes = [ct.c_char_p, sz, ct.c_char_p, u64p, sz]
    so.ccxdp_hash_names.restype = ct.c_long
    so.ccxdp_sort_pairs.argtypes = [u64p, u64p, sz]
    so.ccxdp_sort_pairs.restype = ct.c_int
    so.ccxdp_first_repeat.argtypes = [u64p, sz]
    so.ccxdp_first_repeat.restype = ct.c_long
    so.ccxdp_build_buckets.argtypes = [u64p, u64p, sz, ct.c_uint32, ct.c_void_p, u64p]
    so.ccxdp_build_buckets.restype = ct.c_int
    so.ccxdp_read_buckets.argtypes = [ct.c_void_p, ct.c_uint32, u64p, u64p]
    so.ccxdp_read_buckets.restype = sz
    so.ccxdp_filter_set.argtypes = [u64p, sz, ct.c_uint32, u64p]
    so.ccxdp_filter_set.restype = None
    so.ccxdp_merge.argtypes = [u64p, u64p, sz, u64p, sz, u64p, u64p, sz, u64p, u64p]
    so.ccxdp_merge.restype = sz
    so.ccxdp_diff.argtypes = [u64p, u64p, sz, u64p, u64p, sz, u64p, u64p, u64p, u64p]
    so.ccxdp_diff.restype = None
    so.ccxdp_line_hashes.argtypes = [ct.c_char_p, sz, ct.c_char_p, u64p, u64p, sz]
    so.ccxdp_line_hashes.restype = sz
    so.ccxdp_unique.argtypes = [u64p, u64p, sz]
    so.ccxdp_unique.restype = sz
    so.ccxdp_unique_agreeing.argtypes = [u64p, u64p, sz]
    so.ccxdp_unique_agreeing.restype = ct.c_long
    so.ccxdp_join.argtypes = [u64p, sz, u64p, sz, u64p]
    so.ccxdp_join.restype = None
    so.ccxdp_gather.argtypes = [u64p, sz, u64p, sz, u64p]
    so.ccxdp_gather.restype = ct.c_int
    so.ccxdp_sort_positions.argtypes = [u64p, u64p, sz]
    so.ccxdp_sort_positions.restype = ct.c_int
    so.ccxdp_split_join.argtypes = [u64p, u64p, u64p, sz, u64p, u64p, u64p, u64p]
    so.ccxdp_split_join.restype = None
    return so


def _ptr(a: array) -> int:
    return a.buffer_info()[0] if len(a) else 0


def _check_pair(h: array, v: array) -> None:
    if len(h) != len(v):
        raise ValueError(f"{len(h)} hashes but {len(v)} values")


# -- the functions, each with its pure-Python twin -------------------------------------------
def hash_names(names: Sequence[str], key: HashKey, *, use_c: bool = True) -> array:
    """The kernel key of each normalized name, in order."""
    so = lib() if use_c else None
    if so is None:
        return array("Q", (name_hash(n, key) for n in names))
    text = "\n".join(names).encode("ascii")
    out = array("Q", bytes(8 * len(names)))
    got = so.ccxdp_hash_names(text, len(text), key.to_bytes(), _ptr(out), len(names))
    if got < 0:
        raise BulkError(f"not a valid normalized name: {names[-got - 1]!r}")
    if got != len(names):  # an empty last name ends the text early
        raise BulkError(f"not a valid normalized name: {names[got]!r}")
    return out


def sort_pairs(h: array, v: array, *, use_c: bool = True) -> tuple[array, array]:
    """Both arrays ordered by hash (a new pair of arrays)."""
    _check_pair(h, v)
    so = lib() if use_c else None
    if so is None:
        order = sorted(range(len(h)), key=h.__getitem__)
        return array("Q", (h[i] for i in order)), array("Q", (v[i] for i in order))
    h, v = array("Q", h), array("Q", v)
    if so.ccxdp_sort_pairs(_ptr(h), _ptr(v), len(h)) != 0:
        raise MemoryError("sorting name hashes")
    return h, v


def first_repeat(h: array, *, use_c: bool = True) -> int | None:
    """Position of the first hash equal to its predecessor in a sorted array, or None."""
    so = lib() if use_c else None
    if so is None:
        return next((i for i in range(1, len(h)) if h[i] == h[i - 1]), None)
    at = so.ccxdp_first_repeat(_ptr(h), len(h))
    return None if at < 0 else at


class BucketError(BulkError):
    pass


# struct ccxdp_name_bucket (bpf/ccxdp_shared.h) as offsets into its 64 bytes.
_SLOTS = shared.NAME_BUCKET_SLOTS
_BUCKET = ct.sizeof(shared.NameBucket)
_TAG_LO, _TAG_HI, _CATEGORY, _WHAT, _META = (
    getattr(shared.NameBucket, f).offset for f in ("tag_lo", "tag_hi", "category", "what", "meta"))
_EVICTIONS_MAX = 4096  # bulk.c's EVICTIONS_MAX


def bucket_first(h: int, nb: int) -> int:
    """name_bucket_first (bpf/name_hash.h)."""
    return ((h >> 32) * nb) >> 32


def bucket_second(h: int, first: int, nb: int) -> int:
    """name_bucket_second (bpf/name_hash.h)."""
    b = first + 1 + (((h & 0xFFFFFFFF) * (nb - 1)) >> 32)
    return b - nb if b >= nb else b


def _slot_hash(buf: bytearray | memoryview | bytes, nr: int, at: int, nb: int) -> int:
    o = nr * _BUCKET
    lo = int.from_bytes(buf[o + _TAG_LO + 4 * at : o + _TAG_LO + 4 * at + 4], "little")
    hi = int.from_bytes(buf[o + _TAG_HI + 2 * at : o + _TAG_HI + 2 * at + 2], "little")
    first = nr
    if at >= (buf[o + _META] >> 3) & 7:
        off = 1 + ((lo * (nb - 1)) >> 32)
        first = nr - off if nr >= off else nr + nb - off
    least = ((first << 32) + nb - 1) // nb
    top = (least & ~0xFFFF) | hi
    if top < least:
        top += 0x10000
    return top << 32 | lo


def _slot_value(buf: bytearray | memoryview | bytes, nr: int, at: int) -> int:
    o = nr * _BUCKET
    what = buf[o + _WHAT + at]
    category = int.from_bytes(buf[o + _CATEGORY + 2 * at : o + _CATEGORY + 2 * at + 2], "little")
    return (what & 0xF) | (what >> 4) << 8 | category << 16


def _put(buf: bytearray, nr: int, at: int, h: int, v: int) -> None:
    o = nr * _BUCKET
    buf[o + _TAG_LO + 4 * at : o + _TAG_LO + 4 * at + 4] = (h & 0xFFFFFFFF).to_bytes(4, "little")
    buf[o + _TAG_HI + 2 * at : o + _TAG_HI + 2 * at + 2] = ((h >> 32) & 0xFFFF).to_bytes(
        2, "little")
    buf[o + _WHAT + at] = (v & 0xF) | ((v >> 8) & 0xF) << 4
    buf[o + _CATEGORY + 2 * at : o + _CATEGORY + 2 * at + 2] = ((v >> 16) & 0xFFFF).to_bytes(
        2, "little")


def _move(buf: bytearray, nr: int, to: int, frm: int) -> None:
    o = nr * _BUCKET
    for base, width in ((_TAG_LO, 4), (_TAG_HI, 2), (_WHAT, 1), (_CATEGORY, 2)):
        a, b = o + base + width * to, o + base + width * frm
        buf[a : a + width] = buf[b : b + width]
        buf[b : b + width] = bytes(width)


def _set_counts(buf: bytearray, nr: int, used: int, primary: int) -> None:
    o = nr * _BUCKET + _META
    buf[o] = (buf[o] & shared.NB_SPILLED) | used | primary << 3


def build_buckets(h: array, v: array, nb: int, *, use_c: bool = True) -> bytearray:
    """One buffer of the name table (bpf/maps.h): nb buckets holding the sorted, distinct
    hashes h with their values v."""
    _check_pair(h, v)
    out = bytearray(_BUCKET * nb)
    so = lib() if use_c else None
    if so is not None:
        bad = array("Q", [0])
        buf = (ct.c_char * len(out)).from_buffer(out)
        got = so.ccxdp_build_buckets(_ptr(h), _ptr(v), len(h), nb, ct.addressof(buf), _ptr(bad))
        del buf
        if got == -1:
            raise BucketError(f"entry {v[bad[0]]:#x} of hash {h[bad[0]]:#x} does not fit a slot")
        if got == -3:
            raise MemoryError("building the name table")
        if got != 0:
            raise BucketError(f"{len(h)} names do not fit {nb} buckets")
        return out
    spill = []
    for i, (x, val) in enumerate(zip(h, v, strict=True)):
        if val & ~0xFFFF0F0F:
            raise BucketError(f"entry {v[i]:#x} of hash {h[i]:#x} does not fit a slot")
        nr = bucket_first(x, nb)
        used = out[nr * _BUCKET + _META] & 7
        if used < _SLOTS:
            _put(out, nr, used, x, val)
            _set_counts(out, nr, used + 1, used + 1)
        else:
            spill.append(i)
    evictions = 0
    for i in spill:
        ch, cv = h[i], v[i]
        first = bucket_first(ch, nb)
        while True:
            second = bucket_second(ch, first, nb)
            out[first * _BUCKET + _META] |= shared.NB_SPILLED
            meta = out[second * _BUCKET + _META]
            used, primary = meta & 7, (meta >> 3) & 7
            if used < _SLOTS:
                _put(out, second, used, ch, cv)
                _set_counts(out, second, used + 1, primary)
                break
            evictions += 1
            if primary == 0 or evictions > _EVICTIONS_MAX:
                raise BucketError(f"{len(h)} names do not fit {nb} buckets")
            at = evictions % primary
            eh, ev = _slot_hash(out, second, at, nb), _slot_value(out, second, at)
            if at != primary - 1:
                _move(out, second, at, primary - 1)
            if used - 1 != primary - 1:
                _move(out, second, primary - 1, used - 1)
            _put(out, second, used - 1, ch, cv)
            _set_counts(out, second, used, primary - 1)
            ch, cv, first = eh, ev, second
    return out


def read_buckets(buf: bytes | bytearray | memoryview, nb: int, *, use_c: bool = True
                 ) -> tuple[array, array]:
    """The (hashes, values) one buffer of nb buckets holds, sorted by hash."""
    so = lib() if use_c else None
    if so is None:
        h, v = array("Q"), array("Q")
        for nr in range(nb):
            for at in range(buf[nr * _BUCKET + _META] & 7):
                h.append(_slot_hash(buf, nr, at, nb))
                v.append(_slot_value(buf, nr, at))
        return sort_pairs(h, v, use_c=False)
    raw = bytes(buf)
    n = sum(raw[_META::_BUCKET].translate(_USED))
    h, v = array("Q", bytes(8 * n)), array("Q", bytes(8 * n))
    got = so.ccxdp_read_buckets(raw, nb, _ptr(h), _ptr(v))
    assert got == n
    return sort_pairs(h, v)


_USED = bytes(b & 7 for b in range(256))


def filter_words(h: array, nb: int, *, use_c: bool = True) -> array:
    """The name filter's nb words (bpf/maps.h) holding exactly these hashes."""
    words = array("Q", bytes(8 * nb))
    so = lib() if use_c else None
    if so is None:
        for x in h:
            words[bucket_first(x, nb)] |= (1 << (x & 63)) | (1 << ((x >> 6) & 63))
        return words
    so.ccxdp_filter_set(_ptr(h), len(h), nb, _ptr(words))
    return words


def merge(
    cur_h: array, cur_v: array, del_h: array, add_h: array, add_v: array,
    *, use_c: bool = True,
) -> tuple[array, array]:
    """(cur without del_h) with (add_h, add_v) put in, all sorted; add wins over cur."""
    _check_pair(cur_h, cur_v)
    _check_pair(add_h, add_v)
    so = lib() if use_c else None
    if so is None:
        gone = set(del_h)
        merged = {h: v for h, v in zip(cur_h, cur_v, strict=True) if h not in gone}
        merged.update(zip(add_h, add_v, strict=True))
        keys = sorted(merged)
        return array("Q", keys), array("Q", (merged[k] for k in keys))
    size = len(cur_h) + len(add_h)
    out_h, out_v = array("Q", bytes(8 * size)), array("Q", bytes(8 * size))
    n = so.ccxdp_merge(
        _ptr(cur_h), _ptr(cur_v), len(cur_h), _ptr(del_h), len(del_h),
        _ptr(add_h), _ptr(add_v), len(add_h), _ptr(out_h), _ptr(out_v),
    )
    del out_h[n:], out_v[n:]
    return out_h, out_v


def diff(
    old_h: array, old_v: array, new_h: array, new_v: array, *, use_c: bool = True
) -> tuple[array, array, array]:
    """Positions (added in new, removed in old, changed in new) between two sorted
    listings."""
    _check_pair(old_h, old_v)
    _check_pair(new_h, new_v)
    so = lib() if use_c else None
    if so is None:
        old = dict(zip(old_h, old_v, strict=True))
        new = dict(zip(new_h, new_v, strict=True))
        added = array("Q", (j for j, h in enumerate(new_h) if h not in old))
        removed = array("Q", (i for i, h in enumerate(old_h) if h not in new))
        changed = array("Q", (j for j, h in enumerate(new_h) if h in old and old[h] != new_v[j]))
        return added, removed, changed
    added = array("Q", bytes(8 * len(new_h)))
    removed = array("Q", bytes(8 * len(old_h)))
    changed = array("Q", bytes(8 * len(new_h)))
    counts = array("Q", bytes(24))
    so.ccxdp_diff(
        _ptr(old_h), _ptr(old_v), len(old_h), _ptr(new_h), _ptr(new_v), len(new_h),
        _ptr(added), _ptr(removed), _ptr(changed), _ptr(counts),
    )
    del added[counts[0]:], removed[counts[1]:], changed[counts[2]:]
    return added, removed, changed


def line_hashes(text: bytes, key: HashKey, *, use_c: bool = True) -> tuple[array, array]:
    """(hashes, start offsets) of the lines of text, a keyed hash per line ('\r\n' and
    '\n' end lines alike; ASCII case is folded, as in names)."""
    so = lib() if use_c else None
    if so is None:
        from ccxdp.datapath.hashing import _mix, _nh_sums

        hashes, starts, pos = array("Q"), array("Q"), 0
        while pos < len(text):
            end = text.find(b"\n", pos)
            end = len(text) if end < 0 else end
            line = text[pos:end].removesuffix(b"\r").lower()
            state = key.k0
            for piece in [line[i:i + 63] for i in range(0, len(line), 63)] or [b""]:
                a, b = _nh_sums(bytes([len(piece)]) + piece, key.nh)
                state = _mix(_mix(state ^ a) ^ b)
            hashes.append(state ^ key.k1)
            starts.append(pos)
            pos = end + 1
        return hashes, starts
    n = text.count(b"\n") + 1
    hashes, starts = array("Q", bytes(8 * n)), array("Q", bytes(8 * n))
    got = so.ccxdp_line_hashes(text, len(text), key.to_bytes(), _ptr(hashes), _ptr(starts), n)
    del hashes[got:], starts[got:]
    return hashes, starts


NOT_FOUND = (1 << 64) - 1


def unique(h: array, v: array, *, use_c: bool = True) -> tuple[array, array]:
    """The first of each run of equal hashes of a sorted array, with its value."""
    _check_pair(h, v)
    so = lib() if use_c else None
    if so is None:
        keep = [i for i in range(len(h)) if i == 0 or h[i] != h[i - 1]]
        return array("Q", (h[i] for i in keep)), array("Q", (v[i] for i in keep))
    h, v = array("Q", h), array("Q", v)
    n = so.ccxdp_unique(_ptr(h), _ptr(v), len(h))
    del h[n:], v[n:]
    return h, v


def unique_agreeing(h: array, v: array, *, use_c: bool = True) -> tuple[array, array] | None:
    """unique(), or None when a repeated hash carries another value than its first."""
    _check_pair(h, v)
    so = lib() if use_c else None
    if so is None:
        if any(h[i] == h[i - 1] and v[i] != v[i - 1] for i in range(1, len(h))):
            return None
        return unique(h, v, use_c=False)
    h, v = array("Q", h), array("Q", v)
    n = so.ccxdp_unique_agreeing(_ptr(h), _ptr(v), len(h))
    if n < 0:
        return None
    del h[n:], v[n:]
    return h, v


def join(old: array, new: array, *, use_c: bool = True) -> array:
    """For each hash of ``new`` (sorted, unique): its position in ``old`` (sorted, unique),
    or NOT_FOUND."""
    so = lib() if use_c else None
    if so is None:
        at = {h: i for i, h in enumerate(old)}
        return array("Q", (at.get(h, NOT_FOUND) for h in new))
    out = array("Q", bytes(8 * len(new)))
    so.ccxdp_join(_ptr(old), len(old), _ptr(new), len(new), _ptr(out))
    return out


def gather(src: array, idx: array, *, use_c: bool = True) -> array:
    """src[i] for each i of idx."""
    so = lib() if use_c else None
    if so is None:
        return array("Q", (src[i] for i in idx))
    out = array("Q", bytes(8 * len(idx)))
    if so.ccxdp_gather(_ptr(src), len(src), _ptr(idx), len(idx), _ptr(out)) != 0:
        raise IndexError("gather: a position beyond the source")
    return out


def sort_positions(h: array, *, use_c: bool = True) -> tuple[array, array]:
    """(h sorted, each one's position in h)."""
    so = lib() if use_c else None
    if so is None:
        return sort_pairs(h, array("Q", range(len(h))), use_c=False)
    h, pos = array("Q", h), array("Q", bytes(8 * len(h)))
    if so.ccxdp_sort_positions(_ptr(h), _ptr(pos), len(h)) != 0:
        raise MemoryError("sorting hashes")
    return h, pos


def split_join(at: array, first: array, keys: array, *, use_c: bool = True
               ) -> tuple[array, array, array]:
    """From join()'s result: (first[j] where at[j] is NOT_FOUND, the other at[j], and their
    keys[j])."""
    so = lib() if use_c else None
    if so is None:
        fresh = array("Q", (f for a, f in zip(at, first, strict=True) if a == NOT_FOUND))
        found = array("Q", (a for a in at if a != NOT_FOUND))
        found_keys = array("Q", (k for a, k in zip(at, keys, strict=True) if a != NOT_FOUND))
        return fresh, found, found_keys
    n = len(at)
    fresh, found, found_keys = (array("Q", bytes(8 * n)) for _ in range(3))
    counts = array("Q", bytes(16))
    so.ccxdp_split_join(_ptr(at), _ptr(first), _ptr(keys), n, _ptr(fresh), _ptr(found),
                        _ptr(found_keys), _ptr(counts))
    del fresh[counts[0]:], found[counts[1]:], found_keys[counts[1]:]
    return fresh, found, found_keys
