"""Shared layouts are defined once (bpf/ccxdp_shared.h) and checked here against their Python
mirror (ccxdp/shared.py), so the two cannot drift:

- the text of the header: enum members and values, limits, map names, entry flags;
- bcc's compiled view of every pinned map: key and value sizes, field names and offsets;
- the kernel's view of the pinned maps: type, max_entries, key and value sizes, name.
"""

from __future__ import annotations

import ast
import ctypes as ct
import operator
import re
from pathlib import Path

import pytest

from ccxdp.datapath import libbpf, shared
from ccxdp.datapath.libbpf import MapType
from ccxdp.datapath.loader import Datapath, Limits
from ccxdp.datapath.shared import bpf_dir
from tests.conftest import make_pin_dir, remove_pins

SHARED_H = bpf_dir() / "ccxdp_shared.h"
MAPS_H = bpf_dir() / "maps.h"
PROG_C = bpf_dir() / "ccxdp.bpf.c"

BPF_OBJ_NAME_MAX = 15  # BPF_OBJ_NAME_LEN (16) less the terminating NUL

# Sizes that are not the defaults, so the test sees the -D flags reach the maps.
LIMITS = Limits(max_names=250_003, max_sources=3001)

# Kernel map type and max_entries of the maps the control plane relies on. Every pinned map
# (these and any other) is also checked against its declaration in maps.h.
EXPECTED_MAPS = {
    shared.MAP_STATS: (MapType.PERCPU_ARRAY, shared.STAT_MAX),
    shared.MAP_NAME_BUCKETS: (MapType.ARRAY, 2 * LIMITS.name_buckets),
    shared.MAP_NAME_ACTIVE: (MapType.ARRAY, shared.NACT_ENTRIES),
    shared.MAP_NAME_FILTER: (MapType.ARRAY, LIMITS.name_buckets),
    shared.MAP_SOURCES: (MapType.HASH, 2 * LIMITS.max_sources),  # two buffers
    shared.MAP_SOURCE_EPOCH: (MapType.ARRAY, 1),
    shared.MAP_PORTS: (MapType.ARRAY, 65536),
    shared.MAP_HASH_KEY: (MapType.ARRAY, 1),
}

# C enum -> (member prefix, Python enum, the member that counts the others or None)
ENUMS = {
    "ccxdp_outcome": ("CCXDP_OUT_", shared.Outcome, "CCXDP_OUT_MAX"),
    "ccxdp_malformed": ("CCXDP_MAL_", shared.Malformed, "CCXDP_MAL_MAX"),
    "ccxdp_event": ("CCXDP_EV_", shared.Event, "CCXDP_EV_MAX"),
    "ccxdp_action": ("CCXDP_ACTION_", shared.Action, "CCXDP_ACTION_MAX"),
}


# -- the header text ------------------------------------------------------------------------


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", text)


def _header() -> str:
    return _strip_comments(SHARED_H.read_text())


def _defines(text: str) -> dict[str, str]:
    return {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+(.+?)[ \t]*$", text, re.M)
    }


def _int_define(defines: dict[str, str], name: str) -> int:
    assert name in defines, f"{name} is not #defined in {SHARED_H.name}"
    return int(defines[name], 0)


def _string_define(value: str) -> str:
    m = re.fullmatch(r'"([^"\\]*)"', value)
    assert m, f"not a plain string literal: {value}"
    return m.group(1)


def _map_defines() -> dict[str, str]:
    """CCXDP_MAP_* of the header: {"STATS": "ccxdp_stats_v1", ...}"""
    return {
        name.removeprefix("CCXDP_MAP_"): _string_define(value)
        for name, value in _defines(_header()).items()
        if name.startswith("CCXDP_MAP_")
    }


def _enum(name: str) -> dict[str, int]:
    """Members of ``enum <name>`` in the header, in order, with their values."""
    m = re.search(rf"\benum\s+{name}\s*\{{(.*?)\}}\s*;", _header(), re.DOTALL)
    assert m, f"enum {name} not found in {SHARED_H.name}"
    members: dict[str, int] = {}
    value = -1
    for item in m.group(1).split(","):
        item = item.strip()
        if not item:
            continue
        em = re.fullmatch(r"(\w+)\s*(?:=\s*(.+))?", item)
        assert em, f"cannot read enum {name} member {item!r}"
        value = int(em.group(2), 0) if em.group(2) is not None else value + 1
        members[em.group(1)] = value
    return members


