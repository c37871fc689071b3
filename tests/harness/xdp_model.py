"""A reference model of the XDP program, written from the documented rules, not from the C.

What it follows: README.md, docs/matching.md, docs/answers.md, docs/datapath.md (the order in
which a frame's outcome is decided) and docs/threat-model.md; the record layouts the answers
use are the ones docs/answers.md spells out. It shares nothing with the program but the
numbering of the counters (ccxdp.datapath.shared, itself held to ccxdp_shared.h by a test):
names are matched by their labels, lower-cased, never through the name hash, and the answer
frame is written byte by byte here, checksums included.

`judge(frame, state)` says what the program must do with one frame: the verdict, the frame it
must leave (the input itself when passed, the answer when sent back, the segment made a FIN
when a TCP query's connection is closed), the counters that move and the per-source hit it
counts. Each rule is one function, so that a rule that changes (TCP
judged, fragments dropped, the subscriber address plan, answers to queries with IP options)
replaces that function alone:

    link_layer       Ethernet, VLAN tags
    network_layer    IPv4, IPv6 and its extension headers
    on_fragment      what an IP fragment gets (the `fragments` setting)
    on_deep_headers  what headers deeper than parsed get (the `unparsed` setting)
    transport        UDP or TCP to a judged port
    dns_query        the DNS header and the lengths around it (UDP)
    tcp_segment      a TCP segment that starts a query
    is_exempt        opted-out sources
    question         the QNAME walk
    decide           the most specific entry
    count_source     the address plan, the per-source key (IPv6 per prefix), the full map
    answerable       which blocked queries may be answered from here
    answer_frame     the answer, byte by byte
    fin_frame        a blocked TCP query's segment made a bare FIN+ACK
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass, field

from ccxdp.datapath import shared

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3

OUT = shared.Outcome
A = shared.Action

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
VLAN_TYPES = (ETH_P_8021Q, ETH_P_8021AD)
MAX_VLAN_TAGS = 2  # docs/datapath.md: "up to two VLAN tags"
MAX_IPV6_EXT = 4  # docs/datapath.md: "up to four hop-by-hop/routing/destination-options"
IPPROTO_HOPOPTS, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ROUTING = 0, 6, 17, 43
IPPROTO_FRAGMENT, IPPROTO_AH, IPPROTO_DSTOPTS = 44, 51, 60
IPV6_WALKED = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS)
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
NO_PORT = -1  # a first fragment that is neither UDP nor TCP

DNS_HEADER = 12
FLAG_QR, FLAG_TC, FLAG_RD, FLAG_RA, FLAG_CD = 0x8000, 0x0200, 0x0100, 0x0080, 0x0010
OPCODE_MASK = 0x7800
RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_REFUSED = 0, 3, 5
TYPE_A, TYPE_SOA, TYPE_AAAA, TYPE_OPT, CLASS_IN = 1, 6, 28, 41, 1
MAX_NAME = 255
ANSWER_HOPS = 64  # docs/answers.md: TTL / hop limit of an answer
SOA_TIMERS = (1, 3600, 600, 86400)  # serial, refresh, retry, expire (docs/answers.md)
PTR_TO_QNAME = 0xC00C


@dataclass(frozen=True)
class ModelEntry:
    """One listed name as the kernel holds it: enum ccxdp_action, CCXDP_ENTRY_* flags."""

    action: int
    flags: int
    category: int


@dataclass(frozen=True)
class ModelSettings:
    default_action: int  # enum ccxdp_action
    sinkhole_v4: bytes
    sinkhole_v6: bytes
    answer_ttl: int
    negative_ttl: int
    edns_udp_size: int
    source_prefix_v6: int = 128  # IPv6 hits are counted per prefix of this length
    pass_fragments: bool = False  # `fragments`: pass (True) or drop (False, the default)
    pass_unparsed: bool = False  # `unparsed`: likewise


@dataclass
class ModelState:
    """What the program reads besides the frame, and the per-source map it writes."""

    settings: ModelSettings
    ports: frozenset[int]
    entries: dict[bytes, ModelEntry]  # lower-cased wire form -> entry
    exempt: tuple[ipaddress.IPv6Network, ...] = ()  # IPv4 prefixes IPv4-mapped
    plan: tuple[ipaddress.IPv6Network, ...] | None = None  # None: no address plan
    epoch: int = 0
    source_capacity: int = 1 << 20  # entries the per-source map holds, both buffers
    sources: dict[tuple[bytes, int, int, int], int] = field(default_factory=dict)


@dataclass
class Verdict:
    retval: int
    frame: bytes | None  # what the frame must be afterwards; None: dropped (not looked at)
    stats: Counter = field(default_factory=Counter)  # index in ccxdp_stats -> increments
    source: tuple[bytes, int, int, int] | None = None  # key counted (addr, cat, buffer, len)
    why: str = ""  # the rule that decided, for reports


class Decided(Exception):
    """A rule decided the frame's fate; raised so every rule stays a plain function."""

    def __init__(self, outcome: int, retval: int = XDP_PASS, malformed: int | None = None,
                 why: str = "", event: int | None = None):
        super().__init__(why)
        self.outcome, self.retval, self.malformed, self.why = outcome, retval, malformed, why
        self.event = event


