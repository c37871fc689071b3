"""Frame builders for BPF_PROG_TEST_RUN cases: scapy for L2-L4, raw bytes for DNS so that
malformed questions (compression pointers, over-long names, truncation) can be made exactly."""

from __future__ import annotations

import struct

from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from ccxdp.policy.names import to_wire

CLIENT4, RESOLVER4 = "198.18.0.2", "198.18.0.1"
CLIENT6, RESOLVER6 = "fd00:cc::2", "fd00:cc::1"
ETH = dict(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")

FLAG_RD = 0x0100
FLAG_QR = 0x8000


def dns_header(qid=0x1234, flags=FLAG_RD, qdcount=1, ancount=0, nscount=0, arcount=0) -> bytes:
    return struct.pack("!6H", qid, flags, qdcount, ancount, nscount, arcount)


def question(qname_wire: bytes, qtype=1, qclass=1) -> bytes:
    return qname_wire + struct.pack("!HH", qtype, qclass)


def query(name: str | bytes = "www.lab.example", qtype: int = 1, **header) -> bytes:
    """A DNS query message; name is text (made wire form as is, case kept) or raw wire bytes."""
    wire = name if isinstance(name, bytes) else raw_wire(name)
    return dns_header(**header) + question(wire, qtype)


def raw_wire(name: str) -> bytes:
    """Wire form keeping the given case (to_wire would refuse nothing but we keep case here)."""
    if name in ("", "."):
        return b"\0"
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("latin-1")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def l2(vlans: int = 0):
    if vlans == 0:
        return Ether(**ETH)
    if vlans == 1:
        return Ether(**ETH) / Dot1Q(vlan=100)
    return Ether(**ETH) / Dot1AD(vlan=200) / Dot1Q(vlan=100)


def udp4(payload: bytes, dport=53, vlans=0, src=CLIENT4, options=False, sport=40000,
         dst=RESOLVER4, **ip):
    ip_layer = IP(src=src, dst=dst, **ip)
    if options:
        ip_layer.options = [IPOption_RR(routers=["198.18.0.9"])]
    return bytes(l2(vlans) / ip_layer / UDP(sport=sport, dport=dport) / Raw(payload))


def udp6(payload: bytes, dport=53, vlans=0, src=CLIENT6, ext=(), sport=40000):
    pkt = l2(vlans) / IPv6(src=src, dst=RESOLVER6)
    for header in ext:
        pkt = pkt / header
    return bytes(pkt / UDP(sport=sport, dport=dport) / Raw(payload))


def ext_headers(kind: str):
    return {
        "hopbyhop": IPv6ExtHdrHopByHop(),
        "routing": IPv6ExtHdrRouting(addresses=[]),
        "dstopts": IPv6ExtHdrDestOpt(),
        "fragment": IPv6ExtHdrFragment(offset=0, m=1, id=7),
        "ah": AH(spi=1, seq=1, icv=b"\0" * 12),
    }[kind]


def ip_len_short(frame: bytes, by: int = 8) -> bytes:
    """An IPv4 frame whose total length claims `by` bytes less than its UDP length needs: the
    UDP datagram runs into what would be padding."""
    pkt = Ether(frame)
    pkt[IP].len = pkt[IP].len - by
    del pkt[IP].chksum
    return bytes(pkt)


def three_vlans(frame: bytes) -> bytes:
    """Insert a third 802.1Q tag after the first two (frame built with vlans=0)."""
    eth, rest = frame[:12], frame[12:]
    tags = b"\x88\xa8\x00\xc8" + b"\x81\x00\x00\x64" + b"\x81\x00\x00\x65"
    return eth + tags + rest


def tcp4(payload: bytes, dport=53, **ip):
    """A SYN (scapy's default flags) carrying payload; tcp_query() makes a query's segment."""
    return bytes(Ether(**ETH) / IP(src=CLIENT4, dst=RESOLVER4, **ip) / TCP(dport=dport)
                 / Raw(payload))


def tcp_query(message: bytes, family: int = 4, flags: str = "PA", seq: int = 1000,
              ack: int = 5000, length_prefix: bool = True, dport: int = 53, vlans: int = 0,
              options: bool = False, ext=(), timestamps: bool = True) -> bytes:
    """A TCP segment from the client carrying `message` after its 2-byte length (RFC 7766 8),
    as dig, kdig and dnspython send a query: one segment, PSH+ACK, TCP timestamps on."""
    if family == 4:
        ip_layer = IP(src=CLIENT4, dst=RESOLVER4)
        if options:
            ip_layer.options = [IPOption_RR(routers=["198.18.0.9"])]
        pkt = l2(vlans) / ip_layer
    else:
        pkt = l2(vlans) / IPv6(src=CLIENT6, dst=RESOLVER6)
        for header in ext:
            pkt = pkt / header
    tcp_options = [("NOP", None), ("NOP", None), ("Timestamp", (11, 22))] if timestamps else []
    payload = (struct.pack("!H", len(message)) if length_prefix else b"") + message
    tcp = TCP(sport=40000, dport=dport, flags=flags, seq=seq, ack=ack, window=501,
              options=tcp_options)
    return bytes(pkt / tcp / Raw(payload)) if payload else bytes(pkt / tcp)


def arp():
    return bytes(Ether(**ETH, type=0x0806) / ARP(psrc=CLIENT4, pdst=RESOLVER4))


def with_udp_payload(frame: bytes, payload_len: int) -> bytes:
    """An IPv4 frame (no VLAN, no options) whose DNS payload is cut to payload_len bytes,
    with IP and UDP lengths matching the cut, as a sender of a short message would make."""
    pkt = Ether(frame)
    raw = bytes(pkt[Raw].load)[:payload_len]
    pkt[UDP].remove_payload()
    del pkt[IP].len, pkt[IP].chksum, pkt[UDP].len, pkt[UDP].chksum
    return bytes(pkt / Raw(raw)) if raw else bytes(pkt)


def wire(name: str) -> bytes:
    return to_wire(name)
