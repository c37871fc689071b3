"""Answers built by the XDP program, through BPF_PROG_TEST_RUN: for every action, IPv4 and
IPv6, with and without a VLAN tag, with and without EDNS, the output frame is parsed strictly
by dnspython and both checksums are recomputed here, independently of the program."""

from __future__ import annotations

import itertools
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from frames import CLIENT4, CLIENT6, ETH, RESOLVER4, RESOLVER6, udp4, udp6

from ccxdp import bpfsys, layout
from ccxdp.blocklist import write_kernel_entries
from ccxdp.hashing import name_hash
from ccxdp.settings import Settings
from ccxdp.stats import read_stats

pytestmark = pytest.mark.root

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
NAME = "c2.evil.test"
SETTINGS = Settings(
    default_action="nxdomain",
    sinkhole_v4="198.18.5.5",
    sinkhole_v6="fd00:5::5",
    answer_ttl=123,
    negative_ttl=45,
    edns_udp_size=1232,
)


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def split_frame(frame: bytes, vlans: int):
    """(dst mac, src mac, vlan bytes, ip header, udp datagram) by hand, not with scapy."""
    dst, src = frame[:6], frame[6:12]
    off = 12
    tags = b""
    for _ in range(vlans):
        tags += frame[off : off + 4]
        off += 4
    ethertype = struct.unpack("!H", frame[off : off + 2])[0]
    off += 2
    if ethertype == 0x0800:
        ihl = (frame[off] & 0x0F) * 4
        ip = frame[off : off + ihl]
        total = struct.unpack("!H", ip[2:4])[0]
        udp = frame[off + ihl : off + total]
    else:
        assert ethertype == 0x86DD
        ip = frame[off : off + 40]
        plen = struct.unpack("!H", ip[4:6])[0]
        udp = frame[off + 40 : off + 40 + plen]
    return dst, src, tags, ip, udp, off + len(ip) + len(udp)


def check_checksums(ip: bytes, udp: bytes) -> None:
    if ip[0] >> 4 == 4:
        assert inet_checksum(ip) == 0, "IPv4 header checksum"
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    else:
        pseudo = ip[8:40] + struct.pack("!I3xB", len(udp), 17)
    assert struct.unpack("!H", udp[6:8])[0] != 0, "UDP checksum present"
    assert inet_checksum(pseudo + udp) == 0, "UDP checksum"


def make_query(rdtype: str, edns: bool, qid: int = 0x4D2) -> dns.message.Message:
    q = dns.message.make_query("C2.EvIl.test", rdtype, use_edns=0 if edns else False,
                               payload=4096, want_dnssec=False)
    q.id = qid
    if edns:
        q.use_edns(0, payload=4096, options=[dns.edns.GenericOption(10, b"\x01" * 8)])
    return q


CASES = list(itertools.product(
    ["nxdomain", "nodata", "sinkhole", "tc", "refused"],
    ["A", "AAAA", "MX"],
    [4, 6],
    [0, 1],
    [False, True],
))


@pytest.fixture
def answering(datapath):
    dp, fd = datapath
    dp.set_settings(SETTINGS)
    yield dp, fd
    dp.set_settings(Settings())


def entry_for(dp, action: str) -> None:
    write_kernel_entries(
        dp, {name_hash(NAME, dp.hash_key()): layout.Entry(layout.Action[action.upper()], 0, 7)}
    )


@pytest.mark.parametrize(
    "action, rdtype, family, vlans, edns", CASES,
    ids=[f"{a}-{t}-v{f}-vlan{v}-{'edns' if e else 'noedns'}" for a, t, f, v, e in CASES],
)
def test_answer(answering, action, rdtype, family, vlans, edns):
    dp, fd = answering
    entry_for(dp, action)
    query = make_query(rdtype, edns)
    wire = query.to_wire()
    frame = (udp4 if family == 4 else udp6)(wire, vlans=vlans, sport=53053)
    before = read_stats(dp)

    result = bpfsys.prog_test_run(fd, frame)

    assert result.retval == XDP_TX
    out = result.data_out
    dst, src, tags, ip, udp, end = split_frame(out, vlans)
    assert len(out) == end, "nothing after the datagram"
    assert (dst, src) == (bytes.fromhex(ETH["src"].replace(":", "")),
                          bytes.fromhex(ETH["dst"].replace(":", ""))), "MACs swapped"
    assert tags == frame[12 : 12 + 4 * vlans], "VLAN tags kept"
    if family == 4:
        assert ip[12:16] == bytes(map(int, RESOLVER4.split("."))), "source is the resolver"
        assert ip[16:20] == bytes(map(int, CLIENT4.split("."))), "to the client"
        assert ip[8] == 64
    else:
        import ipaddress

        assert ip[8:24] == ipaddress.IPv6Address(RESOLVER6).packed
        assert ip[24:40] == ipaddress.IPv6Address(CLIENT6).packed
        assert ip[7] == 64
    sport, dport, ulen = struct.unpack("!HHH", udp[:6])
    assert (sport, dport, ulen) == (53, 53053, len(udp))
    check_checksums(ip, udp)

    answer = dns.message.from_wire(udp[8:])  # strict: no leniency flags
    assert answer.id == query.id
    assert answer.question == query.question
    assert str(answer.question[0].name) == "C2.EvIl.test.", "question echoed as asked (0x20)"
    flags = answer.flags
    assert flags & dns.flags.QR and flags & dns.flags.RA and flags & dns.flags.RD
    assert not flags & dns.flags.AA
    assert bool(flags & dns.flags.TC) == (action == "tc")
    assert answer.opcode() == 0
    expected_rcode = {"nxdomain": dns.rcode.NXDOMAIN, "refused": dns.rcode.REFUSED}
    assert answer.rcode() == expected_rcode.get(action, dns.rcode.NOERROR)
    sinkholed = action == "sinkhole" and rdtype in ("A", "AAAA")
    if sinkholed:
        assert len(answer.answer) == 1 and not answer.authority
        rrset = answer.answer[0]
        assert rrset.name == query.question[0].name
        assert rrset.ttl == 123
        want = "198.18.5.5" if rdtype == "A" else "fd00:5::5"
        assert [r.to_text() for r in rrset] == [want]
    elif action in ("nxdomain", "nodata", "sinkhole"):
        assert not answer.answer and len(answer.authority) == 1
        soa = answer.authority[0]
        assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 45
        assert soa.name == query.question[0].name
        (rd,) = list(soa)
        assert (str(rd.mname), str(rd.rname), rd.minimum) == (".", ".", 45)
    else:
        assert not answer.answer and not answer.authority
    if edns:
        assert answer.edns == 0 and answer.payload == 1232 and not answer.options
        assert not answer.ednsflags & dns.flags.DO
    else:
        assert answer.edns == -1
    assert not answer.additional

    after = read_stats(dp)
    assert after.outcomes["blocked"] - before.outcomes["blocked"] == 1
    assert after.actions[action] - before.actions[action] == 1
    assert after.events["answer_failed"] == before.events["answer_failed"]