def _pass(outcome: int, why: str, malformed: int | None = None) -> Decided:
    return Decided(outcome, XDP_PASS, malformed, why)


def unjudged(outcome: int, passes: bool, event: int, why: str) -> Decided:
    """A frame that cannot be judged and may hide a query: passed if its setting says pass,
    else dropped and counted as the event; its outcome is counted either way."""
    if passes:
        return _pass(outcome, f"{why}: passed by the setting")
    return Decided(outcome, XDP_DROP, None, f"{why}: dropped", event)


@dataclass
class Packet:
    """What the layers below DNS told about one frame."""

    frame: bytes
    l3: int = 0
    l4: int = 0
    ipv6: bool = False
    ip_end: int = 0  # by the IP header's own length field
    protocol: int = 0
    source: bytes = b""  # 16 bytes, IPv4 IPv4-mapped
    dest: bytes = b""  # 4 or 16 bytes
    fragment: bool = False
    deep: bool = False  # headers deeper than parsed
    ip_options: bool = False  # IPv4 options or IPv6 extension headers present
    tcp: bool = False  # the query came over TCP
    dns: int = 0  # offset of the DNS header
    payload_end: int = 0  # the DNS message's end, by the UDP length


# -- the layers ------------------------------------------------------------------------------


def link_layer(p: Packet, state: ModelState) -> int:
    """Ethernet and up to two VLAN tags (802.1Q, 802.1ad): the EtherType after them, with the
    cursor at the IP header. A third tag: unparsed."""
    f = p.frame
    if len(f) < 14:
        raise _pass(OUT.NOT_DNS, "shorter than Ethernet")
    proto = int.from_bytes(f[12:14], "big")
    off = 14
    for _ in range(MAX_VLAN_TAGS):
        if proto not in VLAN_TYPES:
            break
        if off + 4 > len(f):
            raise _pass(OUT.NOT_DNS, "VLAN tag cut")
        proto = int.from_bytes(f[off + 2:off + 4], "big")
        off += 4
    if proto in VLAN_TYPES:
        on_deep_headers(p, state, "more VLAN tags than parsed")
    p.l3 = off
    return proto


def network_layer(p: Packet, proto: int, state: ModelState) -> None:
    """IPv4 (IHL honoured) or IPv6 with its extension headers, chosen by the EtherType."""
    if proto == ETH_P_IP:
        ipv4(p, state)
    elif proto == ETH_P_IPV6:
        ipv6(p, state)
    else:
        raise _pass(OUT.NOT_DNS, "not IP")


def first_fragment_port(p: Packet, at: int, protocol: int) -> int | None:
    """The destination port a first fragment carries at `at`: NO_PORT if it is neither UDP
    nor TCP, None if the frame ends before it (RFC 1858's tiny fragment)."""
    if protocol not in (IPPROTO_UDP, IPPROTO_TCP):
        return NO_PORT
    if at + 4 > len(p.frame):
        return None
    return int.from_bytes(p.frame[at + 2:at + 4], "big")