@pytest.mark.parametrize("c_enum", sorted(ENUMS))
def test_enum_matches_header(c_enum):
    prefix, py_enum, count_member = ENUMS[c_enum]
    members = _enum(c_enum)
    assert all(k.startswith(prefix) for k in members), members
    count = members.pop(count_member) if count_member else None
    from_c = {k.removeprefix(prefix).casefold(): v for k, v in members.items()}
    from_py = {m.name.casefold(): int(m.value) for m in py_enum}
    assert from_py == from_c
    if count_member:
        assert count == len(members), f"{count_member} is not the number of members"


def _eval_define(defines: dict, name: str, values: dict) -> int:
    """Value of a #define made of names and '+' (the stats layout), from the header text."""
    expr = defines[name]
    assert re.fullmatch(r"[()\sA-Z_0-9+]+", expr), expr
    return sum(
        values[t] if t in values else _eval_define(defines, t, values)
        for t in re.findall(r"[A-Z_][A-Z_0-9]*", expr)
    )


def test_stats_layout_matches_header():
    defines = _defines(_header())
    values = {}
    for c_enum in ENUMS:
        values.update(_enum(c_enum))
    assert shared.OUTCOME_MAX == values["CCXDP_OUT_MAX"]
    assert shared.STAT_MALFORMED_BASE == _eval_define(defines, "CCXDP_STAT_MALFORMED_BASE", values)
    assert shared.STAT_EVENT_BASE == _eval_define(defines, "CCXDP_STAT_EVENT_BASE", values)
    assert shared.STAT_ACTION_BASE == _eval_define(defines, "CCXDP_STAT_ACTION_BASE", values)
    assert shared.STAT_MAX == _eval_define(defines, "CCXDP_STAT_MAX", values)
    assert shared.STAT_MAX == (
        values["CCXDP_OUT_MAX"] + values["CCXDP_MAL_MAX"] + values["CCXDP_EV_MAX"]
        + values["CCXDP_ACTION_MAX"]
    )


@pytest.mark.parametrize("name", ["DNS_MAX_NAME_LEN", "DNS_MAX_LABEL_LEN", "DNS_MAX_LABELS"])
def test_dns_limits_match_header(name):
    assert getattr(shared, name) == _int_define(_defines(_header()), name)


def test_nh_key_words_match_header():
    from ccxdp.datapath import hashing

    assert shared.NH_KEY_WORDS == _int_define(_defines(_header()), "CCXDP_NH_KEY_WORDS")
    assert hashing.KEY_BYTES == ct_sizeof_hash_key()


def ct_sizeof_hash_key() -> int:
    import ctypes

    return ctypes.sizeof(shared.HashKeyLayout)


def test_entry_flags_match_header():
    defines = _defines(_header())
    flags = {k for k in defines if k.startswith("CCXDP_ENTRY_")}
    mirrors = {"CCXDP_ENTRY_SUBTREE": shared.ENTRY_SUBTREE,
               "CCXDP_ENTRY_ALLOW_NAME": shared.ENTRY_ALLOW_NAME,
               "CCXDP_ENTRY_NOT_SELF": shared.ENTRY_NOT_SELF,
               "CCXDP_ENTRY_ALLOW_BELOW": shared.ENTRY_ALLOW_BELOW}
    assert flags == set(mirrors), "a new entry flag needs its mirror in shared.py"
    for name, value in mirrors.items():
        assert value == _int_define(defines, name), name


def test_name_table_constants_match_header():
    defines = _defines(_header())
    for name in ("NAME_BUCKET_SLOTS", "NAME_BUCKETS_MIN", "NB_SPILLED", "NACT_LIVE",
                 "NACT_CAPACITY", "NACT_COUNT", "NACT_ENTRIES"):
        assert getattr(shared, name) == _int_define(defines, f"CCXDP_{name}"), name
    # One bucket is one cache line, and a bucket's slot counts fit the meta bits.
    assert ct.sizeof(shared.NameBucket) == 64
    assert shared.NAME_BUCKET_SLOTS <= 7


