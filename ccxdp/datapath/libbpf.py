"""Thin typed access to BPF objects through libbpf's syscall wrappers.

Why this exists: the XDP program and its maps are compiled and loaded by bcc, which pins the
maps under bpffs (``/sys/fs/bpf/ccxdp/...``).  bcc's ``Table`` classes can only be had from a
compiled ``BPF`` module, so every CLI invocation going through bcc would recompile the C
(seconds of clang, kernel headers, root-only side effects) just to read a counter.  Later CLI
invocations must reach the pinned maps *without compiling anything*: this module opens the pins
with ``bpf_obj_get`` and talks to the maps with libbpf's thin wrappers around the ``bpf()``
syscall (``libbpf.so.1``, Debian package ``libbpf1``; no headers and no compiler are needed at
run time).

Keys and values are ctypes types (``ctypes.Structure`` subclasses or simple types such as
``ctypes.c_uint64``) whose layout must match the C side; ``Map.open_pinned`` refuses a pinned map
whose key/value sizes differ from the Python layout (``LayoutMismatch``), which is what a stale pin
left by an older build looks like.

Error convention: libbpf 1.x returns ``-errno`` from every wrapper used here (and sets
``errno``); each failure is raised as ``BpfError`` (an ``OSError``) whose ``errno`` is the kernel's
and whose message names the object (path, fd or id) and the operation.  "Absent" is not an error
where a Python caller naturally expects it: ``Map.lookup`` returns ``None``, ``Map.delete``
returns ``False`` and ``Map.delete_batch`` skips absent keys (see its docstring).
"""

from __future__ import annotations

import array
import ctypes
import errno as _errno
import functools
import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_LOCK",
    "BPF_F_NO_PREALLOC",
    "BPF_NOEXIST",
    "ENOTSUPP",
    "PERCPU_MAP_TYPES",
    "BatchError",
    "BpfError",
    "LayoutMismatch",
    "Map",
    "MapInfo",
    "MapType",
    "PerCpuMap",
    "ProgInfo",
    "ProgType",
    "TestRunResult",
    "close",
    "map_create",
    "map_info",
    "obj_get",
    "obj_pin",
    "pack_insn",
    "possible_cpus",
    "prog_get_fd_by_id",
    "prog_info",
    "prog_load",
    "prog_map_ids",
    "prog_test_run",
    "sum_values",
]

LIBBPF_SONAME = "libbpf.so.1"

# Update flags (uapi enum).
BPF_ANY = 0  # create new element or update existing
BPF_NOEXIST = 1  # create new element only if it did not exist
BPF_EXIST = 2  # update existing element only
BPF_F_LOCK = 4  # spin_lock-ed lookup/update
# Map creation flags.
BPF_F_NO_PREALLOC = 1 << 0

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8

# Kernel-internal "not supported" errno that leaks to user space for missing map ops
# (e.g. batch ops on a map type without them).  os.strerror() does not know it.
ENOTSUPP = 524


class MapType(IntEnum):
    """``enum bpf_map_type`` (uapi)."""

    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    SOCKMAP = 15
    CPUMAP = 16
    XSKMAP = 17
    SOCKHASH = 18
    CGROUP_STORAGE = 19
    REUSEPORT_SOCKARRAY = 20
    PERCPU_CGROUP_STORAGE = 21
    QUEUE = 22
    STACK = 23
    SK_STORAGE = 24
    DEVMAP_HASH = 25
    STRUCT_OPS = 26
    RINGBUF = 27
    INODE_STORAGE = 28
    TASK_STORAGE = 29
    BLOOM_FILTER = 30
    USER_RINGBUF = 31
    CGRP_STORAGE = 32


PERCPU_MAP_TYPES = frozenset(
    {
        MapType.PERCPU_HASH,
        MapType.PERCPU_ARRAY,
        MapType.LRU_PERCPU_HASH,
        MapType.PERCPU_CGROUP_STORAGE,
    }
)


class ProgType(IntEnum):
    """``enum bpf_prog_type`` (uapi)."""

    UNSPEC = 0
    SOCKET_FILTER = 1
    KPROBE = 2
    SCHED_CLS = 3
    SCHED_ACT = 4
    TRACEPOINT = 5
    XDP = 6
    PERF_EVENT = 7
    CGROUP_SKB = 8
    CGROUP_SOCK = 9
    LWT_IN = 10
    LWT_OUT = 11
    LWT_XMIT = 12
    SOCK_OPS = 13
    SK_SKB = 14
    CGROUP_DEVICE = 15
    SK_MSG = 16
    RAW_TRACEPOINT = 17
    CGROUP_SOCK_ADDR = 18
    LWT_SEG6LOCAL = 19
    LIRC_MODE2 = 20
    SK_REUSEPORT = 21
    FLOW_DISSECTOR = 22
    CGROUP_SYSCTL = 23
    RAW_TRACEPOINT_WRITABLE = 24
    CGROUP_SOCKOPT = 25
    TRACING = 26
    STRUCT_OPS = 27
    EXT = 28
    LSM = 29
    SK_LOOKUP = 30
    SYSCALL = 31


def _enum_or_int(enum: type[IntEnum], value: int) -> int:
    try:
        return enum(value)
    except ValueError:
        return value


def _enum_name(enum: type[IntEnum], value: int) -> str:
    member = _enum_or_int(enum, value)
    return member.name.lower() if isinstance(member, enum) else str(value)


# --------------------------------------------------------------------------------------------
# Errors


def _strerror(err: int) -> str:
    if err == ENOTSUPP:
        return "Operation not supported (ENOTSUPP)"
    return os.strerror(err)