def ipv4(p: Packet, state: ModelState) -> None:
    f, at = p.frame, p.l3
    if at + 20 > len(f):
        raise _pass(OUT.NOT_DNS, "IPv4 header cut")
    ihl = (f[at] & 0x0F) * 4
    if ihl < 20 or at + ihl > len(f):
        raise _pass(OUT.NOT_DNS, "IPv4 header length bad or cut")
    frag = int.from_bytes(f[at + 6:at + 8], "big")
    p.fragment = bool(frag & 0x3FFF)  # MF or a fragment offset
    first = not frag & 0x1FFF
    p.protocol = f[at + 9]
    p.ip_end = at + int.from_bytes(f[at + 2:at + 4], "big")
    p.source = b"\0" * 10 + b"\xff\xff" + f[at + 12:at + 16]
    p.dest = f[at + 16:at + 20]
    p.ip_options = ihl > 20
    p.l4 = at + ihl
    if p.fragment:
        on_fragment(p, state, first, first_fragment_port(p, p.l4, p.protocol))


def ipv6(p: Packet, state: ModelState) -> None:
    f, at = p.frame, p.l3
    if at + 40 > len(f):
        raise _pass(OUT.NOT_DNS, "IPv6 header cut")
    nexthdr = f[at + 6]
    off = at + 40
    walked = 0
    while nexthdr in IPV6_WALKED and walked < MAX_IPV6_EXT:
        if off + 2 > len(f):
            raise _pass(OUT.NOT_DNS, "IPv6 extension header cut")
        size = (f[off + 1] + 1) * 8
        if off + size > len(f):
            raise _pass(OUT.NOT_DNS, "IPv6 extension header cut")
        nexthdr = f[off]
        off += size
        walked += 1
    p.ipv6 = True
    p.protocol = nexthdr
    p.ip_options = walked > 0
    p.l4 = off
    p.ip_end = at + 40 + int.from_bytes(f[at + 4:at + 6], "big")
    p.source = f[at + 8:at + 24]
    p.dest = f[at + 24:at + 40]
    if nexthdr == IPPROTO_FRAGMENT:
        p.fragment = True
        if off + 8 > len(f):
            on_fragment(p, state, True, None)
        first = not int.from_bytes(f[off + 2:off + 4], "big") & 0xFFF8
        inner = f[off]
        if inner in IPV6_WALKED or inner == IPPROTO_AH:  # the port lies beyond: not seen
            on_fragment(p, state, first, None)
        on_fragment(p, state, first, first_fragment_port(p, off + 8, inner))
    if nexthdr in IPV6_WALKED or nexthdr == IPPROTO_AH:
        p.deep = True
        on_deep_headers(p, state, "IPv6 headers deeper than parsed")


def on_fragment(p: Packet, state: ModelState, first: bool, port: int | None) -> None:
    """docs/datapath.md: a later fragment passes (it is nothing without its first); a first
    fragment to a judged port, or one that does not show its port, follows `fragments`; any
    other passes. Counted as `fragment` in every case."""
    if not first:
        raise _pass(OUT.FRAGMENT, "a later IP fragment")
    if port == NO_PORT or (port is not None and port not in state.ports):
        raise _pass(OUT.FRAGMENT, "a first IP fragment, not to a judged port")
    raise unjudged(OUT.FRAGMENT, state.settings.pass_fragments,
                   shared.Event.FRAGMENT_DROPPED, "a first IP fragment to a judged port")


def on_deep_headers(p: Packet, state: ModelState, why: str) -> None:
    """Headers deeper than parsed (a third VLAN tag, a fifth extension header, AH), whatever
    the port (it lies beyond them): `unparsed` decides."""
    raise unjudged(OUT.UNPARSED, state.settings.pass_unparsed,
                   shared.Event.UNPARSED_DROPPED, why)


def transport(p: Packet, state: ModelState) -> None:
    """UDP or TCP to a judged port; nothing else is judged."""
    if p.protocol == IPPROTO_UDP:
        udp_datagram(p, state)
    elif p.protocol == IPPROTO_TCP:
        tcp_segment(p, state)
    else:
        raise _pass(OUT.NOT_DNS, "not UDP")


