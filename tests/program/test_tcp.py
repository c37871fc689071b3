"""DNS over TCP through BPF_PROG_TEST_RUN: a blocked query's segment comes out as a bare FIN+ACK
to the resolver at the query's sequence number (answer.h, close_tcp_query), with both checksums
recomputed here; tc entries, misses and segments that start no query pass unchanged; exact
counters and per-source hits."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from ccxdp.datapath import libbpf, shared
from ccxdp.datapath.hashing import name_hash
from ccxdp.hits.stats import read_stats
from tests.conftest import publish_entries
from tests.harness.frames import CLIENT4, ext_headers, query, tcp_query
from tests.program.test_answers import inet_checksum
from tests.program.test_verdicts import CLIENT6_PREFIX

pytestmark = pytest.mark.root

XDP_DROP, XDP_PASS = 1, 2
BLOCKED = "evil.test"
CATEGORY = 7


def block(dp, action: str = "nxdomain", name: str = BLOCKED, flags: int = 0) -> None:
    publish_entries(dp, {name_hash(name, dp.hash_key()): (shared.Action[action.upper()],
                                                          flags, CATEGORY)})


def delta(before, after) -> dict[str, int]:
    out = {}
    for group in ("outcomes", "events", "actions"):
        for k, v in getattr(after, group).items():
            if v != getattr(before, group)[k]:
                out[f"{group}.{k}"] = v - getattr(before, group)[k]
    return out


def sources(snap) -> dict[tuple[str, int], int]:
    return {(s.address, s.category): s.hits for s in snap.sources}


def check_fin(frame: bytes, out: bytes, family: int) -> None:
    """`out` is `frame` made a bare FIN+ACK: same L2 and addresses, same ports, sequence and
    acknowledgment numbers and TCP options, no payload, both checksums right."""
    sent, got = Ether(frame), Ether(out)
    assert (got.src, got.dst) == (sent.src, sent.dst), "still from the client to the resolver"
    ip_cls = IP if family == 4 else IPv6
    sip, gip = sent[ip_cls], got[ip_cls]
    assert (gip.src, gip.dst) == (sip.src, sip.dst)
    st, gt = sent[TCP], got[TCP]
    assert (gt.sport, gt.dport, gt.seq, gt.ack) == (st.sport, st.dport, st.seq, st.ack)
    assert str(gt.flags) == "FA"
    assert gt.options == st.options and gt.window == st.window
    tcp_len = gt.dataofs * 4
    tcp_bytes = bytes(gt)[:tcp_len]
    assert len(bytes(gt)) == tcp_len, "no payload: no byte of the query reaches the resolver"
    ip_start = out.index(bytes(gip)[:8])
    if family == 4:
        ihl = gip.ihl * 4
        assert gip.len == ihl + tcp_len
        assert inet_checksum(out[ip_start : ip_start + ihl]) == 0, "IPv4 header checksum"
        pseudo = out[ip_start + 12 : ip_start + 20] + struct.pack("!BBH", 0, 6, tcp_len)
        assert len(out) == ip_start + ihl + tcp_len, "nothing after the segment"
    else:
        assert gip.plen == len(out) - ip_start - 40
        pseudo = out[ip_start + 8 : ip_start + 40] + struct.pack("!I3xB", tcp_len, 6)
    assert inet_checksum(pseudo + out[len(out) - tcp_len :]) == 0, "TCP checksum"
    assert out[len(out) - tcp_len :] == tcp_bytes


CLOSED = [
    ("v4", 4, {}),
    ("v6", 6, {}),
    ("v4-no-timestamps", 4, {"timestamps": False}),
    ("v4-ip-options", 4, {"options": True}),
    ("v4-vlan", 4, {"vlans": 1}),
    ("v6-qinq", 6, {"vlans": 2}),
    ("v6-ext-headers", 6, {"ext": [ext_headers("hopbyhop"), ext_headers("dstopts")]}),
]


@pytest.mark.parametrize("case, family, kw", CLOSED, ids=[c[0] for c in CLOSED])
def test_blocked_query_becomes_a_fin_to_the_resolver(datapath, case, family, kw):
    dp, fd = datapath
    block(dp)
    frame = tcp_query(query("EvIl.TeSt"), family=family, **kw)
    before = read_stats(dp)
    result = libbpf.prog_test_run(fd, frame)
    assert result.retval == XDP_PASS
    check_fin(frame, result.data_out, family)
    after = read_stats(dp)
    assert delta(before, after) == {"outcomes.blocked": 1, "events.tcp_closed": 1,
                                    "actions.nxdomain": 1}
    assert sources(after) == {(CLIENT4 if family == 4 else CLIENT6_PREFIX, CATEGORY): 1}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("flags", ["0x0000", "0x0120", "0x0100", "0x0110"],
                         ids=["no-flags", "rd-ad", "rd", "rd-cd"])
def test_what_the_client_resends_after_the_fin_is_not_counted_again(datapath, family, flags):
    """The resolver's FIN took the query's first byte: the client's TCP resends the rest, from
    the second byte of the length on. That segment starts no query (its would-be QDCOUNT is
    the low byte of the flags, then 0), passes, and the query stays counted once."""
    dp, fd = datapath
    block(dp)
    message = query(BLOCKED, flags=int(flags, 16))
    first = tcp_query(message, family=family, seq=1000)
    assert libbpf.prog_test_run(fd, first).retval == XDP_PASS
    before = read_stats(dp)
    rest = tcp_query((struct.pack("!H", len(message)) + message)[1:], family=family, seq=1001,
                     length_prefix=False)
    result = libbpf.prog_test_run(fd, rest)
    assert result.retval == XDP_PASS and result.data_out == rest
    after = read_stats(dp)
    assert delta(before, after) == {"outcomes.tcp_other": 1}
    assert sum(s.hits for s in after.sources) == 1


@pytest.mark.parametrize("action", ["drop", "nxdomain", "nodata", "sinkhole", "refused"])
def test_every_blocking_action_closes_the_connection(datapath, action):
    dp, fd = datapath
    block(dp, action)
    frame = tcp_query(query(BLOCKED))
    before = read_stats(dp)
    result = libbpf.prog_test_run(fd, frame)
    assert result.retval == XDP_PASS
    check_fin(frame, result.data_out, 4)
    assert delta(before, read_stats(dp)) == {"outcomes.blocked": 1, "events.tcp_closed": 1,
                                             f"actions.{action}": 1}


@pytest.mark.parametrize("family", [4, 6])
def test_message_after_a_segment_holding_its_length(datapath, family):
    """A client that writes the 2-byte length on its own sends the message in the next
    segment, where it starts with the DNS header: that segment is judged too."""
    dp, fd = datapath
    block(dp)
    length_alone = tcp_query(b"", family=family)
    before = read_stats(dp)
    result = libbpf.prog_test_run(fd, length_alone)
    assert result.retval == XDP_PASS and result.data_out == length_alone
    message = tcp_query(query(BLOCKED), family=family, length_prefix=False, seq=1002)
    result = libbpf.prog_test_run(fd, message)
    assert result.retval == XDP_PASS
    check_fin(message, result.data_out, family)
    assert delta(before, read_stats(dp)) == {"outcomes.tcp_other": 1, "outcomes.blocked": 1,
                                             "events.tcp_closed": 1, "actions.nxdomain": 1}


def test_question_in_the_first_of_several_segments(datapath):
    """The message goes on in a later segment (a long OPT, say): its question is here."""
    dp, fd = datapath
    block(dp)
    message = query(BLOCKED, arcount=1) + b"\0\0\x29\x04\xd0\0\0\0\0\x01\x00" + b"\0" * 256
    frame = tcp_query(message)
    cut = Ether(frame)
    cut[TCP].remove_payload()
    del cut[IP].len, cut[IP].chksum, cut[TCP].chksum
    first = bytes(cut / (struct.pack("!H", len(message)) + message[:40]))
    result = libbpf.prog_test_run(fd, first)
    assert result.retval == XDP_PASS
    check_fin(first, result.data_out, 4)


@pytest.mark.parametrize("family", [4, 6])
def test_tc_entries_pass_over_tcp(datapath, family):
    """tc is RPZ's tcp-only: the retry over TCP is the resolver's to answer, and its UDP query
    was the one counted."""
    dp, fd = datapath
    block(dp, "tc")
    frame = tcp_query(query(BLOCKED), family=family)
    before = read_stats(dp)
    result = libbpf.prog_test_run(fd, frame)
    assert result.retval == XDP_PASS and result.data_out == frame
    after = read_stats(dp)
    assert delta(before, after) == {"outcomes.tcp_retry": 1}
    assert sources(after) == {}


def test_monitor_passes_and_counts(datapath):
    dp, fd = datapath
    block(dp, "monitor")
    frame = tcp_query(query(BLOCKED))
    before = read_stats(dp)
    result = libbpf.prog_test_run(fd, frame)
    assert result.retval == XDP_PASS and result.data_out == frame
    after = read_stats(dp)
    assert delta(before, after) == {"outcomes.monitored": 1, "actions.monitor": 1}
    assert sources(after) == {(CLIENT4, CATEGORY): 1}


def test_miss_passes(datapath):
    dp, fd = datapath
    block(dp)
    frame = tcp_query(query("www.lab.example"))
    before = read_stats(dp)
    result = libbpf.prog_test_run(fd, frame)
    assert result.retval == XDP_PASS and result.data_out == frame
    assert delta(before, read_stats(dp)) == {"outcomes.passed": 1}


NOT_A_START = [
    ("syn", tcp_query(b"", flags="S", length_prefix=False)),
    ("pure-ack", tcp_query(b"", flags="A", length_prefix=False)),
    ("message-alone-not-a-query", tcp_query(b"\x12\x34" + b"\xff" * 20, length_prefix=False)),
    ("syn-with-data-fast-open", tcp_query(query(BLOCKED), flags="S")),
    ("rst-with-data", tcp_query(query(BLOCKED), flags="RA")),
    ("no-ack-flag", tcp_query(query(BLOCKED), flags="P")),
    ("length-only", tcp_query(b"")),
    ("one-byte", tcp_query(b"\x00", length_prefix=False)),
    ("length-below-a-header", tcp_query(query(BLOCKED)[:11])),
    ("a-response", tcp_query(query(BLOCKED, flags=0x8180))),
    ("cut-in-the-header", tcp_query(query(BLOCKED))[:-20]),
]


@pytest.mark.parametrize("case, frame", NOT_A_START, ids=[c[0] for c in NOT_A_START])
def test_segments_that_start_no_query_pass(datapath, case, frame):
    dp, fd = datapath
    block(dp)
    before = read_stats(dp)
    result = libbpf.prog_test_run(fd, frame)
    assert result.retval == XDP_PASS and result.data_out == frame
    assert delta(before, read_stats(dp)) == {"outcomes.tcp_other": 1}
    assert sources(read_stats(dp)) == {}


def test_cut_question_is_malformed(datapath):
    """A query's start whose name runs past the segment: malformed, passed."""
    dp, fd = datapath
    block(dp)
    frame = tcp_query(query("www.lab.example"))
    pkt = Ether(frame)
    payload = bytes(pkt[TCP].payload)[:2 + 12 + 6]
    pkt[TCP].remove_payload()
    del pkt[IP].len, pkt[IP].chksum, pkt[TCP].chksum
    frame = bytes(pkt / payload)
    before = read_stats(dp)
    result = libbpf.prog_test_run(fd, frame)
    assert result.retval == XDP_PASS and result.data_out == frame
    after = read_stats(dp)
    assert after.outcomes["malformed"] - before.outcomes["malformed"] == 1
    assert after.malformed["truncated"] - before.malformed["truncated"] == 1


def test_only_the_first_pipelined_query_is_judged(datapath):
    """Documented limit (README, "what passes"): a query pipelined after another in the same
    segment is not judged; the first decides."""
    dp, fd = datapath
    block(dp)
    first_blocked = query(BLOCKED)
    benign = query("www.lab.example")
    both = first_blocked + struct.pack("!H", len(benign)) + benign
    frame = tcp_query(both)
    result = libbpf.prog_test_run(fd, frame)
    assert result.retval == XDP_PASS
    assert str(Ether(result.data_out)[TCP].flags) == "FA"
    second_blocked = benign + struct.pack("!H", len(first_blocked)) + first_blocked
    frame = tcp_query(second_blocked)
    result = libbpf.prog_test_run(fd, frame)
    assert result.retval == XDP_PASS and result.data_out == frame


def test_other_tcp_port_is_not_dns(datapath):
    dp, fd = datapath
    block(dp)
    frame = tcp_query(query(BLOCKED), dport=853)
    before = read_stats(dp)
    result = libbpf.prog_test_run(fd, frame)
    assert result.retval == XDP_PASS and result.data_out == frame
    assert delta(before, read_stats(dp)) == {"outcomes.not_dns": 1}
