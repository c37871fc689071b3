"""Answers built by the XDP program, through BPF_PROG_TEST_RUN: for every action, IPv4 and
IPv6, with and without a VLAN tag, with and without EDNS, the output frame is parsed strictly
by dnspython and both checksums are recomputed here, independently of the program."""

from __future__ import annotations

import itertools
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from ccxdp.datapath import libbpf, shared
from ccxdp.datapath.hashing import name_hash
from ccxdp.datapath.settings import Settings
from ccxdp.hits.stats import read_stats
from tests.conftest import publish_entries
from tests.harness.frames import (
    CLIENT4,
    CLIENT6,
    ETH,
    RESOLVER4,
    RESOLVER6,
    ext_headers,
    udp4,
    udp6,
)

pytestmark = pytest.mark.root

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
NAME = "c2.evil.test"
SETTINGS = Settings(
    default_action="nxdomain",
    sinkhole_v4="198.18.5.5",
    sinkhole_v6="fd00:5::5",
    answer_ttl=123,
    negative_ttl=45,
    edns_udp_size=1400,
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


def make_query(rdtype: str, edns: bool, qid: int = 0x4D2, rd: bool = True) -> dns.message.Message:
    q = dns.message.make_query("C2.EvIl.test", rdtype, use_edns=0 if edns else False,
                               payload=4096, want_dnssec=edns)
    q.id = qid
    if not rd:
        q.flags &= ~dns.flags.RD
    if edns:  # with a cookie option and DO set: the answer's OPT has DO, no option
        q.use_edns(0, dns.flags.DO, payload=4096,
                   options=[dns.edns.GenericOption(10, b"\x01" * 8)])
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
    publish_entries(dp, {name_hash(NAME, dp.hash_key()): (shared.Action[action.upper()], 0, 7)})


@pytest.mark.parametrize(
    "action, rdtype, family, vlans, edns", CASES,
    ids=[f"{a}-{t}-v{f}-vlan{v}-{'edns' if e else 'noedns'}" for a, t, f, v, e in CASES],
)
def test_answer(answering, action, rdtype, family, vlans, edns):
    dp, fd = answering
    entry_for(dp, action)
    rd = (vlans == 0)  # half the cases ask without recursion: RD must be echoed, not set
    query = make_query(rdtype, edns, rd=rd)
    wire = query.to_wire()
    frame = (udp4 if family == 4 else udp6)(wire, vlans=vlans, sport=53053)
    before = read_stats(dp)

    result = libbpf.prog_test_run(fd, frame)

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
    expected_flags = dns.flags.QR | dns.flags.RA
    expected_flags |= dns.flags.RD if rd else 0
    expected_flags |= dns.flags.TC if action == "tc" else 0
    assert answer.flags & ~0xF == expected_flags, dns.flags.to_text(answer.flags)  # no rcode
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
        assert answer.edns == 0 and answer.payload == 1400 and not answer.options
        assert answer.ednsflags == dns.flags.DO, "DO copied (RFC 3225), nothing else set"
    else:
        assert answer.edns == -1
    assert not answer.additional

    after = read_stats(dp)
    assert after.outcomes["blocked"] - before.outcomes["blocked"] == 1
    assert after.actions[action] - before.actions[action] == 1
    assert after.events["answer_failed"] == before.events["answer_failed"]


@pytest.mark.parametrize("family", [4, 6])
def test_checksums_hold_for_every_datagram_length(answering, family):
    """The program sums the datagram in 8-byte words and then 4, 2 and 1 bytes: names of 1 to
    8 bytes more cover every remainder of the answer's datagram, and the longest name the most
    words, with and without an OPT, for sinkhole A and NXDOMAIN answers."""
    dp, fd = answering
    key = dp.hash_key()
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 51]) + ".evil.test"
    assert len(dns.name.from_text(longest).to_wire()) == 255
    names = [("x" * n) + ".evil.test" for n in range(1, 9)] + [longest]
    lengths = set()
    for action in ("sinkhole", "nxdomain"):
        publish_entries(dp, {name_hash("evil.test", key): (shared.Action[action.upper()],
                                                           shared.ENTRY_SUBTREE, 7)})
        for name, edns in itertools.product(names, [False, True]):
            q = dns.message.make_query(name, "A", use_edns=0 if edns else False)
            frame = (udp4 if family == 4 else udp6)(q.to_wire(), sport=53053)
            result = libbpf.prog_test_run(fd, frame)
            assert result.retval == XDP_TX, (name, edns)
            _dst, _src, _tags, ip, udp, _end = split_frame(result.data_out, 0)
            check_checksums(ip, udp)
            assert dns.message.from_wire(udp[8:]).question == q.question
            lengths.add(len(udp) % 8)
    assert lengths == set(range(8))


