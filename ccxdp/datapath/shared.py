"""Python view of bpf/ccxdp_shared.h: map names, enums and ctypes layouts.

The C header is the definition; tests/datapath/test_shared.py checks every size, field offset
and enum value here against the bcc-compiled types and the header text, so the two cannot drift.
CLI calls use these to open pinned maps without compiling anything.
"""

from __future__ import annotations

import ctypes as ct
import enum
from pathlib import Path


def bpf_dir() -> Path:
    """The C sources (this header among them): bpf/ in a checkout, ccxdp/bpf inside an
    installed package."""
    checkout = Path(__file__).resolve().parents[2] / "bpf"
    if (checkout / "ccxdp.bpf.c").is_file():
        return checkout
    from importlib.resources import files

    return Path(str(files("ccxdp") / "bpf"))


DNS_MAX_NAME_LEN = 255
DNS_MAX_LABEL_LEN = 63
DNS_MAX_LABELS = 127

MAP_STATS = "ccxdp_stats_v5"
MAP_NAME_BUCKETS = "ccxdp_nbkt_v1"
MAP_NAME_ACTIVE = "ccxdp_nact_v2"
MAP_NAME_FILTER = "ccxdp_nfilt_v1"
MAP_SOURCES = "ccxdp_srcs_v3"
MAP_SOURCE_EPOCH = "ccxdp_sepoch_v1"
MAP_PORTS = "ccxdp_ports_v1"
MAP_HASH_KEY = "ccxdp_hkey_v2"
MAP_CONFIG = "ccxdp_config_v5"
MAP_CONFIG_ACTIVE = "ccxdp_cact_v1"
MAP_EXEMPT = "ccxdp_exempt_v1"
MAP_EXEMPT_GATE = "ccxdp_exgate_v1"
MAP_PLAN = "ccxdp_plan_v1"
# The program itself is pinned beside its maps, so a second interface reuses it uncompiled.
# Its version moves with any map's: a program compiled for other maps must not be reused.
PROG_PIN = "ccxdp_xdp_v8"
PROG_PIN_PREFIX = "ccxdp_xdp_v"
PROG_NAME = "ccxdp_xdp"


class Outcome(enum.IntEnum):
    NOT_DNS = 0
    FRAGMENT = 1
    NOT_QUERY = 2
    MALFORMED = 3
    PASSED = 4
    BLOCKED = 5
    UNPARSED = 6
    ALLOWED = 7
    MONITORED = 8
    EXEMPT = 9
    TCP_OTHER = 10
    TCP_RETRY = 11


class Malformed(enum.IntEnum):
    HEADER = 0
    TRUNCATED = 1
    LABEL_TYPE = 2
    NAME_LEN = 3


class Event(enum.IntEnum):
    SOURCE_LOST = 0
    ANSWER_FAILED = 1
    OUTSIDE_PLAN = 2
    FRAGMENT_DROPPED = 3
    UNPARSED_DROPPED = 4
    TCP_CLOSED = 5
    NOT_UNICAST = 6


class Action(enum.IntEnum):
    DEFAULT = 0
    DROP = 1
    NXDOMAIN = 2
    NODATA = 3
    SINKHOLE = 4
    TC = 5
    REFUSED = 6
    MONITOR = 7
    ALLOW = 8


OUTCOME_MAX = len(Outcome)
STAT_MALFORMED_BASE = OUTCOME_MAX
STAT_EVENT_BASE = OUTCOME_MAX + len(Malformed)
STAT_ACTION_BASE = STAT_EVENT_BASE + len(Event)
STAT_MAX = STAT_ACTION_BASE + len(Action)

ENTRY_SUBTREE = 0x01
ENTRY_ALLOW_NAME = 0x02
ENTRY_NOT_SELF = 0x04
ENTRY_ALLOW_BELOW = 0x08
NAME_BUCKET_SLOTS = 7
NAME_BUCKETS_MIN = 65536
NB_SPILLED = 0x80
NACT_LIVE = 0
NACT_CAPACITY = 1
NACT_COUNT = 2  # + buffer
NACT_ENTRIES = 4

# The exempt gate (ccxdp_exgate): which 16 bits of a source index it (ccxdp_shared.h).
EXEMPT_GATE_BITS = 16
EXEMPT_GATE_V4_BYTE = 2
EXEMPT_GATE_V6_BYTE = 4


