"""The differential fuzzer of the data path: generated and mutated frames through the loaded
XDP program (BPF_PROG_TEST_RUN) and through the reference model (tests/harness/xdp_model.py),
compared frame by frame (verdict, the whole output frame) and batch by batch (every counter,
every per-source hit).

Frames are built here byte by byte (scapy would cost more than the program and the model
together): Ethernet with 0-3 VLAN tags, IPv4 with and without options and fragment bits, IPv6
with 0-5 extension headers of every kind, UDP to judged and other ports, TCP, other protocols;
DNS queries for listed names, names below and above them, random names, the longest names,
every header flag, EDNS versions, classes, types, trailing bytes, Ethernet padding. Then
mutations: cuts at any length (with IP and UDP lengths left claiming more, or made to match),
random bit flips, random bytes, rewritten length fields. A scenario (the list, the settings,
the ports, the epoch) changes every few batches; the per-source map is emptied at each batch
and made small, so batches fill it and source_lost is exercised too.

Shared by tests/program/test_fuzz.py (a short run) and scripts/fuzz_datapath.py (long runs).
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import random
import struct
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ccxdp.datapath import bulk, libbpf, shared
from ccxdp.datapath.nametable import NameTable
from ccxdp.datapath.settings import Settings
from ccxdp.policy import exempt, plan
from ccxdp.policy.catalog import Catalog
from tests.harness import xdp_model as model

# BPF_PROG_TEST_RUN puts at most a page less XDP's headroom and skb_shared_info (3,520 bytes
# with 4 KiB pages) in the linear part and the rest in fragments, which the program, loaded
# without BPF_F_XDP_HAS_FRAGS, does not see; attached, it sees no frame that long either.
MAX_FRAME = 3000
TLDS = ("test", "example", "invalid", "lab")
LDH = "abcdefghijklmnopqrstuvwxyz0123456789-"
# Plans drawn from these: some clients inside, some outside, some exempt inside.
PLAN_PREFIXES = ("198.18.0.0/27", "198.18.7.0/24", "fd00:cc::/120", "fd00:cc::/32",
                 "10.0.0.0/8", "fd00:7::/48", "198.18.0.16/28")
EXEMPT_PREFIXES = ("198.18.7.0/24", "fd00:7::/64", "198.19.255.255/32")
CLIENTS4 = [f"198.18.{i // 256}.{i % 256}" for i in range(2, 40)] + ["198.18.7.9", "10.0.0.1"]
CLIENTS6 = [f"fd00:cc::{i:x}" for i in range(2, 30)] + ["fd00:7::9", "::ffff:198.18.0.2",
                                                       "::ffff:198.18.7.1"]
RESOLVERS4 = ["198.18.0.1"] * 12 + ["224.0.0.251", "255.255.255.255", "240.0.0.1",
                                   "223.255.255.1"]
RESOLVERS6 = ["fd00:cc::1"] * 8 + ["ff02::fb", "ff05::1:3", "fe80::1"]
MAC_CLIENT, MAC_RESOLVER = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")
MACS_DST = [MAC_RESOLVER] * 20 + [b"\xff" * 6, bytes.fromhex("01005e0000fb"),
                                  bytes.fromhex("333300000001")]
QTYPES = [1] * 6 + [28] * 4 + [15, 16, 255, 6, 0, 65535, 33, 12]
QCLASSES = [1] * 14 + [3, 255, 254, 0, 4]
# Entry actions, weighted to what lists hold: mostly blocks that are answered.
ACTIONS = [*shared.Action, *[shared.Action[a] for a in ("NXDOMAIN", "SINKHOLE", "SINKHOLE",
                                                         "NODATA", "TC", "REFUSED", "DROP")]]
SETTING_ACTIONS = ("drop", "nxdomain", "nodata", "sinkhole", "tc", "refused", "monitor")


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


PACKED = {4: ([packed(a) for a in CLIENTS4], [packed(a) for a in RESOLVERS4]),
          6: ([packed(a) for a in CLIENTS6], [packed(a) for a in RESOLVERS6])}


# -- scenarios -------------------------------------------------------------------------------


@dataclass
class Scenario:
    """What the kernel holds besides the frames: the list, the settings, the ports, the epoch."""

    names: dict[str, model.ModelEntry]  # normalized name -> entry
    settings: Settings
    ports: frozenset[int]
    epoch: int
    plan: tuple[str, ...] | None = None  # the address plan's prefixes; None: no plan

    def model_state(self, capacity: int) -> model.ModelState:
        s = self.settings
        return model.ModelState(
            settings=model.ModelSettings(
                default_action=shared.Action[s.default_action.upper()],
                sinkhole_v4=packed(s.sinkhole_v4), sinkhole_v6=packed(s.sinkhole_v6),
                answer_ttl=s.answer_ttl, negative_ttl=s.negative_ttl,
                edns_udp_size=s.edns_udp_size, source_prefix_v6=s.source_prefix_v6,
                pass_fragments=s.fragments == "pass", pass_unparsed=s.unparsed == "pass"),
            ports=self.ports,
            entries={model.wire_of([lb.encode() for lb in n.split(".")]): e
                     for n, e in self.names.items()},
            exempt=tuple(ipaddress.IPv6Network(_mapped(p)) for p in EXEMPT_PREFIXES),
            epoch=self.epoch,
            plan=None if self.plan is None else tuple(
                ipaddress.IPv6Network(_mapped(p)) for p in self.plan),
            source_capacity=capacity,
        )


def _mapped(prefix: str) -> str:
    net = ipaddress.ip_network(prefix)
    if net.version == 6:
        return str(net)
    return f"::ffff:{net.network_address}/{net.prefixlen + 96}"


def random_label(rng: random.Random, lo: int = 1, hi: int = 12) -> str:
    chars = rng.choices(LDH, k=rng.randint(lo, hi))
    chars[0], chars[-1] = rng.choice(LDH[:36]), rng.choice(LDH[:36])  # no hyphen at the ends
    return "".join(chars)


def random_name(rng: random.Random) -> str:
    shape = rng.random()
    if shape < 0.05:  # as long as a name gets: 255 bytes in wire form
        labels = [random_label(rng, 63, 63) for _ in range(3)]
        return ".".join([*labels, random_label(rng, 57, 57), rng.choice(TLDS)])[:253]
    if shape < 0.08:  # as deep as a name gets
        return ".".join(rng.choice("abcxyz") for _ in range(rng.randint(100, 127)))
    labels = [random_label(rng) for _ in range(rng.randint(1, 4))]
    return ".".join([*labels, rng.choice(TLDS)])


def random_flags(rng: random.Random) -> int:
    """Entry flags in any combination, the ones lists make most often."""
    weights = ((shared.ENTRY_SUBTREE, 0.6), (shared.ENTRY_NOT_SELF, 0.15),
               (shared.ENTRY_ALLOW_NAME, 0.15), (shared.ENTRY_ALLOW_BELOW, 0.15))
    return sum(bit for bit, p in weights if rng.random() < p)


def random_scenario(rng: random.Random) -> Scenario:
    names: dict[str, model.ModelEntry] = {}
    for _ in range(rng.randint(8, 40)):
        name = random_name(rng).rstrip("-.")
        if any(not lb or len(lb) > 63 or lb[0] == "-" or lb[-1] == "-"
               for lb in name.split(".")) or len(name) > 253:
            continue
        names[name] = model.ModelEntry(action=rng.choice(ACTIONS), flags=random_flags(rng),
                                       category=rng.choice((0, 0, 1, 2, 7, 0xFFFF)))
    # parents and children of listed names, so that entries nest
    for name in list(names)[:6]:
        parent = name.split(".", 1)[-1]
        child = f"{random_label(rng)}.{name}"
        for n in (parent, child):
            if len(n) <= 253 and "." in n:
                names.setdefault(n, model.ModelEntry(rng.choice(ACTIONS), random_flags(rng),
                                                     rng.choice((0, 3, 9))))
    settings = Settings(
        default_action=rng.choice(SETTING_ACTIONS),
        sinkhole_v4=str(ipaddress.IPv4Address(rng.getrandbits(32))),
        sinkhole_v6=str(ipaddress.IPv6Address(rng.getrandbits(128))),
        answer_ttl=rng.choice((0, 1, 300, 2**31 - 1, rng.randrange(2**31))),
        negative_ttl=rng.choice((0, 45, 300, 2**31 - 1, rng.randrange(2**31))),
        edns_udp_size=rng.choice((512, 1232, 1400, 4096, 65535)),
        source_prefix_v6=rng.choice((64, 64, 56, 48, 60, 127, 128)),
        fragments=rng.choice(("drop", "drop", "pass")),
        unparsed=rng.choice(("drop", "drop", "pass")),
    )
    prefixes = None if rng.random() < 0.4 else tuple(rng.sample(PLAN_PREFIXES, rng.randint(1, 4)))
    ports = frozenset(rng.choice(([53], [53], [53], [53, 5353], [5353], [53, 853, 10053])))
    return Scenario(names, settings, ports, rng.randrange(2**64), prefixes)


# -- frames ----------------------------------------------------------------------------------


def wire_keeping_case(name: str) -> bytes:
    if name in ("", "."):
        return b"\0"
    return b"".join(bytes([len(lb)]) + lb.encode("latin-1") for lb in name.split(".")) + b"\0"


def flip_case(rng: random.Random, name: str) -> str:
    return "".join(c.upper() if c.isalpha() and rng.random() < 0.5 else c for c in name)


class FrameMaker:
    """Random frames for one scenario; every choice comes from rng, so a seed replays a run."""

    def __init__(self, rng: random.Random, scenario: Scenario):
        self.rng = rng
        self.scenario = scenario
        self.listed = list(scenario.names)

    # DNS ----------------------------------------------------------------------------------
    def qname(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.65 and self.listed:
            name = rng.choice(self.listed)
            how = rng.random()
            if how < 0.25:
                name = ".".join(random_label(rng) for _ in range(rng.randint(1, 3))) + "." + name
            elif how < 0.35:
                name = name.split(".", 1)[-1]
            elif how < 0.42:
                name = random_label(rng) + name  # sibling text: notevil.test
            if len(name) > 253:
                name = name[-253:].lstrip(".-") or "x"
            return wire_keeping_case(flip_case(rng, name) if rng.random() < 0.5 else name)
        if r < 0.8:
            return wire_keeping_case(flip_case(rng, random_name(rng)))
        if r < 0.82:
            return b"\0"
        if r < 0.86:  # any bytes at all in labels, the root's zero byte included
            labels = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 20)))
                      for _ in range(rng.randint(1, 5))]
            return b"".join(bytes([len(x)]) + x for x in labels) + b"\0"
        if r < 0.9:  # compression pointer or reserved label types
            head = wire_keeping_case(random_label(rng))[:-1]
            return head + bytes([rng.choice((0xC0, 0x40, 0x80, 0xFF)), rng.randrange(256)])
        if r < 0.95:  # about 255 bytes, either side of the limit
            total = rng.randint(245, 270)
            out = b""
            while len(out) + 1 < total:
                n = min(63, total - len(out) - 2)
                if n < 1:
                    break
                out += bytes([n]) + b"a" * n
            return out + b"\0"
        return b"".join(b"\x01" + bytes([rng.choice(b"abAB")])
                        for _ in range(rng.randint(120, 130))) + b"\0"

    def dns_message(self) -> bytes:
        rng = self.rng
        flags = 0x0100 if rng.random() < 0.8 else 0
        if rng.random() < 0.1:
            flags |= rng.choice((0x8000, 0x0800, 0x2000, 0x7800, 0x0010, 0x0020, 0x0040,
                                 0x0200, 0x0400, 0x000F, 0x0080))
        if rng.random() < 0.05:
            flags = rng.getrandbits(16)
        qdcount = 1 if rng.random() < 0.93 else rng.choice((0, 2, 65535))
        an, ns = (0, 0) if rng.random() < 0.95 else (rng.randrange(3), rng.randrange(3))
        body = self.qname() + struct.pack("!HH", rng.choice(QTYPES), rng.choice(QCLASSES))
        arcount = 0
        r = rng.random()
        if r < 0.35:
            version = 0 if rng.random() < 0.85 else rng.choice((1, 2, 255))
            dflags = 0x8000 if rng.random() < 0.4 else 0
            options = b"" if rng.random() < 0.5 else struct.pack("!HH", 10, 8) + bytes(8)
            body += struct.pack("!BHHBBHH", 0, 41, rng.choice((512, 1232, 4096)),
                                rng.choice((0, 0, 0, 1)), version, dflags, len(options))
            body += options
            arcount = 1
        elif r < 0.4:  # some other record first
            body += b"\0\x00\x01\x00\x01\0\0\0\0\0\0"
            arcount = 1
        elif r < 0.43:
            arcount = rng.randrange(1, 4)
        if rng.random() < 0.05:
            body += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 30)))
        header = struct.pack("!6H", rng.getrandbits(16), flags, qdcount, an, ns, arcount)
        return header + body

    # L2-L4 ----------------------------------------------------------------------------------
    def l2(self, ethertype: int) -> bytes:
        rng = self.rng
        dst = rng.choice(MACS_DST)
        tags = b""
        r = rng.random()
        count = 0 if r < 0.7 else 1 if r < 0.85 else 2 if r < 0.96 else 3
        kinds = [0x88A8, 0x8100, 0x8100][-count:] if count else []
        if count and rng.random() < 0.2:
            kinds = [rng.choice((0x8100, 0x88A8)) for _ in kinds]
        for i in range(len(kinds)):
            inner = kinds[i + 1] if i + 1 < len(kinds) else ethertype
            tags += struct.pack("!HH", rng.randrange(4096), inner)
        first = kinds[0] if kinds else ethertype
        return dst + MAC_CLIENT + struct.pack("!H", first) + tags

    def ipv4(self, proto: int, payload: bytes) -> bytes:
        rng = self.rng
        options = b""
        if rng.random() < 0.1:
            options = rng.choice((b"\x01\x01\x01\x00", b"\x07\x07\x04\xc6\x12\x00\x09\x00",
                                  b"\x94\x04\x00\x00"))
        frag = 0x4000 if rng.random() < 0.5 else 0
        if rng.random() < 0.06:
            frag = rng.choice((0x2000, 0x0001, 0x2010, 0x1FFF, 0x6000))
        src = rng.choice(PACKED[4][0])
        dst = rng.choice(PACKED[4][1])
        ihl = 5 + len(options) // 4
        total = 4 * ihl + len(payload)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, rng.choice((0, 0, 0x10, 0xB8)), total,
                          rng.getrandbits(16), frag, rng.choice((64, 1, 255)), proto, 0,
                          src, dst) + options
        hdr = hdr[:10] + struct.pack("!H", model.checksum(hdr)) + hdr[12:]
        return hdr + payload

    def ipv6(self, proto: int, payload: bytes) -> tuple[bytes, int]:
        rng = self.rng
        exts = b""
        kinds: list[int] = []
        r = rng.random()
        if r < 0.25:
            n = rng.choice((1, 1, 2, 3, 4, 5))
            kinds = [rng.choice((0, 43, 60, 60, 44, 51)) if rng.random() < 0.3
                     else rng.choice((0, 43, 60)) for _ in range(n)]
        for i, kind in enumerate(kinds):
            nxt = kinds[i + 1] if i + 1 < len(kinds) else proto
            if kind == 44:
                exts += struct.pack("!BBHI", nxt, 0, rng.choice((1, 0, 8, 9)), 7)
            elif kind == 51:
                exts += struct.pack("!BBHII", nxt, 4, 0, 1, 1) + bytes(12)
            elif kind == 43:
                exts += struct.pack("!BBBB4x", nxt, 0, 0, 0)
            else:
                # up to the largest (2,048 bytes), where the QNAME lies furthest in
                size = 255 if rng.random() < 0.01 else rng.choice((0, 0, 0, 1, 3))
                exts += struct.pack("!BB", nxt, size) + bytes(6 + 8 * size)  # Pad1 options
        first = kinds[0] if kinds else proto
        src, dst = rng.choice(PACKED[6][0]), rng.choice(PACKED[6][1])
        body = exts + payload
        hdr = struct.pack("!IHBB16s16s", 0x60000000 | rng.getrandbits(20) * (rng.random() < .3),
                          len(body), first, rng.choice((64, 1, 255)), src, dst)
        return hdr + body, len(exts)

    def udp(self, payload: bytes, dport: int) -> bytes:
        sport = self.rng.choice((40000, 53, 5353, self.rng.randrange(1, 65536)))
        return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload

    def tcp(self, message: bytes, dport: int) -> bytes:
        """A segment as dig, kdig and dnspython send a query (PSH+ACK, the 2-byte length, then
        the message, timestamps on), or one that starts no query: the handshake, a bare ACK or
        FIN, data on a SYN, a length alone; or a message split over segments, sent after its
        length's segment, or two pipelined."""
        rng = self.rng
        flags = 0x18 if rng.random() < 0.7 else rng.choice((0x02, 0x10, 0x11, 0x04, 0x12, 0x38,
                                                            0x1A, 0x08))
        options = b"\x01\x01\x08\x0a" + bytes(rng.getrandbits(8) for _ in range(8))
        if rng.random() < 0.3:
            options = b"" if rng.random() < 0.7 else b"\x02\x04\x05\xb4"
        r = rng.random()
        payload = struct.pack("!H", len(message)) + message
        if r < 0.05:
            payload = payload[:2]
        elif r < 0.1 and len(payload) > 3:
            payload = payload[:rng.randrange(3, len(payload))]  # the rest in a later segment
        elif r < 0.15:
            payload += payload  # pipelined: the first decides
        elif r < 0.22:
            payload = message  # the length went in a segment of its own
        return struct.pack("!HHIIBBHHH", rng.randrange(1024, 65536), dport, rng.getrandbits(32),
                           rng.getrandbits(32), (5 + len(options) // 4) << 4, flags,
                           rng.randrange(65536), 0, rng.choice((0, 0, 0, 7))) + options + payload

    def dport(self) -> int:
        rng = self.rng
        r = rng.random()
        if r < 0.82:
            return 53
        if r < 0.9:
            return rng.choice((5353, 853, 10053))
        return rng.randrange(65536)

    def frame(self, message: bytes | None = None) -> bytes:
        """One frame before mutations; with a message given, that message in UDP or TCP to a
        judged port."""
        rng = self.rng
        given = message is not None
        if message is None:
            message = self.dns_message()
            if rng.random() < 0.08:  # a cut message whose lengths match the cut
                message = message[:rng.randrange(len(message))]
        r = rng.random() * (0.96 if given else 1)
        dport = min(self.scenario.ports) if given else self.dport()
        if r < 0.75:
            l4 = self.udp(message, dport)
            proto = model.IPPROTO_UDP
        elif r < 0.96:
            l4 = self.tcp(message, dport)
            proto = model.IPPROTO_TCP
        else:
            l4 = bytes(rng.getrandbits(8) for _ in range(rng.randint(8, 40)))
            proto = rng.choice((1, 58, 132, 47))
        r = rng.random()
        if r < 0.55:
            frame = self.l2(model.ETH_P_IP) + self.ipv4(proto, l4)
        elif r < 0.98:
            frame = self.l2(model.ETH_P_IPV6) + self.ipv6(proto, l4)[0]
        else:
            frame = self.l2(rng.choice((0x0806, 0x8847, 0x88CC, 0x0000))) + l4
        if len(frame) < 60 and rng.random() < 0.5:  # Ethernet padding, not always zero
            fill = 0 if rng.random() < 0.5 else 0x5A
            frame += bytes([fill]) * (60 - len(frame))
        return frame

    def mutate(self, frame: bytes) -> bytes:
        rng = self.rng
        f = bytearray(frame)
        r = rng.random()
        if r < 0.3:  # a cut at any length; the lengths inside still claim more
            return bytes(f[:rng.randint(14, len(f))])
        if r < 0.7:
            span = len(f) if rng.random() < 0.5 else min(len(f), 90)
            for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
                i = rng.randrange(span)
                f[i] ^= 1 << rng.randrange(8)
            return bytes(f)
        if r < 0.85:
            i = rng.randrange(len(f))
            f[i] = rng.randrange(256)
            return bytes(f)
        # rewrite a length field where it usually sits (IPv4 total, UDP length, IPv6 payload)
        at = rng.choice((16, 38, 18, 58, 20, 42, 62))
        if at + 2 <= len(f):
            f[at:at + 2] = struct.pack("!H", rng.choice((0, 1, 19, 20, 27, 28, rng.randrange(65536),
                                                        len(f) - 14, len(f))))
        return bytes(f)

    def frames(self) -> Iterator[bytes]:
        while True:
            frame = self.frame()
            if len(frame) > MAX_FRAME:
                continue
            yield self.mutate(frame) if self.rng.random() < 0.45 else frame


def every_cut(frame: bytes) -> Iterator[bytes]:
    """Every cut of a frame from the Ethernet header on (BPF_PROG_TEST_RUN refuses less)."""
    for n in range(14, len(frame)):
        yield frame[:n]


def systematic_cuts(rng: random.Random, scenario: Scenario, queries: int = 6) -> list[bytes]:
    """For a few blocked queries the program rewrites (answered, or over TCP closed): every cut
    of the frame (its IP and UDP lengths still claiming the whole), and every cut of the DNS
    message with the lengths made to match, as a sender of a short message would make it."""
    maker = FrameMaker(rng, scenario)
    state = scenario.model_state(1 << 20)
    out: list[bytes] = []
    for _ in range(queries):
        for _attempt in range(2000):
            message = maker.dns_message()
            frame = maker.frame(message)
            want = model.judge(frame, state)
            if want.stats[model.OUT.BLOCKED] and want.frame is not None:
                break
        else:
            return out  # this scenario's list answers nothing
        out += every_cut(frame)
        out += (maker.frame(message[:n]) for n in range(len(message)))
    return out


# -- the kernel side -------------------------------------------------------------------------


class Kernel:
    """The loaded program and its maps, set up the way the control plane does it."""

    def __init__(self, dp, fd: int):
        self.dp, self.fd = dp, fd
        with dp.open_map(shared.MAP_SOURCES) as m:
            self.source_capacity = m.info.max_entries
        keys = [exempt.lpm_key(ipaddress.ip_network(p)) for p in EXEMPT_PREFIXES]
        exempt._write(dp, keys)  # as exempt.add does, without a catalog
        self._exempt_keys = keys

    def close(self) -> None:
        with Catalog(self.dp.catalog_path) as catalog:
            plan.set_prefixes(self.dp, catalog, [])
        with self.dp.open_map(shared.MAP_EXEMPT) as m:
            for k in self._exempt_keys:
                m.delete(k)
        exempt._set_gate(self.dp)

    def apply(self, scenario: Scenario) -> None:
        names = list(scenario.names)
        hashes = bulk.hash_names(names, self.dp.hash_key())
        values = array("Q", (shared.pack_entry(e.action, e.flags, e.category)
                             for e in scenario.names.values()))
        with NameTable(self.dp) as table:
            table.publish(*bulk.sort_pairs(hashes, values))
        self.dp.set_settings(scenario.settings)
        self.dp.set_dns_ports(scenario.ports)
        with self.dp.open_map(shared.MAP_SOURCE_EPOCH) as m:
            m.update(ct.c_uint32(0), ct.c_uint64(scenario.epoch))
        with Catalog(self.dp.catalog_path) as catalog:
            plan.set_prefixes(self.dp, catalog, list(scenario.plan or ()))

    def clear_sources(self) -> None:
        with self.dp.open_map(shared.MAP_SOURCES) as m:
            for k in list(m.keys()):
                m.delete(k)

    def stats(self) -> list[int]:
        with self.dp.open_map(shared.MAP_STATS) as m:
            return [m.lookup_sum(ct.c_uint32(i)).value for i in range(shared.STAT_MAX)]

    def sources(self) -> dict[tuple[bytes, int, int, int], int]:
        with self.dp.open_map(shared.MAP_SOURCES) as m:
            return {(bytes(k.addr), k.category, k.buffer, k.prefix_len): v.hits
                    for k, v in m.lookup_batch()}

    def run(self, frame: bytes) -> libbpf.TestRunResult:
        return libbpf.prog_test_run(self.fd, frame)


# -- the comparison --------------------------------------------------------------------------


STAT_NAMES = (
    [o.name.lower() for o in shared.Outcome]
    + [f"malformed.{m.name.lower()}" for m in shared.Malformed]
    + [f"event.{e.name.lower()}" for e in shared.Event]
    + [f"action.{a.name.lower()}" for a in shared.Action]
)


@dataclass
class Divergence:
    frame: bytes
    what: str  # "verdict", "frame", "counters", "sources"
    expected: str
    got: str
    why: str  # the model's rule that decided

    def __str__(self) -> str:
        frame = self.frame.hex()
        if len(frame) > 1200:
            frame = f"{frame[:1200]}... ({len(self.frame)} bytes)"
        return f"{self.what}: model {self.expected} ({self.why}), program {self.got}; {frame}"


@dataclass
class Report:
    frames: int = 0
    seconds: float = 0.0
    counts: Counter = field(default_factory=Counter)  # by STAT_NAMES
    verdicts: Counter = field(default_factory=Counter)
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def counter_delta(before: list[int], after: list[int]) -> Counter:
    return Counter({i: a - b for i, (a, b) in enumerate(zip(after, before, strict=True))
                    if a != b})


def _stats_text(c: Counter) -> str:
    return ", ".join(f"{STAT_NAMES[i]}+{n}" for i, n in sorted(c.items()) if n) or "none"


class Fuzzer:
    def __init__(self, kernel: Kernel, seed: int, batch: int = 2000, scenario_every: int = 5,
                 max_divergences: int = 20):
        self.kernel = kernel
        self.rng = random.Random(seed)
        self.batch = batch
        self.scenario_every = scenario_every
        self.max_divergences = max_divergences

    def run(self, total: int, extra: Callable[[Scenario], list[bytes]] | None = None,
            progress: Callable[[Report], None] | None = None) -> Report:
        """total frames; extra(scenario) may add frames of its own to each scenario's first
        batch (the systematic cuts of the short run)."""
        report = Report()
        started = time.perf_counter()
        batches = 0
        while report.frames < total and len(report.divergences) < self.max_divergences:
            if batches % self.scenario_every == 0:
                scenario = random_scenario(self.rng)
                self.kernel.apply(scenario)
                maker = FrameMaker(self.rng, scenario)
                stream = maker.frames()
                pending = list(extra(scenario)) if extra else []
            n = min(self.batch, total - report.frames)
            frames = pending[:n]
            pending = pending[n:]
            frames += [next(stream) for _ in range(n - len(frames))]
            self._batch(scenario, frames, report)
            batches += 1
            report.frames += len(frames)
            report.seconds = time.perf_counter() - started
            if progress:
                progress(report)
        del report.divergences[self.max_divergences:]
        return report

    def _batch(self, scenario: Scenario, frames: list[bytes], report: Report) -> None:
        k = self.kernel
        k.clear_sources()
        state = scenario.model_state(k.source_capacity)
        before = k.stats()
        expected = Counter()
        for frame in frames:
            want = model.judge(frame, state)
            got = k.run(frame)
            expected.update(want.stats)
            report.verdicts[want.retval] += 1
            self._compare_frame(frame, want, got, report)
        after = k.stats()
        delta = counter_delta(before, after)
        report.counts.update({STAT_NAMES[i]: n for i, n in expected.items()})
        got_sources = k.sources()
        if delta != +expected or got_sources != state.sources:
            self._locate(scenario, frames, report)

    def _compare_frame(self, frame: bytes, want: model.Verdict, got, report: Report) -> None:
        if got.retval != want.retval:
            report.divergences.append(Divergence(frame, "verdict", str(want.retval),
                                                 str(got.retval), want.why))
        elif want.frame is not None and got.data_out != want.frame:
            report.divergences.append(Divergence(
                frame, "frame", want.frame.hex(), got.data_out.hex(), want.why))

    def _locate(self, scenario: Scenario, frames: list[bytes], report: Report) -> None:
        """Counters differ over a batch: replay it a frame at a time to name the frame."""
        k = self.kernel
        k.clear_sources()
        state = scenario.model_state(k.source_capacity)
        for frame in frames:
            before = k.stats()
            want = model.judge(frame, state)
            k.run(frame)
            after = k.stats()
            delta = counter_delta(before, after)
            got_sources = k.sources()
            if delta != +want.stats:
                report.divergences.append(Divergence(frame, "counters", _stats_text(want.stats),
                                                     _stats_text(delta), want.why))
                return
            if got_sources != state.sources:
                missing = set(state.sources.items()) ^ set(got_sources.items())
                report.divergences.append(Divergence(frame, "sources", str(want.source),
                                                     str(sorted(missing)[:4]), want.why))
                return
        report.divergences.append(Divergence(b"", "counters", "batch differs",
                                             "no single frame differs", ""))