def test_pass_bits_match_header():
    defines = _defines(_header())
    bits = {k for k in defines if k.startswith("CCXDP_PASS_")}
    mirrors = {"CCXDP_PASS_FRAGMENTS": shared.PASS_FRAGMENTS,
               "CCXDP_PASS_UNPARSED": shared.PASS_UNPARSED}
    assert bits == set(mirrors), "a new pass bit needs its mirror in shared.py"
    for name, value in mirrors.items():
        assert value == _int_define(defines, name), name


def test_exempt_gate_index_matches_header():
    defines = _defines(_header())
    assert shared.EXEMPT_GATE_BITS == _int_define(defines, "CCXDP_EXEMPT_GATE_BITS")
    assert shared.EXEMPT_GATE_V4_BYTE == _int_define(defines, "CCXDP_EXEMPT_GATE_V4_BYTE")
    assert shared.EXEMPT_GATE_V6_BYTE == _int_define(defines, "CCXDP_EXEMPT_GATE_V6_BYTE")


def _pinned_in_maps_h() -> dict[str, tuple[str, str, str]]:
    """BPF_TABLE_PINNED declarations of maps.h:
    {identifier: (bcc map type, max_entries expression, CCXDP_MAP_* suffix)}"""
    text = _strip_comments(MAPS_H.read_text())
    found = {}
    for m in re.finditer(r"BPF_TABLE_PINNED\s*\((.*?)\)\s*;", text, re.DOTALL):
        args = [a.strip() for a in re.split(r",(?![^()]*\))", m.group(1))]
        assert len(args) in (6, 7), f"cannot read {m.group(0)!r}"
        kind, _key, _value, ident, size, pin = args[:6]
        pm = re.fullmatch(r"CCXDP_PIN\(\s*CCXDP_MAP_(\w+)\s*\)", pin)
        assert pm, f"{ident} is not pinned under CCXDP_PIN(CCXDP_MAP_*)"
        found[ident] = (kind.strip('"'), size, pm.group(1))
    return found


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
}


def _eval_c_int(expr: str, defines: dict[str, str], depth: int = 0) -> int:
    """Value of a C integer expression made of literals, + - * << >> and object-like macros."""
    assert depth < 16, f"macro expansion too deep: {expr}"
    expanded = re.sub(
        r"\b[A-Za-z_]\w*\b",
        lambda m: f"({_eval_c_int(defines[m.group(0)], defines, depth + 1)})",
        expr,
    )
    expanded = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expanded)

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise AssertionError(f"cannot evaluate C expression {expr!r}")

    return ev(ast.parse(expanded, mode="eval"))


def test_map_names_match_header():
    from_c = _map_defines()
    from_py = {
        k.removeprefix("MAP_"): v
        for k, v in vars(shared).items()
        if k.startswith("MAP_") and isinstance(v, str)
    }
    pinned = _pinned_in_maps_h()
    # Every pinned map is declared under the name its CCXDP_MAP_* string gives it ...
    for ident, (_kind, _size, suffix) in pinned.items():
        assert suffix in from_c, f"CCXDP_MAP_{suffix} is not #defined"
        assert from_c[suffix] == ident, f"{ident} is pinned as CCXDP_MAP_{suffix}"
    # ... and shared.py mirrors exactly the pinned ones (the scratch map is private to the C).
    assert {s: from_c[s] for _i, (_k, _n, s) in pinned.items()} == from_py
    assert set(shared.PINNED_MAPS) == set(pinned)


def test_map_and_program_names_fit_the_kernel():
    names = set(_map_defines().values()) | set(shared.PINNED_MAPS) | {shared.PROG_NAME}
    for name in names:
        assert len(name.encode()) <= BPF_OBJ_NAME_MAX, f"{name} is longer than 15 bytes"


def test_program_name_is_the_c_function():
    text = _strip_comments(PROG_C.read_text())
    assert re.search(rf"\bint\s+{shared.PROG_NAME}\s*\(\s*struct\s+xdp_md\b", text)


# -- bcc's compiled types and the kernel's maps --------------------------------------------