class BpfError(OSError):
    """A failed BPF operation.

    ``errno`` is the kernel's errno, ``strerror`` its text and ``str(err)`` a full message
    naming the object and the operation, e.g.
    ``cannot open pinned map /sys/fs/bpf/ccxdp/x: No such file or directory``.
    """

    def __init__(self, err: int, what: str, detail: str | None = None):
        super().__init__(err, _strerror(err))
        self.what = what
        self.message = f"{what}: {detail if detail is not None else _strerror(err)}"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keep pickling (multiprocessing, pytest-xdist) working
        return (type(self), (self.errno, self.what, self.message.partition(": ")[2]))


class LayoutMismatch(BpfError):
    """A map's kernel-side layout (type, key or value size) differs from the Python types.

    Typically a pin left by an older ccxdp build: purge the pins and load again.
    """

    def __init__(self, what: str, detail: str):
        super().__init__(_errno.EINVAL, what, detail)

    def __reduce__(self):
        return (type(self), (self.what, self.message.partition(": ")[2]))


class BatchError(BpfError):
    """A batch operation failed part-way; ``done`` elements had been processed before it."""

    def __init__(self, err: int, what: str, done: int):
        super().__init__(err, what, f"{_strerror(err)} (after {done} elements)")
        self.done = done

    def __reduce__(self):
        return (type(self), (self.errno, self.what, self.done))


def _check(ret: int, what: str | Any) -> int:
    """Raise BpfError for a libbpf 1.x ``-errno`` return; ``what`` may be a zero-arg callable."""
    if ret < 0:
        raise BpfError(-ret, what() if callable(what) else what)
    return ret


# --------------------------------------------------------------------------------------------
# ctypes mirrors of libbpf 1.1 / uapi structures


class _BpfMapInfo(ctypes.Structure):
    """``struct bpf_map_info`` (uapi, as of libbpf 1.1 / Linux 6.1)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class _BpfProgInfo(ctypes.Structure):
    """``struct bpf_prog_info`` (uapi, as of libbpf 1.1 / Linux 6.1)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * BPF_TAG_SIZE),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32, 1),
        ("_pad0", ctypes.c_uint32, 31),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
        ("attach_btf_obj_id", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("_pad1", ctypes.c_uint32),
    ]


