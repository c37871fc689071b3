"""Tests of ccxdp.bpfsys against real kernel maps and a tiny handcrafted XDP program.

Everything pinned goes under a fresh /sys/fs/bpf/ccxdp-test-<random> folder that the
``pin_dir`` fixture removes whatever happens.  Run with ``-s`` to see the 1M-entry timings.
"""

from __future__ import annotations

import array
import ctypes
import errno
import os
import secrets

import pytest

from ccxdp.datapath import libbpf
from ccxdp.datapath.libbpf import (
    BPF_ANY,
    BPF_EXIST,
    BPF_NOEXIST,
    BatchError,
    BpfError,
    LayoutMismatch,
    Map,
    MapType,
    PerCpuMap,
    ProgType,
)

BPFFS = "/sys/fs/bpf"

XDP_PASS = 2
# r0 = XDP_PASS (BPF_ALU64 | BPF_MOV | BPF_K); exit (BPF_JMP | BPF_EXIT)
PASS_PROG = libbpf.pack_insn(0xB7, dst=0, imm=XDP_PASS) + libbpf.pack_insn(0x95)


class Key(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint32), ("port", ctypes.c_uint16), ("proto", ctypes.c_uint8)]


class Counters(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


def _bpffs_mounted() -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(
                line.split()[1] == BPFFS and line.split()[2] == "bpf" for line in f if line.strip()
            )
    except OSError:
        return False


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for BPF maps and programs"
    if not _bpffs_mounted():
        return f"bpffs is not mounted at {BPFFS}"
    try:
        libbpf._lib()
    except BpfError as exc:
        return str(exc)
    return None


@pytest.fixture
def bpf() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


def _remove_tree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


@pytest.fixture
def pin_dir(bpf: None):
    path = os.path.join(BPFFS, f"ccxdp-test-{secrets.token_hex(6)}")
    os.mkdir(path)
    try:
        yield path
    finally:
        _remove_tree(path)
    assert not os.path.exists(path)


@pytest.fixture
def fds(bpf: None):
    """Raw fds to close at teardown."""
    opened: list[int] = []
    try:
        yield opened
    finally:
        for fd in opened:
            try:
                os.close(fd)
            except OSError:
                pass


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _new_map(map_type, key_type, value_type, max_entries, name="ccxdp_t", flags=0, cls=Map):
    fd = libbpf.map_create(
        map_type, name, ctypes.sizeof(key_type), ctypes.sizeof(value_type), max_entries, flags
    )
    return cls.from_fd(fd, key_type, value_type, expect_type=map_type)


# ----------------------------------------------------------------------------------- no root


def test_count_cpu_list() -> None:
    assert libbpf._count_cpu_list("0") == 1
    assert libbpf._count_cpu_list("0-1") == 2
    assert libbpf._count_cpu_list("0-3,5,7-8\n") == 7
    with pytest.raises(ValueError):
        libbpf._count_cpu_list("")


def test_possible_cpus_matches_sysfs() -> None:
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read()
    assert libbpf.possible_cpus() == libbpf._count_cpu_list(text) >= 1


def test_pack_insn_layout() -> None:
    assert libbpf.pack_insn(0x95) == bytes([0x95, 0, 0, 0, 0, 0, 0, 0])
    assert libbpf.pack_insn(0xB7, dst=0, imm=2) == bytes([0xB7, 0, 0, 0, 2, 0, 0, 0])
    assert libbpf.pack_insn(0x61, dst=2, src=1, off=-4, imm=0)[:4] == bytes(
        [0x61, 0x12, 0xFC, 0xFF]
    )


def test_error_message_and_errno() -> None:
    err = BpfError(errno.ENOENT, "cannot open pinned map /sys/fs/bpf/ccxdp/x")
    assert isinstance(err, OSError)
    assert err.errno == errno.ENOENT
    assert str(err) == "cannot open pinned map /sys/fs/bpf/ccxdp/x: No such file or directory"
    assert "ENOTSUPP" in str(BpfError(libbpf.ENOTSUPP, "x"))


def test_sum_values_wraps_like_c() -> None:
    vals = [ctypes.c_uint32(0xFFFFFFFF), ctypes.c_uint32(2)]
    assert libbpf.sum_values(ctypes.c_uint32, vals).value == 1
    total = libbpf.sum_values(Counters, [Counters(1, 10), Counters(2, 20), Counters(3, 30)])
    assert (total.packets, total.bytes) == (6, 60)


# --------------------------------------------------------------------------------- with BPF


@pytest.mark.root
def test_open_pinned_round_trip(pin_dir: str) -> None:
    path = os.path.join(pin_dir, "flows")
    with _new_map(MapType.HASH, Key, Counters, 64, name="ccxdp_flows") as writer:
        writer.pin(path)
        writer.update(Key(0x0A000001, 53, 17), Counters(3, 300))
        info = writer.info
    assert info.type == MapType.HASH and info.type_name == "hash"
    assert (info.key_size, info.value_size, info.max_entries) == (8, 16, 64)
    assert info.name == "ccxdp_flows"

    with Map.open_pinned(path, Key, Counters, expect_type=MapType.HASH) as m:
        assert m.path == path
        assert m.info == libbpf.map_info(m.fd)
        got = m.lookup(Key(0x0A000001, 53, 17))
        assert isinstance(got, Counters)
        assert (got.packets, got.bytes) == (3, 300)
        assert m.lookup(Key(0x0A000001, 53, 6)) is None
        m.update(Key(1, 2, 3), Counters(4, 5))
    with Map.open_pinned(path, Key, Counters) as again:
        assert again[Key(1, 2, 3)].bytes == 5
        assert again.info.id == info.id


@pytest.mark.root
def test_open_pinned_missing_names_path(pin_dir: str) -> None:
    path = os.path.join(pin_dir, "nope")
    with pytest.raises(BpfError) as exc:
        Map.open_pinned(path, Key, Counters)
    assert exc.value.errno == errno.ENOENT
    assert str(exc.value) == f"cannot open pinned map {path}: No such file or directory"


@pytest.mark.root
def test_layout_mismatch_refused(pin_dir: str) -> None:
    path = os.path.join(pin_dir, "stale")
    with _new_map(MapType.HASH, ctypes.c_uint64, ctypes.c_uint32, 16) as m:
        m.pin(path)
    before = _open_fds()

    # Only sizes (and the type, if asked) are checked: an 8-byte Structure key is accepted.
    with Map.open_pinned(path, Key, ctypes.c_uint32) as same_size:
        assert same_size.info.key_size == ctypes.sizeof(Key) == 8
    with pytest.raises(LayoutMismatch) as exc:
        Map.open_pinned(path, ctypes.c_uint32, ctypes.c_uint32)
    msg = str(exc.value)
    assert path in msg and "key_size 8, expected 4" in msg and "purge" in msg
    assert isinstance(exc.value, BpfError) and exc.value.errno == errno.EINVAL

    with pytest.raises(LayoutMismatch, match=r"value_size 4, expected 16 \(Counters\)"):
        Map.open_pinned(path, ctypes.c_uint64, Counters)
    with pytest.raises(LayoutMismatch, match="map type hash, expected lru_hash"):
        Map.open_pinned(path, ctypes.c_uint64, ctypes.c_uint32, expect_type=MapType.LRU_HASH)
    with pytest.raises(LayoutMismatch, match="use Map"):
        PerCpuMap.open_pinned(path, ctypes.c_uint64, ctypes.c_uint32)
    assert _open_fds() == before  # refused opens leak no fd


@pytest.mark.root
def test_wrong_object_kind(pin_dir: str, fds: list[int]) -> None:
    prog = libbpf.prog_load(ProgType.XDP, PASS_PROG, name="ccxdp_pass")
    fds.append(prog)
    path = os.path.join(pin_dir, "prog")
    libbpf.obj_pin(prog, path)
    with pytest.raises(BpfError, match=f"{path}.*bpf-prog, not a bpf-map"):
        Map.open_pinned(path, ctypes.c_uint32, ctypes.c_uint32)
    with pytest.raises(BpfError, match="not a bpf-map"):
        libbpf.map_info(prog)


@pytest.mark.root
def test_single_element_semantics(bpf: None) -> None:
    with _new_map(MapType.HASH, ctypes.c_uint64, ctypes.c_uint32, 4) as m:
        assert m.lookup(1) is None
        assert m.delete(1) is False
        with pytest.raises(KeyError):
            m[1]
        with pytest.raises(BpfError) as exc:
            m.update(1, 5, flags=BPF_EXIST)
        assert exc.value.errno == errno.ENOENT
        m.update(ctypes.c_uint64(1), ctypes.c_uint32(5))
        m[2] = 6
        with pytest.raises(BpfError, match="File exists") as exc:
            m.update(1, 7, flags=BPF_NOEXIST)
        assert exc.value.errno == errno.EEXIST
        m.update(1, 7, flags=BPF_EXIST)
        assert m.lookup(1).value == 7
        assert sorted(k.value for k in m.keys()) == [1, 2]
        assert sorted((k.value, v.value) for k, v in m.items()) == [(1, 7), (2, 6)]
        m.update(3, 0)
        m.update(4, 0)
        with pytest.raises(BpfError) as exc:
            m.update(5, 0)
        assert exc.value.errno == errno.E2BIG  # full
        assert m.delete(1) is True and m.lookup(1) is None
        with pytest.raises(TypeError):
            m.lookup(Key())
        with pytest.raises(ValueError):
            m.lookup(b"\x01\x02")
    with pytest.raises(ValueError, match="closed"):
        m.lookup(1)


@pytest.mark.root
def test_batch_update_then_lookup_batch_100k(bpf: None) -> None:
    n = 100_000
    keys = [Key(i, i & 0xFFFF, i % 3) for i in range(n)]
    values = [Counters(i, i * 1500) for i in range(n)]
    with _new_map(MapType.HASH, Key, Counters, 131_072) as m:
        assert m.update_batch(keys, values) == n
        seen = {}
        for k, v in m.lookup_batch():
            assert isinstance(k, Key) and isinstance(v, Counters)
            seen[(k.addr, k.port, k.proto)] = (v.packets, v.bytes)
        assert len(seen) == n
        assert seen == {(i, i & 0xFFFF, i % 3): (i, i * 1500) for i in range(n)}

        # Small chunks exercise the cursor, the ENOENT end and the ENOSPC growth path.
        count = sum(c for _, _, c in m.lookup_batch_arrays(chunk=1))
        assert count == n
        assert sum(1 for _ in m.lookup_batch(chunk=777)) == n


@pytest.mark.root
def test_update_batch_input_forms(bpf: None) -> None:
    n = 1000
    with _new_map(MapType.HASH, ctypes.c_uint64, ctypes.c_uint32, 4096) as m:
        m.update_batch(range(n), [i + 1 for i in range(n)])  # ints (array fast path)
        m.update_batch([ctypes.c_uint64(i) for i in range(n, 2 * n)], [ctypes.c_uint32(7)] * n)
        m.update_batch(
            array.array("Q", range(2 * n, 3 * n)).tobytes(), array.array("I", [9] * n)
        )  # pre-packed memory
        m.update_batch((ctypes.c_uint64 * 2)(5000, 5001), (ctypes.c_uint32 * 2)(1, 2))
        got = {k.value: v.value for k, v in m.lookup_batch()}
        assert len(got) == 3 * n + 2
        assert got[0] == 1 and got[n - 1] == n and got[n] == 7 and got[2 * n] == 9
        assert got[5001] == 2

        with pytest.raises(ValueError, match="2 keys but 1 values"):
            m.update_batch([1, 2], [1])
        with pytest.raises(ValueError, match="BPF_NOEXIST"):
            m.update_batch([1], [1], flags=BPF_NOEXIST)
        with pytest.raises(ValueError, match="multiple of 8"):
            m.update_batch(b"\x00" * 12, b"\x00" * 4)
        with pytest.raises(TypeError):
            m.update_batch([Key()], [1])
        assert m.update_batch([], []) == 0

    # A full map stops the batch: BatchError says how many went in.
    with _new_map(MapType.HASH, ctypes.c_uint64, ctypes.c_uint32, 10) as small:
        with pytest.raises(BatchError) as exc:
            small.update_batch(range(15), [0] * 15, flags=BPF_ANY, chunk=4)
        assert exc.value.errno == errno.E2BIG
        assert exc.value.done == 10
        assert sum(1 for _ in small.keys()) == 10


@pytest.mark.root
def test_delete_batch_skips_absent_keys(bpf: None) -> None:
    with _new_map(MapType.HASH, ctypes.c_uint64, ctypes.c_uint32, 2048) as m:
        m.update_batch(range(1000), range(1000))
        # present: 0..499 (500), absent: 5000..5009 interleaved, and a duplicate of 0
        doomed = []
        for i in range(500):
            doomed.append(i)
            if i % 50 == 0:
                doomed.append(5000 + i // 50)
        doomed.append(0)
        assert m.delete_batch(doomed, chunk=128) == 500
        assert sorted(k.value for k, _ in m.lookup_batch()) == list(range(500, 1000))

        with pytest.raises(BatchError) as exc:
            m.delete_batch([500, 501, 9999, 502], missing_ok=False)
        assert exc.value.errno == errno.ENOENT and exc.value.done == 2
        assert m.lookup(502) is not None  # the batch stopped at the absent key
        assert m.delete_batch([]) == 0
        assert m.delete_batch([424242]) == 0

    with _new_map(MapType.ARRAY, ctypes.c_uint32, ctypes.c_uint64, 4) as arr:
        with pytest.raises(BpfError):
            arr.delete_batch([1])  # arrays cannot delete


@pytest.mark.root
def test_array_batch_and_get_next_key(bpf: None) -> None:
    with _new_map(MapType.ARRAY, ctypes.c_uint32, Counters, 100) as arr:
        arr.update_batch(range(0, 100, 2), [Counters(i, 2 * i) for i in range(0, 100, 2)])
        batch = [(k.value, v.packets, v.bytes) for k, v in arr.lookup_batch(chunk=33)]
        slow = [(k.value, v.packets, v.bytes) for k, v in arr.items()]
        assert batch == slow
        assert len(batch) == 100
        assert batch[10] == (10, 10, 20) and batch[11] == (11, 0, 0)
        with pytest.raises(BatchError) as exc:
            arr.update_batch([99, 100], [Counters(), Counters()])
        assert exc.value.errno == errno.E2BIG and exc.value.done == 1


@pytest.mark.root
def test_lookup_batch_falls_back_when_unsupported(
    bpf: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _new_map(MapType.HASH, ctypes.c_uint64, ctypes.c_uint32, 64) as m:
        m.update_batch(range(40), range(100, 140))
        lib = libbpf._lib()
        monkeypatch.setattr(lib, "bpf_map_lookup_batch", lambda *a: -libbpf.ENOTSUPP)
        got = {k.value: v.value for k, v in m.lookup_batch(chunk=16)}
        assert got == {i: 100 + i for i in range(40)}
        assert [c for _, _, c in m.lookup_batch_arrays(chunk=16)] == [16, 16, 8]


@pytest.mark.root
def test_lru_hash(bpf: None) -> None:
    with _new_map(MapType.LRU_HASH, ctypes.c_uint64, ctypes.c_uint64, 64) as lru:
        for i in range(500):
            lru.update(i, i * 3)  # never E2BIG: old entries are evicted
        assert lru.lookup(499).value == 1497
        entries = dict((k.value, v.value) for k, v in lru.lookup_batch())
        assert 0 < len(entries) <= 64
        assert all(v == 3 * k for k, v in entries.items())
        assert lru.delete_batch(list(entries)) == len(entries)
        assert list(lru.keys()) == []


@pytest.mark.root
def test_percpu_array_sum(pin_dir: str) -> None:
    ncpus = libbpf.possible_cpus()
    path = os.path.join(pin_dir, "stats")
    with _new_map(MapType.PERCPU_ARRAY, ctypes.c_uint32, Counters, 4, cls=PerCpuMap) as m:
        m.pin(path)
        m.update(1, [Counters(cpu + 1, 100 * (cpu + 1)) for cpu in range(ncpus)])
        m.update(2, Counters(5, 50))  # one value: written on every CPU
    with pytest.raises(LayoutMismatch, match="use PerCpuMap"):
        Map.open_pinned(path, ctypes.c_uint32, Counters)

    with PerCpuMap.open_pinned(path, ctypes.c_uint32, Counters, MapType.PERCPU_ARRAY) as m:
        per_cpu = m.lookup(1)
        assert [c.packets for c in per_cpu] == list(range(1, ncpus + 1))
        total = m.lookup_sum(1)
        assert isinstance(total, Counters)
        tri = ncpus * (ncpus + 1) // 2
        assert (total.packets, total.bytes) == (tri, 100 * tri)
        assert m.lookup_sum(2).bytes == 50 * ncpus
        assert m.lookup_sum(0).packets == 0
        assert m.lookup(7) is None  # out of range index reads as absent
        with pytest.raises(ValueError, match="possible CPUs"):
            m.update(0, [Counters()] * (ncpus + 1))


@pytest.mark.root
def test_percpu_value_padding_and_batch(bpf: None) -> None:
    """4-byte per-CPU values sit in 8-byte slots: roundup(value_size, 8) * ncpus."""
    ncpus = libbpf.possible_cpus()
    with _new_map(MapType.PERCPU_HASH, ctypes.c_uint64, ctypes.c_uint32, 256, cls=PerCpuMap) as m:
        assert m._value_nbytes == 8 * ncpus
        n = 200
        m.update_batch(
            range(n), [[ctypes.c_uint32(k + cpu) for cpu in range(ncpus)] for k in range(n)]
        )
        assert [v.value for v in m.lookup(10)] == [10 + cpu for cpu in range(ncpus)]
        assert m.lookup_sum(10).value == sum(10 + cpu for cpu in range(ncpus))
        got = {k.value: [v.value for v in vals] for k, vals in m.lookup_batch(chunk=64)}
        assert got == {k: [k + cpu for cpu in range(ncpus)] for k in range(n)}
        assert m.lookup(10_000) is None and m.lookup_sum(10_000) is None
        assert m.delete_batch(range(0, n, 2)) == n // 2
        assert len(list(m.keys())) == n // 2


@pytest.mark.root
def test_prog_load_info_and_test_run(pin_dir: str, fds: list[int]) -> None:
    prog = libbpf.prog_load(ProgType.XDP, PASS_PROG, name="ccxdp_pass")
    fds.append(prog)
    info = libbpf.prog_info(prog)
    assert info.type == ProgType.XDP and info.name == "ccxdp_pass"
    assert len(info.tag) == 16 and int(info.tag, 16) != 0
    assert info.verified_insns == 2  # r0 = XDP_PASS; exit: one path, two instructions
    assert libbpf.prog_map_ids(prog) == []

    by_id = libbpf.prog_get_fd_by_id(info.id)
    fds.append(by_id)
    assert libbpf.prog_info(by_id) == info
    path = os.path.join(pin_dir, "prog")
    libbpf.obj_pin(prog, path)
    pinned = libbpf.obj_get(path)
    fds.append(pinned)
    assert libbpf.prog_info(pinned).id == info.id

    frame = bytes.fromhex("ffffffffffff0200000000010800") + bytes(range(50))
    assert len(frame) == 64
    res = libbpf.prog_test_run(prog, frame, repeat=1000)
    assert res.retval == XDP_PASS
    assert res.data_out == frame
    assert res.duration_ns > 0
    print(f"\nXDP_PASS test run: {res.duration_ns} ns/run (kernel average over 1000 runs)")

    with pytest.raises(BpfError, match="data_out_size 10") as exc:
        libbpf.prog_test_run(prog, frame, data_out_size=10)
    assert exc.value.errno == errno.ENOSPC


@pytest.mark.root
def test_prog_load_rejection_carries_verifier_log(bpf: None) -> None:
    with pytest.raises(BpfError) as exc:
        libbpf.prog_load(ProgType.XDP, libbpf.pack_insn(0x95), name="ccxdp_bad")
    msg = str(exc.value)
    assert msg.startswith("cannot load xdp program ccxdp_bad:")
    assert "R0 !read_ok" in msg
    with pytest.raises(ValueError):
        libbpf.prog_load(ProgType.XDP, b"\x95")


@pytest.mark.root
def test_a_borrowed_fd_stays_open_and_long_names_are_refused(bpf: None, fds: list[int]) -> None:
    with _new_map(MapType.HASH, ctypes.c_uint32, ctypes.c_uint32, 8) as m:
        raw = os.dup(m.fd)
        fds.append(raw)
        borrowed = Map.from_fd(raw, ctypes.c_uint32, ctypes.c_uint32, owned=False)
        borrowed.close()
        assert libbpf.map_info(raw).id == m.info.id  # not closed: not owned
    with pytest.raises(ValueError, match="longer than 15"):
        libbpf.map_create(MapType.HASH, "x" * 16, 4, 4, 4)


@pytest.mark.root
def test_one_million_entries_round_trip(bpf: None) -> None:
    """At the scale of an ISP feed: every input form writes all 1M entries, both batch reads
    return exactly them, and a batch delete removes them all. (Timings: scripts/bench_*.)"""
    n = 1_000_000
    with _new_map(MapType.HASH, ctypes.c_uint64, ctypes.c_uint32, 1 << 20) as m:
        values = [i & 0xFFFFFFFF for i in range(n)]
        assert m.update_batch(range(n), values) == n
        kbytes = array.array("Q", range(n)).tobytes()
        assert m.update_batch(kbytes, array.array("I", values).tobytes()) == n
        assert m.update_batch([ctypes.c_uint64(i) for i in range(n)],
                              [ctypes.c_uint32(v) for v in values]) == n
        total = checksum = 0
        for _keys, varr, count in m.lookup_batch_arrays():
            total += count
            checksum += sum(varr[:count])
        assert total == n and checksum == sum(values)
        assert sum(1 for _ in m.lookup_batch()) == n
        assert m.delete_batch(kbytes) == n
        assert list(m.keys()) == []