def tcp_segment(p: Packet, state: ModelState) -> None:
    """docs/datapath.md: a segment to a judged port that acknowledges (ACK, no SYN, no RST)
    and starts with a query: its 2-byte length, then a judged query's header; or, the length
    having come in a segment of its own, the header alone (the message then runs to the end
    of the IP packet). The message ends at its length or the IP packet's end, whichever comes
    first, and must end within the segment. Anything else to a judged port is `tcp_other`."""
    f = p.frame
    if p.l4 + 20 > len(f):
        raise _pass(OUT.NOT_DNS, "TCP header cut")
    size = (f[p.l4 + 12] >> 4) * 4
    if size < 20 or p.l4 + size > len(f):
        raise _pass(OUT.NOT_DNS, "TCP header length bad or cut")
    if int.from_bytes(f[p.l4 + 2:p.l4 + 4], "big") not in state.ports:
        raise _pass(OUT.NOT_DNS, "TCP to a port not judged")
    flags = f[p.l4 + 13]
    if flags & (TCP_SYN | TCP_RST) or not flags & TCP_ACK:
        raise _pass(OUT.TCP_OTHER, "TCP segment that carries no query (flags)")
    at = p.l4 + size
    if at + 2 > len(f):
        raise _pass(OUT.TCP_OTHER, "TCP segment without data")
    length = int.from_bytes(f[at:at + 2], "big")
    p.dns = at + 2
    if not (judged_header(f, p.dns) and length >= DNS_HEADER):
        p.dns = at
        if not judged_header(f, p.dns):
            raise _pass(OUT.TCP_OTHER, "TCP segment that starts no judged query")
        length = p.ip_end - p.dns
    in_segment = p.ip_end - p.dns
    if in_segment < 0:
        raise _pass(OUT.TCP_OTHER, "TCP query beyond the IP packet")
    end = p.dns + min(length, in_segment)
    if end < p.dns + DNS_HEADER or end > len(f):
        raise _pass(OUT.TCP_OTHER, "TCP query that does not start in this segment")
    p.payload_end = end
    p.tcp = True


def judged_header(f: bytes, at: int) -> bool:
    """A whole DNS header at `at` that is a judged query's: QR clear, opcode QUERY, one
    question."""
    if at + DNS_HEADER > len(f):
        return False
    flags, qdcount = struct.unpack_from("!2xHH", f, at)
    return not flags & FLAG_QR and not flags & OPCODE_MASK and qdcount == 1


def udp_datagram(p: Packet, state: ModelState) -> None:
    f = p.frame
    if p.l4 + 8 > len(f):
        raise _pass(OUT.NOT_DNS, "UDP header cut")
    dport = int.from_bytes(f[p.l4 + 2:p.l4 + 4], "big")
    if dport not in state.ports:
        raise _pass(OUT.NOT_DNS, "UDP to a port not judged")
    udp_len = int.from_bytes(f[p.l4 + 4:p.l4 + 6], "big")
    p.dns = p.l4 + 8
    p.payload_end = p.l4 + udp_len
    dns_query(p, udp_len)


def dns_query(p: Packet, udp_len: int) -> None:
    """docs/datapath.md, in this order: a UDP length too short for a DNS header (malformed,
    header); a header cut by the frame (truncated); not a judged query (QR, opcode, QDCOUNT);
    a UDP length beyond the IP packet (header) or beyond the frame (truncated)."""
    f = p.frame
    M = shared.Malformed
    if udp_len < 8 + DNS_HEADER:
        raise _pass(OUT.MALFORMED, "UDP length shorter than a DNS header", M.HEADER)
    if p.dns + DNS_HEADER > len(f):
        raise _pass(OUT.MALFORMED, "DNS header cut", M.TRUNCATED)
    flags, qdcount = struct.unpack_from("!2xHH", f, p.dns)
    if flags & FLAG_QR or flags & OPCODE_MASK or qdcount != 1:
        raise _pass(OUT.NOT_QUERY, "not a judged query")
    if p.payload_end > p.ip_end:
        raise _pass(OUT.MALFORMED, "UDP length beyond the IP packet", M.HEADER)
    if p.payload_end > len(f):
        raise _pass(OUT.MALFORMED, "UDP length beyond the frame", M.TRUNCATED)


def is_exempt(source: bytes, state: ModelState) -> bool:
    addr = ipaddress.IPv6Address(source)
    return any(addr in net for net in state.exempt)


def question(p: Packet) -> list[bytes]:
    """The QNAME's labels (leftmost first); QTYPE and QCLASS must follow within the UDP
    length."""
    f, M = p.frame, shared.Malformed
    start, end = p.dns + DNS_HEADER, p.payload_end
    off, labels = start, []
    while True:
        if off >= end:
            raise _pass(OUT.MALFORMED, "question cut", M.TRUNCATED)
        n = f[off]
        if n == 0:
            break
        if n & 0xC0:
            raise _pass(OUT.MALFORMED, "compression or reserved label type", M.LABEL_TYPE)
        labels.append(f[off + 1:off + 1 + n])
        off += n + 1
        if off - start >= MAX_NAME:  # the root byte must still fit in 255
            raise _pass(OUT.MALFORMED, "name over 255 bytes", M.NAME_LEN)
    if off + 1 + 4 > end:
        raise _pass(OUT.MALFORMED, "no QTYPE and QCLASS", M.TRUNCATED)
    return labels