def answer_for(fd, q: dns.message.Message, frame_of=udp4, **kw):
    result = libbpf.prog_test_run(fd, frame_of(q.to_wire(), sport=53053, **kw))
    if result.retval != XDP_TX:
        return result.retval, None
    _dst, _src, _tags, ip, udp, _end = split_frame(result.data_out, 0)
    check_checksums(ip, udp)
    return result.retval, dns.message.from_wire(udp[8:])


def test_cd_is_copied(answering):
    dp, fd = answering
    entry_for(dp, "nxdomain")
    q = make_query("A", False)
    q.flags |= dns.flags.CD
    _, a = answer_for(fd, q)
    assert a.flags & ~0xF == dns.flags.QR | dns.flags.RA | dns.flags.RD | dns.flags.CD


def test_edns_version_above_0_gets_badvers(answering):
    dp, fd = answering
    entry_for(dp, "sinkhole")
    q = dns.message.make_query("c2.evil.test", "A", use_edns=1)
    _, a = answer_for(fd, q)
    assert a.rcode() == dns.rcode.BADVERS and a.edns == 0
    assert not a.answer and not a.authority


def test_class_other_than_in_is_refused(answering):
    dp, fd = answering
    entry_for(dp, "sinkhole")
    q = dns.message.make_query("c2.evil.test", "TXT", rdclass="CH")
    _, a = answer_for(fd, q)
    assert a.rcode() == dns.rcode.REFUSED and not a.answer and not a.authority


def test_do_clear_stays_clear(answering):
    dp, fd = answering
    entry_for(dp, "nxdomain")
    q = dns.message.make_query("c2.evil.test", "A", use_edns=0, want_dnssec=False)
    _, a = answer_for(fd, q)
    assert a.edns == 0 and a.ednsflags == 0


@pytest.mark.parametrize(
    "frame_kw",
    [
        {"dst": "224.0.0.251"},
        {"dst": "255.255.255.255"},
    ],
    ids=["multicast", "limited-broadcast"],
)
def test_not_answered_but_dropped(answering, frame_kw):
    """A query to a multicast or broadcast address is dropped: an answer would come from that
    address. It counts as not_unicast, not as answer_failed (the frame did not fail to grow)."""
    dp, fd = answering
    entry_for(dp, "nxdomain")
    before = read_stats(dp)
    retval, _ = answer_for(fd, make_query("A", False), **frame_kw)
    assert retval == XDP_DROP
    after = read_stats(dp)
    assert after.events["not_unicast"] - before.events["not_unicast"] == 1
    assert after.events["answer_failed"] == before.events["answer_failed"]
    assert after.outcomes["blocked"] - before.outcomes["blocked"] == 1


EXTRA_CASES = [
    ("ipv4-options", 4, {"options": True}),
    ("ipv6-hopbyhop", 6, {"ext": [ext_headers("hopbyhop")]}),
    ("ipv6-routing", 6, {"ext": [ext_headers("routing")]}),
    ("ipv6-all-three", 6, {"ext": [ext_headers(k) for k in ("hopbyhop", "routing", "dstopts")]}),
]


def check_answer_without_extras(query, frame, result, family, vlans, action):
    assert result.retval == XDP_TX
    dst, _src, tags, ip, udp, end = split_frame(result.data_out, vlans)
    assert len(result.data_out) == end
    assert tags == frame[12 : 12 + 4 * vlans], "VLAN tags kept"
    if family == 4:
        assert ip[0] == 0x45, "no IPv4 options in the answer"
    else:
        assert ip[6] == 17, "UDP right after the IPv6 header"
    check_checksums(ip, udp)
    answer = dns.message.from_wire(udp[8:])
    assert answer.id == query.id and answer.question == query.question
    if action == "sinkhole":
        want = SETTINGS.sinkhole_v4 if family == 4 else SETTINGS.sinkhole_v6
        assert [r.to_text() for r in answer.answer[0]] == [want]
    else:
        assert answer.rcode() == dns.rcode.NXDOMAIN and len(answer.authority) == 1


