"""Queries the filter cannot judge, and queries with IP options or extension headers, end to
end: frames made with scapy and sent from the client's namespace onto its real interface, a
real unbound behind the filter, the answer read by a UDP socket of the client's kernel.

A fragmented query or one behind five destination-options headers is dropped by default and
never reaches unbound; with `fragments` / `unparsed` set to pass, unbound gets it (the kernel
reassembles it) and answers. A blocked query with IPv4 options or IPv6 extension headers is
answered by the filter, and the client's kernel accepts the answer."""

from __future__ import annotations

import ipaddress
import json
import sys

import dns.message
import dns.rcode
import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns]

# Runs in the client's namespace: sends one query for argv[1] shaped as argv[2] (scapy), from
# a UDP socket's port, and prints how many frames it sent, then the reply's hex or "timeout".
_SEND = r"""
import socket, sys
import dns.message
from scapy.layers.inet import IP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.inet6 import fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.sendrecv import sendp
name, shape, iface, src, dst, dst_mac = sys.argv[1:7]
v6 = ":" in dst
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
sport = s.getsockname()[1]
wire = dns.message.make_query(name, "AAAA" if v6 else "A").to_wire()
udp = UDP(sport=sport, dport=53) / Raw(wire)
eth = Ether(dst=dst_mac)
if shape == "fragments":
    if v6:
        pkt = IPv6(bytes(IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=77) / udp))
        frames = [eth / f for f in fragment6(pkt, 40 + 8 + 24)]
    else:
        pkt = IP(bytes(IP(src=src, dst=dst, id=77) / udp))
        frames = [eth / f for f in fragment(pkt, fragsize=16)]
elif shape == "dstopts5":
    pkt = IPv6(src=src, dst=dst)
    for _ in range(5):
        pkt = pkt / IPv6ExtHdrDestOpt()
    frames = [eth / pkt / udp]
elif shape == "options":
    if v6:
        frames = [eth / IPv6(src=src, dst=dst) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / udp]
    else:
        frames = [eth / IP(src=src, dst=dst, options=[IPOption_RR(routers=["198.18.0.9"])]) / udp]
assert len(frames) >= 1
for f in frames:
    sendp(f, iface=iface, verbose=False)
s.settimeout(1.5)
try:
    print(len(frames), s.recv(65535).hex())
except TimeoutError:
    print(len(frames), "timeout")
"""


def resolver_mac(lab) -> str:
    cp = lab.run("res", ["ip", "-j", "link", "show", "dev", lab.res_if], check=True)
    return json.loads(cp.stdout)[0]["address"]


def send(lab, name: str, shape: str, family: int) -> tuple[int, dns.message.Message | None]:
    """(frames sent, the reply or None)."""
    src, dst = (lab.cli_v4, lab.res_v4) if family == 4 else (lab.cli_v6, lab.res_v6)
    assert ipaddress.ip_address(dst).version == family
    cp = lab.run("cli", [sys.executable, "-c", _SEND, name, shape, lab.cli_if, src, dst,
                         resolver_mac(lab)], check=True)
    frames, out = cp.stdout.split()
    return int(frames), None if out == "timeout" else dns.message.from_wire(bytes.fromhex(out))


@pytest.fixture
def filtering(ccxdp, lab):
    lab.native_tx_peer()
    ccxdp.json("attach", lab.res_if, *lab.res_netns_opt, "--mode", "native", "--action",
               "nxdomain")
    ccxdp.run("block", "add", "evil.test", "--category", "emotet")
    return ccxdp


def _changes(before, after, group):
    return {k: after[group][k] - before[group][k] for k in after[group]
            if after[group][k] != before[group][k]}


@pytest.mark.parametrize("family", [4, 6])
def test_fragmented_query_is_dropped_unless_fragments_pass(filtering, lab, family):
    ccxdp = filtering
    before = ccxdp.json("stats")
    frames, answer = send(lab, "evil.test", "fragments", family)
    assert frames >= 2 and answer is None
    assert lab.unbound_queries_for("evil.test") == 0
    after = ccxdp.json("stats")
    assert _changes(before, after, "events") == {"fragment_dropped": 1}  # the first only
    assert _changes(before, after, "outcomes").get("fragment") == frames
    assert after["sources"] == []

    ccxdp.run("config", "set", "fragments", "pass")
    _, answer = send(lab, "evil.test", "fragments", family)
    # Passed unjudged: unbound reassembled the query and gave its own answer.
    assert answer is not None and answer.rcode() == dns.rcode.NOERROR
    assert lab.unbound_queries_for("evil.test") == 1
    again = ccxdp.json("stats")
    assert _changes(after, again, "events") == {}


def test_query_behind_five_destination_options_is_dropped_unless_unparsed_pass(filtering, lab):
    ccxdp = filtering
    before = ccxdp.json("stats")
    assert send(lab, "evil.test", "dstopts5", 6) == (1, None)
    assert lab.unbound_queries_for("evil.test") == 0
    after = ccxdp.json("stats")
    assert _changes(before, after, "events") == {"unparsed_dropped": 1}
    assert _changes(before, after, "outcomes").get("unparsed") == 1

    ccxdp.run("config", "set", "unparsed", "pass")
    _, answer = send(lab, "evil.test", "dstopts5", 6)
    assert answer is not None and answer.rcode() == dns.rcode.NOERROR
    assert lab.unbound_queries_for("evil.test") == 1


@pytest.mark.parametrize("family", [4, 6])
def test_blocked_query_with_options_is_answered(filtering, lab, family):
    ccxdp = filtering
    before = ccxdp.json("stats")
    _, answer = send(lab, "evil.test", "options", family)
    assert answer is not None and answer.rcode() == dns.rcode.NXDOMAIN
    assert str(answer.question[0].name) == "evil.test."
    assert lab.unbound_queries_for("evil.test") == 0
    after = ccxdp.json("stats")
    assert _changes(before, after, "events") == {}
    assert _changes(before, after, "outcomes").get("blocked") == 1
    client = (lab.cli_v4 if family == 4  # IPv6 per /64
              else str(ipaddress.ip_network((lab.cli_v6, 64), strict=False)))
    assert {s["address"]: s["hits"] for s in after["sources"]} == {client: 1}