def lower(label: bytes) -> bytes:
    return label.lower()  # ASCII A-Z only, as DNS compares names (RFC 4343)


def wire_of(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(x)]) + lower(x) for x in labels) + b"\0"


def decide(labels: list[bytes], state: ModelState) -> ModelEntry | None:
    """docs/matching.md: the most specific matching entry decides; an exact entry matches its
    own name, a subtree entry also every name below it, a below-only entry (NOT_SELF) only
    those; an allow entry (ALLOW_NAME at the name, ALLOW_BELOW below it) passes. The root
    name has no label and matches nothing."""
    wire = wire_of(labels)  # length bytes are below 0x40: lower() leaves them be
    at = 0
    for depth, label in enumerate(labels):
        e = state.entries.get(wire[at:])
        at += len(label) + 1
        if e is None:
            continue
        if depth == 0:
            if e.flags & shared.ENTRY_NOT_SELF:
                continue
            allow = e.flags & shared.ENTRY_ALLOW_NAME
        else:
            if not e.flags & shared.ENTRY_SUBTREE:
                continue
            allow = e.flags & shared.ENTRY_ALLOW_BELOW
        return ModelEntry(A.ALLOW, e.flags, 0) if allow else e
    return None


MAPPED = b"\0" * 10 + b"\xff\xff"


def source_key(p: Packet, category: int, state: ModelState) -> tuple[bytes, int, int, int]:
    """(source, category, collection buffer (epoch & 1), prefix length): IPv4 per address
    (IPv4-mapped, 128), IPv6 per prefix of source_prefix_v6 bits, the rest of it zero."""
    if p.source[:12] == MAPPED:
        return p.source, category, state.epoch & 1, 128
    bits = state.settings.source_prefix_v6
    if not 0 < bits <= 128:
        bits = 128
    mask = ((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)
    addr = (int.from_bytes(p.source, "big") & mask).to_bytes(16, "big")
    return addr, category, state.epoch & 1, bits


def in_plan(source: bytes, state: ModelState) -> bool:
    """With no address plan every source counts; with one, only those inside a prefix of it
    (IPv4 prefixes IPv4-mapped, as for exempt prefixes)."""
    if state.plan is None:
        return True
    addr = ipaddress.IPv6Address(source)
    return any(addr in net for net in state.plan)


def count_source(p: Packet, category: int, state: ModelState, v: Verdict) -> None:
    """A hit from outside the address plan counts only globally (outside_plan). A new source
    needs a free entry: when the map is full (a plain hash, no eviction) the hit is not
    counted per source and counts as source_lost; known sources keep counting."""
    if not in_plan(p.source, state):
        v.stats[shared.STAT_EVENT_BASE + shared.Event.OUTSIDE_PLAN] += 1
        return
    key = source_key(p, category, state)
    if key in state.sources:
        state.sources[key] += 1
    elif len(state.sources) < state.source_capacity:
        state.sources[key] = 1
    else:
        v.stats[shared.STAT_EVENT_BASE + shared.Event.SOURCE_LOST] += 1
        return
    v.source = key


def answerable(p: Packet) -> bool:
    """docs/answers.md: not to a broadcast or multicast MAC or IP address (IPv4 224.0.0.0 and
    up, IPv6 ff00::/8): dropped instead (`not_unicast`)."""
    f = p.frame
    if f[0] & 1:
        return False
    if p.ipv6:
        return p.dest[0] != 0xFF
    return p.dest[0] < 224


def resolve_action(e: ModelEntry, state: ModelState) -> int:
    action = e.action
    if action == A.DEFAULT:
        action = state.settings.default_action
    if not A.DEFAULT < action < len(A):
        action = A.DROP  # a value the kernel does not know is a drop
    return action


def judge(frame: bytes, state: ModelState) -> Verdict:
    p = Packet(frame)
    v = Verdict(XDP_PASS, frame)
    try:
        network_layer(p, link_layer(p, state), state)
        transport(p, state)
        if is_exempt(p.source, state):
            raise _pass(OUT.EXEMPT, "exempt source")
        labels = question(p)
        e = decide(labels, state)
        if e is None:
            raise _pass(OUT.PASSED, "no entry matched")
        action = resolve_action(e, state)
        if p.tcp and action == A.TC:
            raise _pass(OUT.TCP_RETRY, "over TCP, the retry a tc entry asks for")
        v.stats[shared.STAT_ACTION_BASE + action] += 1
        if action == A.ALLOW:
            raise _pass(OUT.ALLOWED, "allowed")
        count_source(p, e.category, state, v)
        if action == A.MONITOR:
            raise _pass(OUT.MONITORED, "monitored")
        v.stats[OUT.BLOCKED] += 1
        if p.tcp:  # every blocking action closes the connection
            v.stats[shared.STAT_EVENT_BASE + shared.Event.TCP_CLOSED] += 1
            v.retval, v.frame, v.why = XDP_PASS, fin_frame(p), "blocked over TCP: closed"
            return v
        if action == A.DROP:
            v.retval, v.frame, v.why = XDP_DROP, None, "blocked, dropped"
            return v
        if not answerable(p):
            v.stats[shared.STAT_EVENT_BASE + shared.Event.NOT_UNICAST] += 1
            v.retval, v.frame, v.why = XDP_DROP, None, "blocked, not answerable: dropped"
            return v
        v.retval, v.frame = XDP_TX, answer_frame(p, labels, action, state.settings)
        v.why = f"blocked, answered ({A(action).name.lower()})"
        return v
    except Decided as d:
        v.stats[d.outcome] += 1
        if d.malformed is not None:
            v.stats[shared.STAT_MALFORMED_BASE + d.malformed] += 1
        if d.event is not None:
            v.stats[shared.STAT_EVENT_BASE + d.event] += 1
        v.retval = d.retval
        v.frame = frame if d.retval == XDP_PASS else None
        v.why = d.why
        return v


# -- the answer ------------------------------------------------------------------------------


def inet_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes) -> int:
    return ~inet_sum(data) & 0xFFFF