class _BpfMapCreateOpts(ctypes.Structure):
    """libbpf 1.1 ``struct bpf_map_create_opts``."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
        ("numa_node", ctypes.c_uint32),
        ("map_ifindex", ctypes.c_uint32),
    ]


class _BpfProgLoadOpts(ctypes.Structure):
    """libbpf 1.1 ``struct bpf_prog_load_opts``."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("attempts", ctypes.c_int),
        ("expected_attach_type", ctypes.c_int),
        ("prog_btf_fd", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_ifindex", ctypes.c_uint32),
        ("kern_version", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
        ("attach_btf_obj_fd", ctypes.c_uint32),
        ("fd_array", ctypes.c_void_p),
        ("func_info", ctypes.c_void_p),
        ("func_info_cnt", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_void_p),
        ("line_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_void_p),
    ]


class _BpfMapBatchOpts(ctypes.Structure):
    """libbpf 1.1 ``struct bpf_map_batch_opts``."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _BpfTestRunOpts(ctypes.Structure):
    """libbpf 1.1 ``struct bpf_test_run_opts``."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def _opts(struct_type: type[ctypes.Structure], **fields: Any) -> ctypes.Structure:
    opts = struct_type(**fields)
    opts.sz = ctypes.sizeof(struct_type)
    return opts


# --------------------------------------------------------------------------------------------
# libbpf loading (lazy: importing this module never requires libbpf)

_P = ctypes.c_void_p
_U32 = ctypes.c_uint32
_INT = ctypes.c_int

_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "bpf_obj_get": (_INT, [ctypes.c_char_p]),
    "bpf_obj_pin": (_INT, [_INT, ctypes.c_char_p]),
    "bpf_obj_get_info_by_fd": (_INT, [_INT, _P, _P]),
    "bpf_prog_get_fd_by_id": (_INT, [_U32]),
    "bpf_map_create": (_INT, [_INT, ctypes.c_char_p, _U32, _U32, _U32, _P]),
    "bpf_prog_load": (_INT, [_INT, ctypes.c_char_p, ctypes.c_char_p, _P, ctypes.c_size_t, _P]),
    "bpf_map_lookup_elem": (_INT, [_INT, _P, _P]),
    "bpf_map_update_elem": (_INT, [_INT, _P, _P, ctypes.c_uint64]),
    "bpf_map_delete_elem": (_INT, [_INT, _P]),
    "bpf_map_get_next_key": (_INT, [_INT, _P, _P]),
    "bpf_map_lookup_batch": (_INT, [_INT, _P, _P, _P, _P, _P, _P]),
    "bpf_map_update_batch": (_INT, [_INT, _P, _P, _P, _P]),
    "bpf_map_delete_batch": (_INT, [_INT, _P, _P, _P]),
    "bpf_prog_test_run_opts": (_INT, [_INT, _P]),
}


_MEMBARRIER = 324  # x86-64 syscall number
_MEMBARRIER_CMD_GLOBAL = 1  # the kernel runs synchronize_rcu() for it


def wait_for_readers() -> None:
    """Return once every XDP run that started before the call has finished. XDP programs run
    inside RCU read-side sections, and MEMBARRIER_CMD_GLOBAL waits for a grace period: what
    makes a switch of a live word (name table, settings, collection epoch) complete."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_MEMBARRIER, _MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
        err = ctypes.get_errno()
        raise BpfError(err, "membarrier(MEMBARRIER_CMD_GLOBAL) failed")


@functools.cache
def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
    except OSError as exc:
        raise BpfError(
            _errno.ENOENT,
            f"cannot load {LIBBPF_SONAME}",
            f"{exc} (install the Debian package libbpf1)",
        ) from exc
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


# --------------------------------------------------------------------------------------------
# Objects: pins, fds, info


def _fs(path: str | os.PathLike[str]) -> bytes:
    return os.fsencode(path)


def obj_get(path: str | os.PathLike[str], kind: str = "object") -> int:
    """Open a pinned BPF object (map, program, link) and return a new fd (caller closes it).

    ``kind`` only words the error message ("cannot open pinned map ...").
    """
    return _check(_lib().bpf_obj_get(_fs(path)), lambda: f"cannot open pinned {kind} {path}")


def obj_pin(fd: int, path: str | os.PathLike[str]) -> None:
    """Pin the object behind ``fd`` at ``path`` (a bpffs path; the parent folder must exist)."""
    _check(_lib().bpf_obj_pin(fd, _fs(path)), lambda: f"cannot pin fd {fd} at {path}")


def close(fd: int) -> None:
    """Close a BPF object fd."""
    os.close(fd)


def _fd_kind(fd: int) -> str | None:
    """``bpf-map``, ``bpf-prog``, ``bpf_link``... from /proc, or None when unknown."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return target.removeprefix("anon_inode:")


def _expect_kind(fd: int, kind: str, what: str) -> None:
    actual = _fd_kind(fd)
    if actual is not None and actual != kind:
        raise BpfError(_errno.EINVAL, what, f"fd {fd} is {actual}, not a {kind}")


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says about a map (``BPF_OBJ_GET_INFO_BY_FD``)."""

    type: int  # MapType member when known
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str

    @property
    def type_name(self) -> str:
        return _enum_name(MapType, self.type)

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_MAP_TYPES


@dataclass(frozen=True)
class ProgInfo:
    """What the kernel says about a program (``BPF_OBJ_GET_INFO_BY_FD``)."""

    type: int  # ProgType member when known
    id: int
    name: str
    tag: str  # 16 hex digits, as bpftool prints it
    verified_insns: int  # instructions the verifier processed to load it (0: kernel < 5.16)


def _get_info(fd: int, info: ctypes.Structure, what: str) -> None:
    info_len = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(info_len)), what)


def map_info(fd: int) -> MapInfo:
    """Kernel-side description of the map behind ``fd``."""
    what = f"cannot get map info for fd {fd}"
    _expect_kind(fd, "bpf-map", what)
    raw = _BpfMapInfo()
    _get_info(fd, raw, what)
    return MapInfo(
        type=_enum_or_int(MapType, raw.type),
        id=raw.id,
        key_size=raw.key_size,
        value_size=raw.value_size,
        max_entries=raw.max_entries,
        map_flags=raw.map_flags,
        name=raw.name.decode(errors="replace"),
    )


def map_memlock(fd: int) -> int:
    """Bytes of kernel memory the map behind ``fd`` uses, as the kernel accounts them (the
    "memlock" line of /proc/self/fdinfo, what bpftool shows)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    raise BpfError(_errno.EINVAL, f"fd {fd} has no memlock in /proc/self/fdinfo: not a map?")


def prog_info(fd: int) -> ProgInfo:
    """Kernel-side description of the program behind ``fd``."""
    what = f"cannot get program info for fd {fd}"
    _expect_kind(fd, "bpf-prog", what)
    raw = _BpfProgInfo()
    _get_info(fd, raw, what)
    return ProgInfo(
        type=_enum_or_int(ProgType, raw.type),
        id=raw.id,
        name=raw.name.decode(errors="replace"),
        tag=bytes(raw.tag).hex(),
        verified_insns=raw.verified_insns,
    )


def prog_map_ids(fd: int) -> list[int]:
    """Ids of the maps used by the program behind ``fd``."""
    what = f"cannot get map ids of program fd {fd}"
    _expect_kind(fd, "bpf-prog", what)
    raw = _BpfProgInfo()
    _get_info(fd, raw, what)
    n = raw.nr_map_ids
    if n == 0:
        return []
    ids = (ctypes.c_uint32 * n)()
    raw = _BpfProgInfo(nr_map_ids=n, map_ids=ctypes.addressof(ids))
    _get_info(fd, raw, what)
    return list(ids[: min(n, raw.nr_map_ids)])


def prog_get_fd_by_id(prog_id: int) -> int:
    """New fd for the loaded program with this id (caller closes it)."""
    return _check(
        _lib().bpf_prog_get_fd_by_id(prog_id), lambda: f"cannot open BPF program id {prog_id}"
    )


def map_create(
    map_type: int,
    name: str,
    key_size: int,
    value_size: int,
    max_entries: int,
    flags: int = 0,
) -> int:
    """Create a map (no BTF) and return its fd.  ``name``: at most 15 bytes, [A-Za-z0-9_.]."""
    bname = name.encode()
    if len(bname) >= BPF_OBJ_NAME_LEN:
        raise ValueError(f"BPF map name {name!r} is longer than {BPF_OBJ_NAME_LEN - 1} bytes")
    opts = _opts(_BpfMapCreateOpts, map_flags=flags)
    return _check(
        _lib().bpf_map_create(
            int(map_type), bname, key_size, value_size, max_entries, ctypes.byref(opts)
        ),
        lambda: f"cannot create {_enum_name(MapType, map_type)} map {name!r}",
    )


# --------------------------------------------------------------------------------------------
# Programs


def pack_insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One ``struct bpf_insn`` (8 bytes, little-endian host), e.g. ``pack_insn(0x95)`` = exit."""
    regs = (dst & 0xF) | ((src & 0xF) << 4)
    return (
        bytes((code & 0xFF, regs))
        + off.to_bytes(2, "little", signed=True)
        + imm.to_bytes(4, "little", signed=True)
    )


def prog_load(
    prog_type: int,
    insns: bytes,
    license: str = "GPL",
    name: str | None = None,
    *,
    expected_attach_type: int = 0,
    log_size: int = 1 << 16,
) -> int:
    """Load raw ``struct bpf_insn`` bytes as a program and return its fd.

    On a verifier rejection the error message ends with the tail of the verifier log.
    """
    if len(insns) == 0 or len(insns) % 8:
        raise ValueError(f"insns must be a non-empty multiple of 8 bytes, got {len(insns)}")
    bname = name.encode() if name else None
    if bname is not None and len(bname) >= BPF_OBJ_NAME_LEN:
        raise ValueError(f"BPF program name {name!r} is longer than {BPF_OBJ_NAME_LEN - 1} bytes")
    code = ctypes.create_string_buffer(insns, len(insns))
    log = ctypes.create_string_buffer(log_size) if log_size else None
    # log_level 0 with a buffer: libbpf retries with log_level 1 only when the load fails.
    opts = _opts(
        _BpfProgLoadOpts,
        expected_attach_type=expected_attach_type,
        log_size=log_size if log else 0,
        log_buf=ctypes.addressof(log) if log else None,
    )
    fd = _lib().bpf_prog_load(
        int(prog_type),
        bname,
        license.encode(),
        code,
        len(insns) // 8,
        ctypes.byref(opts),
    )
    if fd < 0:
        what = f"cannot load {_enum_name(ProgType, prog_type)} program {name or ''}".rstrip()
        text = log.value.decode(errors="replace").strip() if log else ""
        if text:
            tail = "\n".join(text.splitlines()[-20:])
            raise BpfError(-fd, what, f"{_strerror(-fd)}; verifier log:\n{tail}")
        raise BpfError(-fd, what)
    return fd


@dataclass(frozen=True)
class TestRunResult:
    """Outcome of ``BPF_PROG_TEST_RUN``."""

    __test__ = False  # not a pytest test class

    retval: int
    data_out: bytes
    duration_ns: int  # kernel's average per repetition


def prog_test_run(
    prog_fd: int,
    data: bytes,
    repeat: int = 1,
    data_out_size: int | None = None,
) -> TestRunResult:
    """Run a loaded program on ``data`` in the kernel (``bpf_prog_test_run_opts``).

    Works on any program fd, including one loaded by bcc.  ``data_out_size`` defaults to
    ``len(data) + 4096`` (room for XDP tail growth); a too small buffer raises ENOSPC.
    """
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    out_size = len(data) + 4096 if data_out_size is None else data_out_size
    data_in = ctypes.create_string_buffer(bytes(data), len(data))
    data_out = ctypes.create_string_buffer(max(out_size, 1))
    opts = _opts(
        _BpfTestRunOpts,
        data_in=ctypes.addressof(data_in),
        data_size_in=len(data),
        data_out=ctypes.addressof(data_out),
        data_size_out=out_size,
        repeat=repeat,
    )
    ret = _lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    if ret < 0:
        what = f"cannot test-run program fd {prog_fd} on {len(data)} bytes"
        if -ret == _errno.ENOSPC:
            raise BpfError(
                -ret, what, f"output ({opts.data_size_out} bytes) exceeds data_out_size {out_size}"
            )
        raise BpfError(-ret, what)
    n = min(opts.data_size_out, out_size)
    return TestRunResult(retval=opts.retval, data_out=data_out.raw[:n], duration_ns=opts.duration)


# --------------------------------------------------------------------------------------------
# Maps


@functools.cache
def possible_cpus() -> int:
    """Number of possible CPUs (/sys/devices/system/cpu/possible, e.g. "0-1" -> 2).

    Per-CPU map values are ``roundup(value_size, 8) * possible_cpus()`` bytes.
    """
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    return _count_cpu_list(text)


def _count_cpu_list(text: str) -> int:
    count = 0
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        count += (int(hi) - int(lo) + 1) if sep else 1
    if count == 0:
        raise ValueError(f"bad CPU list {text!r}")
    return count


_SimpleCData = ctypes.c_int.__mro__[1]
_ARRAY_CODES = frozenset("bBhHiIlLqQfd")
_value_of = operator.attrgetter("value")


def _is_simple(ctype: type) -> bool:
    return issubclass(ctype, _SimpleCData)


def _as_ctype(obj: Any, ctype: type, role: str) -> Any:
    """``obj`` as an instance of ``ctype``: instance as is, int/float/bytes for simple types,
    bytes-like of the exact size for any type."""
    if isinstance(obj, ctype):
        return obj
    size = ctypes.sizeof(ctype)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        if len(obj) != size:
            raise ValueError(f"{role}: {len(obj)} bytes given, {ctype.__name__} is {size}")
        return ctype.from_buffer_copy(obj)
    if _is_simple(ctype) and isinstance(obj, (int, float)):
        return ctype(obj)
    raise TypeError(f"{role}: expected {ctype.__name__}, got {type(obj).__name__}")


def _pack(seq: Any, ctype: type, role: str) -> tuple[Any, int]:
    """Pack a sequence of ``ctype`` elements into one contiguous ctypes buffer.

    Fast paths: a ctypes array / bytes-like / array.array (used as raw memory of
    ``n * sizeof(ctype)`` bytes), a list of ``ctype`` instances, or a list of ints for
    simple integer types.  Returns ``(buffer, n)``.
    """
    size = ctypes.sizeof(ctype)
    if isinstance(seq, ctypes.Array):
        nbytes = ctypes.sizeof(seq)
        if nbytes % size:
            raise ValueError(f"{role}: buffer of {nbytes} bytes is not a multiple of {size}")
        return seq, nbytes // size
    if isinstance(seq, (bytes, bytearray, memoryview, array.array)):
        mv = memoryview(seq).cast("B")
        if len(mv) % size:
            raise ValueError(f"{role}: buffer of {len(mv)} bytes is not a multiple of {size}")
        return (ctypes.c_ubyte * len(mv)).from_buffer_copy(mv), len(mv) // size
    if not isinstance(seq, Sequence):
        seq = list(seq)
    n = len(seq)
    if n == 0:
        return None, 0
    simple = _is_simple(ctype)
    code = ctype._type_ if simple else None
    fits_array = code in _ARRAY_CODES and array.array(code).itemsize == size
    if all(type(x) is ctype for x in seq):
        if fits_array:
            raw: Any = array.array(code, map(_value_of, seq))
        else:
            raw = b"".join(map(bytes, seq))
    elif fits_array and all(type(x) is int for x in seq):
        raw = array.array(code, seq)
    else:
        raw = b"".join([bytes(_as_ctype(x, ctype, role)) for x in seq])
    mv = memoryview(raw).cast("B")
    if len(mv) != n * size:
        raise ValueError(f"{role}: packed {len(mv)} bytes for {n} elements of {size} bytes")
    return (ctypes.c_ubyte * len(mv)).from_buffer_copy(mv), n


def _addr(buf: Any) -> int:
    return ctypes.addressof(buf)


_BATCH_UNSUPPORTED = frozenset({_errno.EINVAL, _errno.EOPNOTSUPP, ENOTSUPP})


class Map:
    """A BPF map reached through an fd, with typed keys and values.

    Keys and values are instances of ``key_type`` / ``value_type`` (ctypes types).  Inputs
    also accept ints/floats (simple types) or bytes of the exact size; outputs are always
    instances of the declared types, detached from the map and from later calls (safe to
    keep).  Not for per-CPU maps: use ``PerCpuMap`` (the constructors refuse the wrong class,
    since a per-CPU lookup writes ``possible_cpus()`` values into the buffer).
    """

    _percpu = False

    def __init__(
        self,
        fd: int,
        info: MapInfo,
        key_type: type,
        value_type: type,
        *,
        label: str | None = None,
        path: str | None = None,
        owned: bool = True,
    ):
        self._fd: int | None = fd
        self.info = info
        self.key_type = key_type
        self.value_type = value_type
        self.path = path
        self.label = label or path or f"map {info.name or '?'} (id {info.id})"
        self._owned = owned
        self._key_size = ctypes.sizeof(key_type)
        self._value_size = ctypes.sizeof(value_type)
        self._batch_opts = _opts(_BpfMapBatchOpts)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def open_pinned(
        cls,
        path: str | os.PathLike[str],
        key_type: type,
        value_type: type,
        expect_type: int | None = None,
    ) -> Map:
        """Open the map pinned at ``path`` and check its layout against the given types.

        Raises BpfError (ENOENT...) when the pin cannot be opened, LayoutMismatch when the map
        type (``expect_type``, and per-CPU-ness vs the class) or key/value sizes differ.
        """
        path = os.fspath(path)
        fd = obj_get(path, "map")
        try:
            _expect_kind(fd, "bpf-map", f"cannot use pinned object {path} as a map")
            info = map_info(fd)
            cls._check_layout(info, key_type, value_type, expect_type, path, True)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, info, key_type, value_type, path=path)

    @classmethod
    def from_fd(
        cls,
        fd: int,
        key_type: type,
        value_type: type,
        expect_type: int | None = None,
        *,
        owned: bool = True,
        label: str | None = None,
    ) -> Map:
        """Wrap an existing map fd (checked like ``open_pinned``).

        With ``owned`` (default) the Map closes the fd on ``close()``/exit/garbage collection;
        if the check fails the fd stays open and remains the caller's.
        """
        info = map_info(fd)
        label = label or f"map {info.name or '?'} (id {info.id})"
        cls._check_layout(info, key_type, value_type, expect_type, label, False)
        return cls(fd, info, key_type, value_type, label=label, owned=owned)

    @classmethod
    def _check_layout(
        cls,
        info: MapInfo,
        key_type: type,
        value_type: type,
        expect_type: int | None,
        label: str,
        pinned: bool,
    ) -> None:
        hint = (
            "; the pins are stale (left by another ccxdp version?): purge the pinned maps "
            f"under {os.path.dirname(label)} and load again"
            if pinned
            else ""
        )
        problems = []
        if expect_type is not None and info.type != expect_type:
            problems.append(
                f"map type {info.type_name}, expected {_enum_name(MapType, expect_type)}"
            )
        if info.key_size != ctypes.sizeof(key_type):
            problems.append(
                f"key_size {info.key_size}, expected {ctypes.sizeof(key_type)} "
                f"({key_type.__name__})"
            )
        if info.value_size != ctypes.sizeof(value_type):
            problems.append(
                f"value_size {info.value_size}, expected {ctypes.sizeof(value_type)} "
                f"({value_type.__name__})"
            )
        if problems:
            raise LayoutMismatch(f"layout mismatch for {label}", "; ".join(problems) + hint)
        if info.percpu != cls._percpu:
            use = "PerCpuMap" if info.percpu else "Map"
            raise LayoutMismatch(
                f"wrong accessor for {label}",
                f"map type {info.type_name} is {'' if info.percpu else 'not '}per-CPU: use {use}",
            )

    # -- lifetime ---------------------------------------------------------------------------

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.label} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        """Close the fd (if owned).  Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None and self._owned:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown, fd already gone
            pass

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"fd={self._fd}"
        return (
            f"<{type(self).__name__} {self.label} {self.info.type_name} "
            f"{self.key_type.__name__}->{self.value_type.__name__} {state}>"
        )

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin this map at ``path``."""
        obj_pin(self.fd, path)

    # -- value encoding (overridden for per-CPU maps) -------------------------------------

    @property
    def _value_nbytes(self) -> int:
        """Bytes of one value as the syscalls read/write it."""
        return self._value_size

    def _value_buffer(self, n: int = 1) -> Any:
        return (self.value_type * n)()

    def _decode_value(self, buf: Any) -> Any:
        return self.value_type.from_buffer_copy(buf)

    def _decode_values(self, buf: Any, count: int) -> list[Any]:
        if _is_simple(self.value_type):
            return list(map(self.value_type, buf[:count]))
        return buf[:count]

    def _encode_value(self, value: Any) -> Any:
        return _as_ctype(value, self.value_type, f"value for {self.label}")

    def _pack_values(self, values: Any) -> tuple[Any, int]:
        return _pack(values, self.value_type, f"values for {self.label}")

    def _key(self, key: Any) -> Any:
        return _as_ctype(key, self.key_type, f"key for {self.label}")

    def _decode_keys(self, buf: Any, count: int) -> list[Any]:
        if _is_simple(self.key_type):
            return list(map(self.key_type, buf[:count]))
        return buf[:count]

    # -- single elements --------------------------------------------------------------------

    def lookup(self, key: Any) -> Any | None:
        """The value for ``key`` or None when absent."""
        k = self._key(key)
        buf = self._value_buffer()
        ret = _lib().bpf_map_lookup_elem(self.fd, ctypes.byref(k), buf)
        if ret == -_errno.ENOENT:
            return None
        _check(ret, lambda: f"cannot look up key in {self.label}")
        return self._decode_value(buf)

    def __getitem__(self, key: Any) -> Any:
        value = self.lookup(key)
        if value is None:
            raise KeyError(key)
        return value

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        """Set ``key`` to ``value`` (BPF_ANY / BPF_NOEXIST -> EEXIST / BPF_EXIST -> ENOENT).

        A full hash map raises E2BIG; an out-of-range array index raises E2BIG.
        """
        k = self._key(key)
        v = self._encode_value(value)
        ret = _lib().bpf_map_update_elem(self.fd, ctypes.byref(k), ctypes.byref(v), flags)
        _check(ret, lambda: f"cannot update key in {self.label}")

    def __setitem__(self, key: Any, value: Any) -> None:
        self.update(key, value)

    def delete(self, key: Any) -> bool:
        """Delete ``key``; False when it was absent.  Arrays cannot delete (EINVAL raised)."""
        k = self._key(key)
        ret = _lib().bpf_map_delete_elem(self.fd, ctypes.byref(k))
        if ret == -_errno.ENOENT:
            return False
        _check(ret, lambda: f"cannot delete key from {self.label}")
        return True

    # -- iteration --------------------------------------------------------------------------

    def keys(self) -> Iterator[Any]:
        """Iterate over the keys with ``bpf_map_get_next_key`` (one syscall per key).

        Like any get_next_key walk, a hash map modified concurrently may restart or skip.
        """
        lib = _lib()
        fd = self.fd
        prev = None
        while True:
            nxt = self.key_type()
            ret = lib.bpf_map_get_next_key(
                fd, None if prev is None else ctypes.byref(prev), ctypes.byref(nxt)
            )
            if ret == -_errno.ENOENT:
                return
            _check(ret, lambda: f"cannot iterate keys of {self.label}")
            yield nxt
            prev = nxt

    __iter__ = keys

    def items(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs via keys() + lookup(); keys deleted meanwhile are skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    # -- batch ------------------------------------------------------------------------------

    def lookup_batch_arrays(self, chunk: int = 4096) -> Iterator[tuple[Any, Any, int]]:
        """Dump the map in chunks with ``bpf_map_lookup_batch``: yields
        ``(keys_array, values_buffer, count)``, fresh buffers per chunk.

        ``keys_array`` is a ``key_type * n`` ctypes array (for simple types indexing gives
        ints); for a plain Map ``values_buffer`` is a ``value_type * n`` array, for a PerCpuMap
        raw bytes, ``roundup(value_size, 8) * possible_cpus()`` per element.  Only the first
        ``count`` elements are valid.  End of map (ENOENT) is handled; a hash bucket larger than
        ``chunk`` (ENOSPC) grows the chunk; map types without batch support (EINVAL, ENOTSUPP,
        EOPNOTSUPP on the first call) fall back to get_next_key + lookup.
        """
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        lib = _lib()
        fd = self.fd
        # Batch cursors: u32 bucket index for hash maps, a key for the generic implementation.
        token_size = max(self._key_size, 8)
        in_token = None
        out_token = (ctypes.c_ubyte * token_size)()
        spare_token = (ctypes.c_ubyte * token_size)()
        count = ctypes.c_uint32()
        n = chunk
        first = True
        while True:
            keys = (self.key_type * n)()
            values = self._value_buffer(n)
            count.value = n
            ret = lib.bpf_map_lookup_batch(
                fd,
                in_token,
                out_token,
                keys,
                values,
                ctypes.byref(count),
                ctypes.byref(self._batch_opts),
            )
            end = False
            if ret < 0:
                err = -ret
                if err == _errno.ENOENT:
                    end = True
                elif err == _errno.ENOSPC and count.value == 0:
                    n *= 2  # one hash bucket holds more than n elements
                    continue
                elif first and err in _BATCH_UNSUPPORTED:
                    yield from self._lookup_chunks_fallback(chunk)
                    return
                else:
                    raise BpfError(err, f"cannot batch-look-up {self.label}")
            first = False
            if count.value:
                yield keys, values, count.value
            if end:
                return
            in_token, out_token = out_token, (spare_token if in_token is None else in_token)

    def _lookup_chunks_fallback(self, chunk: int) -> Iterator[tuple[Any, Any, int]]:
        lib = _lib()
        fd = self.fd
        nbytes = self._value_nbytes
        key_iter = self.keys()
        while True:
            keys = (self.key_type * chunk)()
            values = self._value_buffer(chunk)
            base = _addr(values)
            i = 0
            for key in key_iter:
                ret = lib.bpf_map_lookup_elem(fd, ctypes.byref(key), base + i * nbytes)
                if ret == -_errno.ENOENT:
                    continue
                _check(ret, lambda: f"cannot look up key in {self.label}")
                keys[i] = key
                i += 1
                if i == chunk:
                    break
            if i:
                yield keys, values, i
            if i < chunk:
                return

    def lookup_batch(self, chunk: int = 4096) -> Iterator[tuple[Any, Any]]:
        """All (key, value) pairs, ``chunk`` per syscall (see ``lookup_batch_arrays``).

        Yields instances of key_type/value_type; for bulk work on millions of entries the
        per-element objects dominate: use ``lookup_batch_arrays`` instead.
        """
        for keys, values, count in self.lookup_batch_arrays(chunk):
            yield from zip(
                self._decode_keys(keys, count), self._decode_values(values, count), strict=True
            )

    def update_batch(
        self,
        keys: Iterable[Any],
        values: Iterable[Any],
        flags: int = BPF_ANY,
        *,
        chunk: int = 1 << 16,
    ) -> int:
        """Write ``keys[i] -> values[i]`` with ``bpf_map_update_batch``, ``chunk`` per syscall.

        ``keys``/``values``: sequences of ctypes instances, ints (simple types), or already
        packed memory (bytes, bytearray, array.array, ctypes array of n * size bytes), the
        fastest.  ``flags``: BPF_ANY or BPF_F_LOCK, the only element flags the kernel's batch
        update accepts (it answers EINVAL to BPF_NOEXIST/BPF_EXIST, so they raise ValueError
        here: use ``update()`` per element for those).  Elements are written in order; returns
        the number written.  On failure (e.g. E2BIG: hash map full, or array index out of
        range) raises BatchError whose ``done`` counts the elements written before the failing
        one (those stay written).
        """
        if flags & (BPF_NOEXIST | BPF_EXIST):
            raise ValueError(
                "the kernel's batch update takes only BPF_ANY or BPF_F_LOCK; "
                "use update() per element for BPF_NOEXIST/BPF_EXIST"
            )
        kbuf, n = _pack(keys, self.key_type, f"keys for {self.label}")
        vbuf, nv = self._pack_values(values)
        if n != nv:
            raise ValueError(f"update_batch on {self.label}: {n} keys but {nv} values")
        if n == 0:
            return 0
        lib = _lib()
        fd = self.fd
        opts = _opts(_BpfMapBatchOpts, elem_flags=flags)
        kaddr, vaddr = _addr(kbuf), _addr(vbuf)
        ks, vs = self._key_size, self._value_nbytes
        count = ctypes.c_uint32()
        done = 0
        while done < n:
            m = min(chunk, n - done)
            count.value = m
            ret = lib.bpf_map_update_batch(
                fd, kaddr + done * ks, vaddr + done * vs, ctypes.byref(count), ctypes.byref(opts)
            )
            if ret < 0:
                ok = count.value if -ret != _errno.EFAULT and count.value < m else 0
                raise BatchError(-ret, f"cannot batch-update {self.label}", done + ok)
            done += m
        return done

    def delete_batch(
        self, keys: Iterable[Any], *, missing_ok: bool = True, chunk: int = 1 << 16
    ) -> int:
        """Delete ``keys`` with ``bpf_map_delete_batch`` and return how many were deleted.

        The kernel stops a batch at the first absent key (ENOENT, reporting how many it
        deleted before it).  With ``missing_ok`` (default) that key is skipped and the batch
        resumes after it, so every present key is deleted and absent ones are not counted
        (each absent key costs one extra syscall).  With ``missing_ok=False`` an absent key
        raises BatchError(ENOENT) whose ``done`` counts the deletions before it.  Array maps
        cannot delete (the kernel refuses: BpfError).
        """
        kbuf, n = _pack(keys, self.key_type, f"keys for {self.label}")
        if n == 0:
            return 0
        lib = _lib()
        fd = self.fd
        kaddr, ks = _addr(kbuf), self._key_size
        count = ctypes.c_uint32()
        deleted = 0
        i = 0
        while i < n:
            m = min(chunk, n - i)
            count.value = m
            ret = lib.bpf_map_delete_batch(
                fd, kaddr + i * ks, ctypes.byref(count), ctypes.byref(self._batch_opts)
            )
            if ret == 0:
                deleted += m
                i += m
                continue
            err = -ret
            ok = count.value if err != _errno.EFAULT and count.value < m else 0
            deleted += ok
            i += ok
            if err == _errno.ENOENT and missing_ok:
                i += 1  # the key at i is absent: skip it
                continue
            raise BatchError(err, f"cannot batch-delete from {self.label}", deleted)
        return deleted


class PerCpuMap(Map):
    """A per-CPU map (percpu hash/array, LRU percpu hash).

    ``lookup`` returns a list of ``possible_cpus()`` values (one per CPU); ``update`` takes a
    single value (written to every CPU) or a sequence of one value per possible CPU;
    ``lookup_sum`` adds the per-CPU values up (integer or float fields, recursively).
    The kernel buffer for one element is ``roundup(value_size, 8) * possible_cpus()`` bytes.
    """

    _percpu = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ncpus = possible_cpus()
        self._stride = (self._value_size + 7) & ~7

    @property
    def _value_nbytes(self) -> int:
        return self._stride * self.ncpus

    def _value_buffer(self, n: int = 1) -> Any:
        return (ctypes.c_ubyte * (self._value_nbytes * n))()

    def _decode_value(self, buf: Any, offset: int = 0) -> list[Any]:
        vt, stride = self.value_type, self._stride
        return [vt.from_buffer_copy(buf, offset + cpu * stride) for cpu in range(self.ncpus)]

    def _decode_values(self, buf: Any, count: int) -> list[Any]:
        nbytes = self._value_nbytes
        return [self._decode_value(buf, i * nbytes) for i in range(count)]

    def _encode_value(self, value: Any) -> Any:
        role = f"per-CPU value for {self.label}"
        if isinstance(value, (list, tuple)):
            if len(value) != self.ncpus:
                raise ValueError(f"{role}: {len(value)} values for {self.ncpus} possible CPUs")
            parts = [bytes(_as_ctype(v, self.value_type, role)) for v in value]
        else:
            parts = [bytes(_as_ctype(value, self.value_type, role))] * self.ncpus
        raw = b"".join(p.ljust(self._stride, b"\0") for p in parts)
        return (ctypes.c_ubyte * len(raw)).from_buffer_copy(raw)

    def _pack_values(self, values: Any) -> tuple[Any, int]:
        nbytes = self._value_nbytes
        if isinstance(values, (bytes, bytearray, memoryview, array.array, ctypes.Array)):
            mv = memoryview(values).cast("B")
            if len(mv) % nbytes:
                raise ValueError(
                    f"per-CPU values for {self.label}: {len(mv)} bytes is not a multiple of "
                    f"{nbytes} (roundup(value_size, 8) * {self.ncpus} CPUs)"
                )
            return (ctypes.c_ubyte * len(mv)).from_buffer_copy(mv), len(mv) // nbytes
        encoded = [bytes(self._encode_value(v)) for v in values]
        raw = b"".join(encoded)
        if not raw:
            return None, 0
        return (ctypes.c_ubyte * len(raw)).from_buffer_copy(raw), len(encoded)

    def lookup(self, key: Any) -> list[Any] | None:
        """Per-CPU values for ``key`` (one per possible CPU) or None when absent."""
        return super().lookup(key)

    def lookup_sum(self, key: Any) -> Any | None:
        """The per-CPU values of ``key`` summed field by field (a value_type instance)."""
        values = self.lookup(key)
        return None if values is None else sum_values(self.value_type, values)


_NUMERIC_CODES = frozenset("bBhHiIlLqQfd")


def sum_values(ctype: type, values: Sequence[Any]) -> Any:
    """Add up ctypes values of ``ctype`` field by field (integers wrap like C)."""
    out = ctype()
    _sum_into(out, ctype, values)
    return out


def _sum_into(out: Any, ctype: type, values: Sequence[Any]) -> None:
    if _is_simple(ctype):
        if ctype._type_ not in _NUMERIC_CODES:
            raise TypeError(f"cannot sum values of {ctype.__name__}")
        out.value = _wrap(ctype, sum(v.value for v in values))
        return
    if issubclass(ctype, ctypes.Array):
        elem = ctype._type_
        for i in range(ctype._length_):
            if _is_simple(elem):
                out[i] = _wrap(elem, sum(v[i] for v in values))
            else:
                _sum_into(out[i], elem, [v[i] for v in values])
        return
    if issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        if issubclass(ctype, ctypes.Union):
            raise TypeError(f"cannot sum union {ctype.__name__}")
        for field in ctype._fields_:
            name, ftype = field[0], field[1]
            if len(field) == 3 or _is_simple(ftype):
                if _is_simple(ftype) and ftype._type_ not in _NUMERIC_CODES:
                    raise TypeError(f"cannot sum field {name} of {ctype.__name__}")
                total = sum(getattr(v, name) for v in values)
                setattr(out, name, total if len(field) == 3 else _wrap(ftype, total))
            else:
                _sum_into(getattr(out, name), ftype, [getattr(v, name) for v in values])
        return
    raise TypeError(f"cannot sum values of {ctype.__name__}")


def _wrap(ctype: type, total: Any) -> Any:
    if isinstance(total, int) and ctype._type_ in "bBhHiIlLqQ":
        bits = ctypes.sizeof(ctype) * 8
        total &= (1 << bits) - 1
        if ctype._type_.islower() and total >= 1 << (bits - 1):
            total -= 1 << bits
    return total