@pytest.fixture(scope="module")
def compiled():
    """The real program compiled by bcc as ccxdp compiles it, its maps pinned (bcc pins
    BPF_TABLE_PINNED maps at compile time) under a fresh folder that is always removed."""
    from ccxdp.datapath.kernel_headers import configure_environment

    configure_environment()
    from bcc import BPF

    pin_dir = make_pin_dir()
    dp = Datapath(pin_dir, Path("/nonexistent/ccxdp-test-layout"))  # state is never touched
    try:
        bpf = BPF(src_file=str(PROG_C).encode(), cflags=dp.build_cflags(LIMITS))
        try:
            yield bpf, dp
        finally:
            bpf.cleanup()
    finally:
        remove_pins(pin_dir)
        assert not pin_dir.exists()


def _assert_same_layout(c_type: type, py_type: type, where: str) -> None:
    assert ct.sizeof(c_type) == ct.sizeof(py_type), f"{where}: size"
    if issubclass(py_type, ct.Structure) or issubclass(c_type, ct.Structure):
        assert issubclass(c_type, ct.Structure), f"{where}: C has no struct here"
        assert issubclass(py_type, ct.Structure), f"{where}: Python has no Structure here"
        c_fields = [f[0] for f in c_type._fields_]
        py_fields = [f[0] for f in py_type._fields_]
        assert py_fields == c_fields, f"{where}: fields"
        for (name, c_ft, *c_bits), (_, py_ft, *py_bits) in zip(
            c_type._fields_, py_type._fields_, strict=True
        ):
            assert not c_bits and not py_bits, f"{where}.{name}: bitfield"
            c_field, py_field = getattr(c_type, name), getattr(py_type, name)
            assert py_field.offset == c_field.offset, f"{where}.{name}: offset"
            assert py_field.size == c_field.size, f"{where}.{name}: size"
            _assert_same_layout(c_ft, py_ft, f"{where}.{name}")
    elif issubclass(py_type, ct.Array) or issubclass(c_type, ct.Array):
        assert issubclass(c_type, ct.Array) and issubclass(py_type, ct.Array), f"{where}: array"
        assert py_type._length_ == c_type._length_, f"{where}: array length"
        _assert_same_layout(c_type._type_, py_type._type_, f"{where}[]")


@pytest.mark.root
@pytest.mark.parametrize("name", sorted(shared.PINNED_MAPS))
def test_map_types_match_bcc(compiled, name):
    bpf, _dp = compiled
    table = bpf[name.encode()]
    key_type, value_type = shared.PINNED_MAPS[name]
    # bcc widens a per-CPU map's Leaf to one value per CPU; sLeaf is the C value type.
    leaf = getattr(table, "sLeaf", table.Leaf)
    _assert_same_layout(table.Key, key_type, f"{name} key")
    _assert_same_layout(leaf, value_type, f"{name} value")


@pytest.mark.root
@pytest.mark.parametrize("name", sorted(shared.PINNED_MAPS))
def test_pinned_maps_as_the_kernel_reports_them(compiled, name):
    _bpf, dp = compiled
    fd = libbpf.obj_get(dp.pin_dir / name)
    try:
        info = libbpf.map_info(fd)
    finally:
        libbpf.close(fd)
    key_type, value_type = shared.PINNED_MAPS[name]
    kind, size, _suffix = _pinned_in_maps_h()[name]
    defines = {
        **_defines(_strip_comments(MAPS_H.read_text())),
        **_defines(_header()),
        **{k: str(v) for c_enum in ENUMS for k, v in _enum(c_enum).items()},
        **dict(f.removeprefix("-D").split("=", 1) for f in LIMITS.cflags()),
    }
    assert (info.type, info.max_entries) == (MapType[kind.upper()], _eval_c_int(size, defines))
    if name in EXPECTED_MAPS:
        assert (info.type, info.max_entries) == EXPECTED_MAPS[name]
    assert (info.key_size, info.value_size) == (ct.sizeof(key_type), ct.sizeof(value_type))
    assert info.name == name
    # The control plane's own open path accepts the pin with shared.py's types.
    with dp.open_map(name):
        pass


@pytest.mark.root
def test_every_map_name_is_a_table_of_the_program(compiled):
    from bcc import lib

    bpf, _dp = compiled
    # By fd, not bpf[name]: bcc's Python PerCpuArray refuses values whose size is not a
    # multiple of 8, which the private scratch map's is (the kernel rounds it up).
    for name in _map_defines().values():
        assert lib.bpf_table_fd(bpf.module, name.encode()) >= 0, f"no map {name} in the program"
    assert lib.bpf_table_fd(bpf.module, b"ccxdp_no_such_map") < 0