def query_opt(p: Packet, qend: int) -> tuple[int, bool]:
    """(0: no OPT, 1: EDNS version 0, 2: a later version; its DO bit). The query carries an
    OPT when ARCOUNT is not 0 and the record right after the question is one (root owner,
    type 41), whole within the UDP length."""
    f = p.frame
    arcount = int.from_bytes(f[p.dns + 10:p.dns + 12], "big")
    if not arcount or qend + 11 > p.payload_end:
        return 0, False
    if f[qend] != 0 or f[qend + 1:qend + 3] != b"\0\x29":
        return 0, False
    return (1 if f[qend + 6] == 0 else 2), bool(f[qend + 7] & 0x80)


def answer_records(action: int, qtype: int, qclass: int, s: ModelSettings
                   ) -> tuple[int, int, int, bytes]:
    """(rcode, TC, 1 if the record is an answer else 0, the record) for an action."""
    if qclass != CLASS_IN:
        return RCODE_REFUSED, 0, 0, b""

    def rr(rtype: int, ttl: int, rdata: bytes) -> bytes:
        return struct.pack("!HHHIH", PTR_TO_QNAME, rtype, CLASS_IN, ttl, len(rdata)) + rdata

    soa = rr(TYPE_SOA, s.negative_ttl,
             b"\0\0" + struct.pack("!5I", *SOA_TIMERS, s.negative_ttl))
    if action == A.NXDOMAIN:
        return RCODE_NXDOMAIN, 0, 0, soa
    if action == A.NODATA:
        return RCODE_NOERROR, 0, 0, soa
    if action == A.SINKHOLE:
        if qtype == TYPE_A:
            return RCODE_NOERROR, 0, 1, rr(TYPE_A, s.answer_ttl, s.sinkhole_v4)
        if qtype == TYPE_AAAA:
            return RCODE_NOERROR, 0, 1, rr(TYPE_AAAA, s.answer_ttl, s.sinkhole_v6)
        return RCODE_NOERROR, 0, 0, soa
    if action == A.TC:
        return RCODE_NOERROR, 1, 0, b""
    return RCODE_REFUSED, 0, 0, b""