@pytest.mark.parametrize("action", ["sinkhole", "nxdomain"])
@pytest.mark.parametrize("vlans", [0, 2])
@pytest.mark.parametrize("case, family, frame_kw", EXTRA_CASES, ids=[c[0] for c in EXTRA_CASES])
def test_answer_leaves_out_ip_options_and_extension_headers(answering, case, family, frame_kw,
                                                            vlans, action):
    """A blocked query with IPv4 options or IPv6 extension headers is answered, the answer
    without them (answer.h says why): not dropped as answer_failed."""
    dp, fd = answering
    entry_for(dp, action)
    query = dns.message.make_query("c2.evil.test", "A" if family == 4 else "AAAA", use_edns=0)
    frame = (udp4 if family == 4 else udp6)(query.to_wire(), vlans=vlans, sport=53053,
                                            **frame_kw)
    before = read_stats(dp)
    result = libbpf.prog_test_run(fd, frame)
    check_answer_without_extras(query, frame, result, family, vlans, action)
    after = read_stats(dp)
    assert after.outcomes["blocked"] - before.outcomes["blocked"] == 1
    assert after.events == before.events


def test_broadcast_mac_is_dropped(answering):
    dp, fd = answering
    entry_for(dp, "nxdomain")
    frame = bytearray(udp4(make_query("A", False).to_wire()))
    frame[0:6] = b"\xff" * 6
    assert libbpf.prog_test_run(fd, bytes(frame)).retval == XDP_DROP


@pytest.fixture(scope="module")
def no_tailroom(state_root):
    """The program built so that the tail never grows: every longer answer takes the
    grow-at-head path that real veth and generic-mode frames need."""
    from ccxdp.datapath.loader import Datapath, Limits
    from tests.conftest import make_pin_dir, remove_pins

    pin_dir = make_pin_dir()
    dp = Datapath(pin_dir, state_root / "no-tailroom", ("-DCCXDP_TEST_NO_TAIL_GROW",))
    try:
        with dp:
            fd = dp.load(Limits(max_names=1024, max_sources=64))
        dp.set_settings(SETTINGS)
        yield dp, fd
        libbpf.close(fd)
    finally:
        remove_pins(pin_dir)


HEAD_CASES = list(itertools.product(["sinkhole", "nxdomain"], ["A", "AAAA"], [4, 6], [0, 2],
                                    [False, True]))


@pytest.mark.parametrize(
    "action, rdtype, family, vlans, edns", HEAD_CASES,
    ids=[f"{a}-{t}-v{f}-vlan{v}-{'edns' if e else 'noedns'}" for a, t, f, v, e in HEAD_CASES],
)
def test_answer_grown_at_the_head(no_tailroom, action, rdtype, family, vlans, edns):
    dp, fd = no_tailroom
    entry_for(dp, action)
    query = dns.message.make_query("c2.evil.test", rdtype, use_edns=0 if edns else False)
    frame = (udp4 if family == 4 else udp6)(query.to_wire(), vlans=vlans, sport=53053)
    result = libbpf.prog_test_run(fd, frame)
    assert result.retval == XDP_TX
    _dst, _src, tags, ip, udp, end = split_frame(result.data_out, vlans)
    assert len(result.data_out) == end > len(frame), "the frame grew"
    assert tags == frame[12 : 12 + 4 * vlans]
    check_checksums(ip, udp)
    answer = dns.message.from_wire(udp[8:])
    assert answer.id == query.id and answer.question == query.question
    if action == "sinkhole":
        want = SETTINGS.sinkhole_v4 if rdtype == "A" else SETTINGS.sinkhole_v6
        assert [r.to_text() for r in answer.answer[0]] == [want]
    else:
        assert answer.rcode() == dns.rcode.NXDOMAIN and len(answer.authority) == 1
    assert read_stats(dp).events["answer_failed"] == 0


@pytest.mark.parametrize("case, family, frame_kw", EXTRA_CASES, ids=[c[0] for c in EXTRA_CASES])
def test_answer_without_extras_grown_at_the_head(no_tailroom, case, family, frame_kw):
    """Options left out, then the frame grown at its head: both moves of the headers."""
    dp, fd = no_tailroom
    entry_for(dp, "nxdomain")
    query = dns.message.make_query("c2.evil.test", "A", use_edns=0)
    frame = (udp4 if family == 4 else udp6)(query.to_wire(), vlans=1, sport=53053, **frame_kw)
    result = libbpf.prog_test_run(fd, frame)
    check_answer_without_extras(query, frame, result, family, 1, "nxdomain")
