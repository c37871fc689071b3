"""The XDP program on crafted frames through BPF_PROG_TEST_RUN: exact verdict, exact output
frame and exact counter changes for each case. Malformed cases first."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ccxdp.datapath import libbpf, shared
from ccxdp.datapath.hashing import name_hash
from ccxdp.datapath.settings import Settings
from ccxdp.hits.stats import read_stats
from tests.conftest import set_entries
from tests.harness.frames import (
    CLIENT4,
    ETH,
    FLAG_QR,
    FLAG_RD,
    RESOLVER4,
    arp,
    dns_header,
    ext_headers,
    ip_len_short,
    query,
    tcp4,
    three_vlans,
    udp4,
    udp6,
    with_udp_payload,
)

pytestmark = pytest.mark.root

XDP_DROP, XDP_PASS = 1, 2
BLOCKED = "evil.test"
LONG_LABEL = "a" * 63
# 255 bytes in wire form: three 63-byte labels, one 61-byte label, then the root byte.
NAME_255 = ".".join([LONG_LABEL, LONG_LABEL, LONG_LABEL, "b" * 61])
NAME_127_LABELS = ".".join(["x"] * 127)
# IPv6 sources are counted per /64 by default (the setting source_prefix_v6).
CLIENT6_PREFIX = "fd00:cc::/64"


@dataclass
class Case:
    id: str
    frame: bytes
    outcome: str
    malformed: str | None = None
    blocked: list[tuple[str, bool]] = field(default_factory=list)  # (name, subtree)
    source: str | None = None  # the source counted when blocked
    event: str | None = None  # the event counted beside the outcome

    @property
    def retval(self) -> int:
        dropped = self.outcome == "blocked" or self.event in UNJUDGED_DROPS
        return XDP_DROP if dropped else XDP_PASS


UNJUDGED_DROPS = ("fragment_dropped", "unparsed_dropped")


# Frames that may hide a query and cannot be judged: a first fragment to a DNS port (or one
# whose port cannot be read), headers deeper than parsed.
UNJUDGED_CASES = [
    Case("three-vlan-tags", three_vlans(udp4(query(BLOCKED))), "unparsed",
         blocked=[(BLOCKED, False)], event="unparsed_dropped"),
    Case(
        "ipv6-five-ext-headers",
        udp6(query(BLOCKED), ext=[ext_headers(k) for k in
                                  ("hopbyhop", "dstopts", "routing", "dstopts", "dstopts")]),
        "unparsed",
        blocked=[(BLOCKED, False)],
        event="unparsed_dropped",
    ),
    Case("ipv6-ah", udp6(query(BLOCKED), ext=[ext_headers("ah")]), "unparsed",
         blocked=[(BLOCKED, False)], event="unparsed_dropped"),
    Case("ipv4-first-fragment", udp4(query(BLOCKED), flags="MF"), "fragment",
         blocked=[(BLOCKED, False)], event="fragment_dropped"),
    Case("ipv4-first-fragment-tcp", tcp4(query(BLOCKED), flags="MF"), "fragment",
         event="fragment_dropped"),
    Case("ipv4-tiny-first-fragment", udp4(b"", flags="MF")[:14 + 20 + 2], "fragment",
         event="fragment_dropped"),
    Case(
        "ipv6-fragment-header",
        udp6(query(BLOCKED), ext=[ext_headers("fragment")]),
        "fragment",
        blocked=[(BLOCKED, False)],
        event="fragment_dropped",
    ),
    Case("ipv6-first-fragment-then-dstopts",
         udp6(query(BLOCKED), ext=[ext_headers("fragment"), ext_headers("dstopts")]),
         "fragment", event="fragment_dropped"),
]


def truncation_cases() -> list[Case]:
    """Every cut of a valid query, with IP and UDP lengths matching the cut; each also with
    30 bytes of non-zero Ethernet padding after it, which must not be read as the rest of the
    question (the UDP length ends the payload, not the frame)."""
    full = query("www.lab.example")
    frame = udp4(full)
    cases = []
    for cut in range(len(full)):
        reason = "header" if cut < 12 else "truncated"
        cut_frame = with_udp_payload(frame, cut)
        cases.append(Case(f"cut-at-{cut}", cut_frame, "malformed", reason))
        padded = cut_frame + bytes(full[cut:]) + b"\x01" * 30
        cases.append(Case(f"cut-at-{cut}-padded", padded, "malformed", reason))
    return cases


CASES = [
    # -- malformed: passed to the resolver and counted with a reason -------------------------
    Case("udp-payload-5-bytes", udp4(b"\x12\x34\x01\x00\x00"), "malformed", "header"),
    Case(
        "short-payload-with-ethernet-padding",
        with_udp_payload(udp4(query()), 5) + b"\0" * 20,
        "malformed",
        "header",
    ),
    Case("udp-length-beyond-frame", udp4(query())[:-3], "malformed", "truncated"),
    *truncation_cases(),
    Case(
        "label-over-63",
        udp4(dns_header() + b"\x40" + b"a" * 64 + b"\0\0\1\0\1"),
        "malformed",
        "label_type",
    ),
    Case(
        "compression-pointer-in-question",
        udp4(dns_header() + b"\x03www\xc0\x0c\0\1\0\1"),
        "malformed",
        "label_type",
    ),
    Case(
        "name-over-255-bytes",
        udp4(query(".".join([LONG_LABEL] * 5))),
        "malformed",
        "name_len",
    ),
    Case(
        "name-256-bytes",
        udp4(query(NAME_255.replace("b" * 61, "b" * 62))),
        "malformed",
        "name_len",
    ),
    # -- not a judged query -----------------------------------------------------------------
    Case("response-qr-set", udp4(query(BLOCKED, flags=FLAG_QR | FLAG_RD)), "not_query",
         blocked=[(BLOCKED, False)]),
    Case("opcode-notify", udp4(query(BLOCKED, flags=4 << 11)), "not_query",
         blocked=[(BLOCKED, False)]),
    Case("qdcount-0", udp4(dns_header(qdcount=0)), "not_query"),
    Case("qdcount-2", udp4(query(BLOCKED, qdcount=2)), "not_query", blocked=[(BLOCKED, False)]),
    Case("response-longer-than-frame", udp4(query(BLOCKED, flags=FLAG_QR))[:-5], "not_query",
         blocked=[(BLOCKED, False)]),
    Case("udp-length-beyond-ipv4-length", ip_len_short(udp4(query(BLOCKED) + b"\0" * 8)),
         "malformed", "header", blocked=[(BLOCKED, False)]),
    # -- cannot be judged: dropped by default (settings fragments, unparsed) ------------------
    *UNJUDGED_CASES,
    Case("ipv4-fragment-offset", udp4(query(BLOCKED), frag=8), "fragment"),
    Case("ipv6-later-fragment", udp6(query(BLOCKED), ext=[IPv6ExtHdrFragment(offset=1, m=0)]),
         "fragment"),
    Case("ipv4-first-fragment-other-port", udp4(query(BLOCKED), flags="MF", dport=123),
         "fragment"),
    Case("ipv4-first-fragment-icmp", bytes(Ether(**ETH) / IP(src=CLIENT4, dst=RESOLVER4, proto=1,
                                                            flags="MF") / Raw(b"\x08\0" * 20)),
         "fragment"),
    Case("udp-other-port", udp4(query(BLOCKED), dport=123), "not_dns", blocked=[(BLOCKED, False)]),
    Case("tcp-syn-port-53", tcp4(query(BLOCKED)), "tcp_other", blocked=[(BLOCKED, False)]),
    Case("tcp-port-443", tcp4(query(BLOCKED), dport=443), "not_dns", blocked=[(BLOCKED, False)]),
    Case("arp", arp(), "not_dns"),
    # BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header; this is the shortest.
    Case("ethernet-header-only", udp4(query())[:14], "not_dns"),
    Case("vlan-tag-cut", udp4(query(), vlans=1)[:16], "not_dns"),
    Case("truncated-ipv4-header", udp4(query())[:14 + 12], "not_dns"),
    # -- judged: passed ---------------------------------------------------------------------
    Case("miss", udp4(query("www.lab.example")), "passed", blocked=[(BLOCKED, False)]),
    Case("root-name", udp4(query(".")), "passed", blocked=[(BLOCKED, True)]),
    Case("exact-entry-does-not-cover-below", udp4(query("www." + BLOCKED)), "passed",
         blocked=[(BLOCKED, False)]),
    Case("parent-of-entry", udp4(query("test")), "passed", blocked=[(BLOCKED, True)]),
    Case("sibling-suffix-text", udp4(query("notevil.test")), "passed", blocked=[(BLOCKED, True)]),
    # -- judged: blocked --------------------------------------------------------------------
    Case("exact-ipv4", udp4(query(BLOCKED)), "blocked", blocked=[(BLOCKED, False)],
         source=CLIENT4),
    Case("exact-ipv6", udp6(query(BLOCKED)), "blocked", blocked=[(BLOCKED, False)],
         source=CLIENT6_PREFIX),
    Case("mixed-case-0x20", udp4(query("EvIl.TeSt")), "blocked", blocked=[(BLOCKED, False)],
         source=CLIENT4),
    Case("subtree-deep", udp4(query("a.b.c.d.e." + BLOCKED)), "blocked",
         blocked=[(BLOCKED, True)], source=CLIENT4),
    Case("subtree-itself", udp4(query(BLOCKED)), "blocked", blocked=[(BLOCKED, True)],
         source=CLIENT4),
    Case("ipv4-options", udp4(query(BLOCKED), options=True), "blocked",
         blocked=[(BLOCKED, False)], source=CLIENT4),
    Case("one-vlan", udp4(query(BLOCKED), vlans=1), "blocked", blocked=[(BLOCKED, False)],
         source=CLIENT4),
    Case("two-vlans-qinq", udp6(query(BLOCKED), vlans=2), "blocked",
         blocked=[(BLOCKED, False)], source=CLIENT6_PREFIX),
    *[
        Case(f"ipv6-{kind}", udp6(query(BLOCKED), ext=[ext_headers(kind)]), "blocked",
             blocked=[(BLOCKED, False)], source=CLIENT6_PREFIX)
        for kind in ("hopbyhop", "routing", "dstopts")
    ],
    Case(
        "ipv6-all-three-ext-headers",
        udp6(query(BLOCKED), ext=[ext_headers(k) for k in ("hopbyhop", "routing", "dstopts")]),
        "blocked",
        blocked=[(BLOCKED, False)],
        source=CLIENT6_PREFIX,
    ),
    Case("name-255-bytes-exact", udp4(query(NAME_255)), "blocked", blocked=[(NAME_255, False)],
         source=CLIENT4),
    Case("name-255-bytes-under-subtree", udp4(query(NAME_255)), "blocked",
         blocked=[("b" * 61, True)], source=CLIENT4),
    Case("63-byte-labels", udp4(query(f"{LONG_LABEL}.{LONG_LABEL}.test")), "blocked",
         blocked=[(f"{LONG_LABEL}.test", True)], source=CLIENT4),
    Case("127-labels", udp4(query(NAME_127_LABELS)), "blocked",
         blocked=[(NAME_127_LABELS, False)], source=CLIENT4),
    Case("127-labels-subtree-at-root-side", udp4(query(NAME_127_LABELS)), "blocked",
         blocked=[("x", True)], source=CLIENT4),
    Case("other-dns-port", udp4(query(BLOCKED), dport=5353), "not_dns",
         blocked=[(BLOCKED, False)]),
    Case("trailing-data-after-question", udp4(query(BLOCKED) + b"\0" * 11), "blocked",
         blocked=[(BLOCKED, False)], source=CLIENT4),
]


def _delta(before, after) -> dict[str, int]:
    out = {}
    for k, v in after.outcomes.items():
        if v != before.outcomes[k]:
            out[k] = v - before.outcomes[k]
    for k, v in after.malformed.items():
        if v != before.malformed[k]:
            out[f"malformed.{k}"] = v - before.malformed[k]
    for k, v in after.events.items():
        if v != before.events[k]:
            out[f"event.{k}"] = v - before.events[k]
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_frame(datapath, case: Case):
    dp, fd = datapath
    key = dp.hash_key()
    set_entries(
        dp,
        {
            name_hash(name.lower(), key): (shared.ENTRY_SUBTREE if subtree else 0, 0)
            for name, subtree in case.blocked
        },
    )
    before = read_stats(dp)

    result = libbpf.prog_test_run(fd, case.frame)

    after = read_stats(dp)
    assert result.retval == case.retval, f"{case.id}: verdict"
    if case.retval == XDP_PASS:
        assert result.data_out == case.frame, f"{case.id}: a passed frame is unchanged"
    expected = {case.outcome: 1}
    if case.malformed:
        expected[f"malformed.{case.malformed}"] = 1
    if case.event:
        expected[f"event.{case.event}"] = 1
    assert _delta(before, after) == expected, f"{case.id}: counters"
    sources = {(s.address, s.category): s.hits for s in after.sources}
    if case.source:
        assert sources == {(case.source, 0): 1}, f"{case.id}: per-source hits"
    else:
        assert sources == {}, f"{case.id}: no per-source count"


@pytest.mark.parametrize("case", UNJUDGED_CASES, ids=lambda c: c.id)
def test_unjudged_frames_pass_when_set_to(datapath, case: Case):
    """fragments = pass and unparsed = pass: today's behaviour, passed unchanged, counted as the
    outcome and no event. The other setting left at drop still drops its kind."""
    dp, fd = datapath
    kind = "fragments" if case.outcome == "fragment" else "unparsed"
    other = "unparsed" if kind == "fragments" else "fragments"
    dp.set_settings(Settings(**{kind: "pass"}))
    try:
        before = read_stats(dp)
        result = libbpf.prog_test_run(fd, case.frame)
        after = read_stats(dp)
        assert result.retval == XDP_PASS and result.data_out == case.frame
        assert _delta(before, after) == {case.outcome: 1}
        dp.set_settings(Settings(**{other: "pass"}))
        assert libbpf.prog_test_run(fd, case.frame).retval == XDP_DROP
    finally:
        dp.set_settings(Settings())


def test_second_port_after_config(datapath):
    dp, fd = datapath
    set_entries(dp, {name_hash(BLOCKED, dp.hash_key()): (0, 0)})
    frame = udp4(query(BLOCKED), dport=5353)
    assert libbpf.prog_test_run(fd, frame).retval == XDP_PASS
    dp.set_dns_ports([53, 5353])
    assert libbpf.prog_test_run(fd, frame).retval == XDP_DROP
    assert sorted(dp.dns_ports()) == [53, 5353]


def test_source_hits_accumulate_per_source_and_category(datapath):
    dp, fd = datapath
    key = dp.hash_key()
    set_entries(dp, {name_hash("a.test", key): (0, 7), name_hash("b.test", key): (0, 9)})
    for _ in range(3):
        libbpf.prog_test_run(fd, udp4(query("a.test")))
    libbpf.prog_test_run(fd, udp4(query("b.test")))
    libbpf.prog_test_run(fd, udp4(query("a.test"), src="198.18.0.3"))
    snap = read_stats(dp)
    got = {(s.address, s.category): s.hits for s in snap.sources}
    assert got == {(CLIENT4, 7): 3, (CLIENT4, 9): 1, ("198.18.0.3", 7): 1}
    for s in snap.sources:
        assert s.first_seen <= s.last_seen