def answer_frame(p: Packet, labels: list[bytes], action: int, s: ModelSettings) -> bytes:
    """docs/answers.md: MACs swapped, VLAN tags kept; IP addresses swapped, TTL or hop limit
    64, IPv4 options and IPv6 extension headers left out, every other IP header field kept;
    UDP ports swapped; the DNS header's ID kept, QR and RA set, RD and CD echoed, the
    question as sent, then the action's record, then an OPT (no options, the query's DO bit,
    UDP size edns_udp_size) if the query had one; BADVERS and no record for an EDNS version
    above 0; both checksums recomputed; nothing after."""
    f = p.frame
    qend = p.dns + DNS_HEADER + len(wire_of(labels)) + 4
    qtype, qclass = struct.unpack_from("!HH", f, qend - 4)
    qid, qflags = struct.unpack_from("!HH", f, p.dns)
    opt, dnssec_ok = query_opt(p, qend)
    if opt == 2:
        rcode, tc, an, record = RCODE_NOERROR, 0, 0, b""
    else:
        rcode, tc, an, record = answer_records(action, qtype, qclass, s)
    flags = FLAG_QR | FLAG_RA | (qflags & (FLAG_RD | FLAG_CD)) | (FLAG_TC if tc else 0) | rcode
    ns = 1 if record and not an else 0
    dns = struct.pack("!6H", qid, flags, 1, an, ns, 1 if opt else 0)
    dns += f[p.dns + DNS_HEADER:qend] + record
    if opt:
        dns += struct.pack("!BHHIH", 0, TYPE_OPT, s.edns_udp_size,
                           (0x01000000 if opt == 2 else 0) | (0x8000 if dnssec_ok else 0), 0)
    sport, dport = struct.unpack_from("!HH", f, p.l4)
    udp_len = 8 + len(dns)
    l2 = f[6:12] + f[0:6] + f[12:p.l3]
    if p.ipv6:
        src, dst = p.dest, p.source
        ip = f[p.l3:p.l3 + 4] + struct.pack("!HBB", udp_len, IPPROTO_UDP, ANSWER_HOPS)
        ip += src + dst
        pseudo = src + dst + struct.pack("!I3xB", udp_len, IPPROTO_UDP)
    else:
        src, dst = p.dest, p.source[12:]
        hdr = bytes([f[p.l3] & 0xF0 | 5]) + f[p.l3 + 1:p.l3 + 2]
        hdr += struct.pack("!H", 20 + udp_len) + f[p.l3 + 4:p.l3 + 8]
        hdr += bytes([ANSWER_HOPS, f[p.l3 + 9]]) + b"\0\0" + src + dst
        ip = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_UDP, udp_len)
    udp = struct.pack("!HHHH", dport, sport, udp_len, 0) + dns
    check = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", check) + udp[8:]
    return l2 + ip + udp


def fin_frame(p: Packet) -> bytes:
    """docs/datapath.md: the query's segment becomes a bare FIN+ACK to the resolver at the
    query's own sequence number: the payload cut, the TCP header (options included) kept but
    for its flags byte (FIN+ACK alone), urgent pointer 0 and checksum; the IP length set (IPv4
    options and IPv6 extension headers kept), the IPv4 header checksum updated for it as RFC
    1624 does (so it is right exactly when the query's was), the TCP checksum recomputed."""
    f = p.frame
    size = (f[p.l4 + 12] >> 4) * 4
    seg = bytearray(f[p.l4:p.l4 + size])
    seg[13] = TCP_FIN | TCP_ACK
    seg[16:20] = bytes(4)  # checksum, urgent pointer
    ip = bytearray(f[p.l3:p.l4])
    if p.ipv6:
        ip[4:6] = struct.pack("!H", p.l4 - p.l3 - 40 + size)
        pseudo = p.source + p.dest + struct.pack("!I3xB", size, IPPROTO_TCP)
    else:
        old_len = int.from_bytes(ip[2:4], "big")
        new_len = p.l4 - p.l3 + size
        ip[2:4] = struct.pack("!H", new_len)
        old_check = int.from_bytes(ip[10:12], "big")
        total = (~old_check & 0xFFFF) + (~old_len & 0xFFFF) + new_len
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        ip[10:12] = struct.pack("!H", ~total & 0xFFFF)
        pseudo = p.source[12:] + p.dest + struct.pack("!BBH", 0, IPPROTO_TCP, size)
    seg[16:18] = struct.pack("!H", checksum(pseudo + bytes(seg)))
    return f[:p.l3] + bytes(ip) + bytes(seg)