class Entry(ct.Structure):
    _fields_ = [("action", ct.c_uint8), ("flags", ct.c_uint8), ("category", ct.c_uint16)]


class NameBucket(ct.Structure):
    _fields_ = [
        ("tag_lo", ct.c_uint32 * NAME_BUCKET_SLOTS),  # hash bits 0-31
        ("tag_hi", ct.c_uint16 * NAME_BUCKET_SLOTS),  # hash bits 32-47
        ("category", ct.c_uint16 * NAME_BUCKET_SLOTS),
        ("what", ct.c_uint8 * NAME_BUCKET_SLOTS),  # action | flags << 4
        ("meta", ct.c_uint8),  # slots used (bits 0-2), of them first-bucket (3-5), spilled (7)
    ]


def pack_entry(action: int, flags: int, category: int) -> int:
    """An Entry as the 32-bit number its bytes make in a little-endian slot word."""
    return action | flags << 8 | category << 16


def unpack_entry(value: int) -> tuple[int, int, int]:
    return value & 0xFF, (value >> 8) & 0xFF, (value >> 16) & 0xFFFF


class SourceKey(ct.Structure):
    _fields_ = [
        ("addr", ct.c_uint8 * 16),
        ("category", ct.c_uint16),
        ("buffer", ct.c_uint8),  # the collection buffer: epoch & 1
        ("prefix_len", ct.c_uint8),  # leading bits of addr naming the source (128: IPv4)
    ]


class SourceHits(ct.Structure):
    _fields_ = [
        ("hits", ct.c_uint64),
        ("first_seen_ns", ct.c_uint64),
        ("last_seen_ns", ct.c_uint64),
    ]


NH_KEY_WORDS = 20


class HashKeyLayout(ct.Structure):
    """struct ccxdp_hash_key as the map holds it (ccxdp.datapath.hashing.HashKey is the key
    itself, with the hash it computes)."""

    _fields_ = [
        ("k0", ct.c_uint64),
        ("k1", ct.c_uint64),
        ("nh", ct.c_uint32 * NH_KEY_WORDS),
    ]


class Config(ct.Structure):
    _fields_ = [
        ("default_action", ct.c_uint8),
        ("source_prefix_v6", ct.c_uint8),
        ("edns_udp_size", ct.c_uint16),  # network order
        ("answer_ttl", ct.c_uint32),  # network order
        ("negative_ttl", ct.c_uint32),  # network order
        ("sinkhole_v4", ct.c_uint8 * 4),
        ("sinkhole_v6", ct.c_uint8 * 16),
        ("pass_unjudged", ct.c_uint8),  # PASS_* bits
        ("pad", ct.c_uint8 * 3),
    ]


# Bits of Config.pass_unjudged: which frames that cannot be judged pass instead of dropping.
PASS_FRAGMENTS = 0x01
PASS_UNPARSED = 0x02


class LpmKey(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("addr", ct.c_uint8 * 16)]


# (map name, key type, value type) for every pinned map, as the C declares them.
PINNED_MAPS: dict[str, tuple[type, type]] = {
    MAP_STATS: (ct.c_uint32, ct.c_uint64),
    MAP_NAME_BUCKETS: (ct.c_uint32, NameBucket),
    MAP_NAME_ACTIVE: (ct.c_uint32, ct.c_uint32),
    MAP_NAME_FILTER: (ct.c_uint32, ct.c_uint64),
    MAP_SOURCES: (SourceKey, SourceHits),
    MAP_SOURCE_EPOCH: (ct.c_uint32, ct.c_uint64),
    MAP_PORTS: (ct.c_uint32, ct.c_uint8),
    MAP_HASH_KEY: (ct.c_uint32, HashKeyLayout),
    MAP_CONFIG: (ct.c_uint32, Config),
    MAP_CONFIG_ACTIVE: (ct.c_uint32, ct.c_uint32),
    MAP_EXEMPT: (LpmKey, ct.c_uint8),
    MAP_EXEMPT_GATE: (ct.c_uint32, ct.c_uint8),
    MAP_PLAN: (LpmKey, ct.c_uint8),
}
