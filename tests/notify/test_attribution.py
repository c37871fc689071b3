"""Attribution: the session and lease readers on files in their real formats, and the lookup
that splits an address between lines by time."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime

import pytest

from ccxdp.inputs import InputError
from ccxdp.notify import attribution
from ccxdp.notify.attribution import Session, Sessions, id_text, parse_time


def us(text: str) -> int:
    return parse_time(text)


def t(day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(2026, 11, day, hour, minute, tzinfo=UTC).timestamp()) * 1_000_000


def lines_of(sessions: Sessions) -> list[tuple[str | None, str, str, str | None]]:
    """Every resolved session as (line, network, start, stop) in ISO form."""
    out = []
    for net, items in sorted(sessions.by_network.items(), key=lambda kv: str(kv[0])):
        for s in items:
            stop = None if s.stop_us >= 1 << 62 else _iso(s.stop_us)
            out.append((s.line, str(net), _iso(s.start_us), stop))
    return out


def _iso(v: int) -> str:
    return datetime.fromtimestamp(v / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- sessions CSV ----------------------------------------------------------------------------


def test_sessions_csv(tmp_path):
    path = tmp_path / "radius.csv"
    path.write_text(
        "line_id,address_or_prefix,start,stop\n"
        "L-1,198.18.0.2,2026-11-01T09:00:00+09:00,2026-11-20T00:00:00Z\n"
        "\n"
        "L-1,fd00:12::/56,2026-11-01T00:00:00Z,\n"
        "L-3,198.18.0.2,2026-11-20T00:00:00Z,\n"
    )
    sessions = attribution.load([path])
    assert lines_of(sessions) == [
        ("L-1", "198.18.0.2/32", "2026-11-01T00:00:00Z", "2026-11-20T00:00:00Z"),
        ("L-3", "198.18.0.2/32", "2026-11-20T00:00:00Z", None),
        ("L-1", "fd00:12::/56", "2026-11-01T00:00:00Z", None),
    ]
    assert len(sessions) == 3
    look = sessions.lookup
    assert look("198.18.0.2", t(3, 10), t(3, 11)) == ("L-1", "")
    assert look("198.18.0.2", t(21), t(21, 1)) == ("L-3", "")
    # An hour of hits on both sides of the change belongs to neither.
    assert look("198.18.0.2", t(19, 23, 50), t(20, 0, 10)) == (None, "spans a change of session")
    assert look("fd00:12:0:ff::1", t(5), t(5)) == ("L-1", "")
    assert look("fd00:12:100::1", t(5), t(5)) == (None, "no session")
    assert look("198.18.0.3", t(5), t(5)) == (None, "no session")
    assert look("198.18.0.2", t(1) - 1, t(1)) == (None, "spans a change of session")


def test_later_session_ends_an_open_one_and_same_line_merges():
    a = ipaddress.ip_network("198.18.0.2/32")
    sessions = Sessions.build([
        Session("L-1", a, t(1), 1 << 62),  # no Stop ever came
        Session("L-2", a, t(10), t(15)),
        Session("L-2", a, t(15), t(20)),  # touches: merged
        Session("L-1", a, t(18), 1 << 62),  # takes it back while L-2's is still open
    ])
    assert lines_of(sessions) == [
        ("L-1", "198.18.0.2/32", "2026-11-01T00:00:00Z", "2026-11-10T00:00:00Z"),
        ("L-2", "198.18.0.2/32", "2026-11-10T00:00:00Z", "2026-11-18T00:00:00Z"),
        ("L-1", "198.18.0.2/32", "2026-11-18T00:00:00Z", None),
    ]


def test_most_specific_prefix_decides():
    sessions = Sessions.build([
        Session("L-1", ipaddress.ip_network("fd00:12::/48"), t(1), 1 << 62),
        Session("L-2", ipaddress.ip_network("fd00:12:0:5::/64"), t(1), 1 << 62),
        Session("L-3", ipaddress.ip_network("fd00:12:0:5::9/128"), t(10), t(11)),
    ])
    assert sessions.lookup("fd00:12:0:5::1", t(3), t(3)) == ("L-2", "")
    assert sessions.lookup("fd00:12:0:6::1", t(3), t(3)) == ("L-1", "")
    assert sessions.lookup("fd00:12:0:5::9", t(10, 5), t(10, 6)) == ("L-3", "")
    # Outside the /128's own session the /64 answers.
    assert sessions.lookup("fd00:12:0:5::9", t(12), t(12)) == ("L-2", "")


# -- ISC dhcpd.leases ------------------------------------------------------------------------

DHCPD = r"""# The format of this file is documented in the dhcpd.leases(5) manual page.
# This lease file was written by isc-dhcp-4.4.3-P1

# authoring-byte-order entry is generated, DO NOT DELETE
authoring-byte-order little-endian;

server-duid "\000\001\000\001,\262\252\323\010\000'\225\022\001";

lease 198.18.0.2 {
  starts 3 2026/11/04 00:00:00;
  ends 3 2026/11/04 12:00:00;
  cltt 3 2026/11/04 00:00:00;
  binding state active;
  next binding state free;
  rewind binding state free;
  hardware ethernet 00:16:3e:ef:a9:c1;
  uid "\001\000\026>\357\251\301";
  option agent.circuit-id "olt1/0/3:100";
  option agent.remote-id 0:a:b:c:d:e;
  set vendor-class-identifier = "MSFT 5.0";
  client-hostname "home-router";
  on expiry { set x = "y"; }
}
lease 198.18.0.3 {
  starts epoch 1793836800; # Thu Nov 05 00:00:00 2026
  ends never;
  binding state active;
  hardware ethernet 00:16:3e:00:00:03;
  option agent.circuit-id "olt1/0/4:100";
}
lease 198.18.0.2 {
  starts 3 2026/11/04 00:00:00;
  ends 3 2026/11/04 06:00:00;
  tstp 3 2026/11/04 06:00:00;
  binding state free;
  hardware ethernet 00:16:3e:ef:a9:c1;
}
lease 198.18.0.2 {
  starts 4 2026/11/05 08:00:00;
  ends 4 2026/11/05 20:00:00;
  binding state active;
  hardware ethernet 00:16:3e:00:00:99;
  option agent.circuit-id "olt1/0/7:100";
}
lease 198.18.0.4 {
  starts 4 2026/11/05 08:00:00;
  ends 4 2026/11/05 20:00:00;
  binding state active;
  hardware ethernet 00:16:3e:00:00:04;
}
failover peer "dhcp-failover" state {
  my state normal at 1 2026/11/02 00:00:00;
  partner state normal at 1 2026/11/02 00:00:00;
}
"""


@pytest.mark.parametrize(
    "field, expected, without",
    [
        ("circuit-id", ["olt1/0/3:100", "olt1/0/7:100", "olt1/0/4:100"], 1),
        ("remote-id", ["00:0a:0b:0c:0d:0e", None, None], 3),
        ("hardware", ["00:16:3e:ef:a9:c1", "00:16:3e:00:00:99", "00:16:3e:00:00:03"], 0),
        ("client-id", ["01:00:16:3e:ef:a9:c1", None, None], 3),
        ("hostname", ["home-router", None, None], 3),
    ],
)
def test_dhcpd_leases(tmp_path, field, expected, without):
    path = tmp_path / "dhcpd.leases"
    path.write_text(DHCPD)
    sessions = attribution.load(dhcpd=[path], line_id_from=field)
    look = sessions.lookup
    # The first lease was released at 06:00 (the later 'free' declaration).
    assert look("198.18.0.2", t(4, 1), t(4, 2)) == (expected[0], "") if expected[0] else (
        None, "no session")
    assert look("198.18.0.2", t(4, 7), t(4, 7))[0] is None
    assert look("198.18.0.2", t(5, 9), t(5, 10))[0] == expected[1]
    assert look("198.18.0.3", t(25), t(25))[0] == expected[2]  # ends never
    assert sessions.leases_without_line_id == without


# -- Kea memfile CSV -------------------------------------------------------------------------

# Relay info as kea-dhcp4 stores it with store-extended-info (commas escaped as &#x2c):
# sub-option 1 (circuit-id) "olt1/0/3", sub-option 2 (remote-id) 0a0b0c0d0e0f.
CTX4 = json.dumps({"ISC": {"relay-agent-info": {
    "sub-options": "0x01086F6C74312F302F3302060A0B0C0D0E0F", "remote-id": "0A0B0C0D0E0F"}}})
KEA4 = (
    "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,"
    "state,user_context,pool_id\n"
    f"198.18.0.2,00:16:3e:ef:a9:c1,01:00:16:3e:ef:a9:c1,3600,{t(4, 1) // 10**6},1,0,0,"
    f"home&#x2crouter,0,{CTX4.replace(',', '&#x2c')},0\n"
    # A renewal half an hour later: merged with the first.
    f"198.18.0.2,00:16:3e:ef:a9:c1,01:00:16:3e:ef:a9:c1,3600,{t(4, 1, 30) // 10**6},1,0,0,"
    f"home&#x2crouter,0,{CTX4.replace(',', '&#x2c')},0\n"
    # Released at 01:00 (Kea keeps it as expired-reclaimed, state 2).
    f"198.18.0.2,00:16:3e:ef:a9:c1,,0,{t(4, 1) // 10**6},1,0,0,,2,,0\n"
)
CTX6 = json.dumps({"ISC": {"relay-info": [
    {"hop": 1, "link": "fd00:1::1", "peer": "fe80::1",
     "options": "0x0012000474727578"},  # a relay further away: not this one
    {"hop": 0, "link": "fd00:2::1", "peer": "fe80::2",
     "options": "0x00120008706F72743132333400250008000009BF0A0B0C0D"}]}})
KEA6 = (
    "address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,"
    "fqdn_fwd,fqdn_rev,hostname,hwaddr,state,user_context,hwtype,hwaddr_source,pool_id\n"
    f"fd00:12::,00:01:00:01:2c:b2:aa:d3:00:16:3e:ef:a9:c1,86400,{t(6) // 10**6},1,43200,2,7,56,"
    f"0,0,,00:16:3e:ef:a9:c1,0,{CTX6.replace(',', '&#x2c')},1,1,0\n"
    f"fd00:cc::2,00:01:00:01:2c:b2:aa:d3:00:16:3e:ef:a9:c1,86400,{t(6) // 10**6},1,43200,0,7,"
    f"128,0,0,,00:16:3e:ef:a9:c1,0,,1,1,0\n"
)


def test_kea_v4(tmp_path):
    path = tmp_path / "kea-leases4.csv"
    path.write_text(KEA4)
    assert attribution.lease_kind(path) == "kea"
    for field, line in [("circuit-id", "olt1/0/3"), ("remote-id", "0a:0b:0c:0d:0e:0f"),
                        ("hardware", "00:16:3e:ef:a9:c1"),
                        ("client-id", "01:00:16:3e:ef:a9:c1"), ("hostname", "home,router")]:
        sessions = attribution.load(kea=[path], line_id_from=field)
        assert lines_of(sessions) == [
            (line, "198.18.0.2/32", "2026-11-04T00:00:00Z", "2026-11-04T01:00:00Z"),
            (None, "198.18.0.2/32", "2026-11-04T01:00:00Z", None),
        ], field


def test_kea_v6_prefix_and_address(tmp_path):
    path = tmp_path / "kea-leases6.csv"
    path.write_text(KEA6)
    sessions = attribution.load(kea=[path])  # circuit-id: interface-id of the hop-0 relay
    assert lines_of(sessions) == [
        ("port1234", "fd00:12::/56", "2026-11-05T00:00:00Z", "2026-11-06T00:00:00Z"),
        (None, "fd00:cc::2/128", "2026-11-05T00:00:00Z", "2026-11-06T00:00:00Z"),
    ]
    assert sessions.leases_without_line_id == 1
    sessions = attribution.load(kea=[path], line_id_from="remote-id")
    assert sessions.lookup("fd00:12:0:1::5", t(5, 3), t(5, 4)) == ("0a:0b:0c:0d", "")
    sessions = attribution.load(kea=[path], line_id_from="client-id")
    assert sessions.lookup("fd00:cc::2", t(5, 3), t(5, 4)) == (
        "00:01:00:01:2c:b2:aa:d3:00:16:3e:ef:a9:c1", "")


def test_kea_bad_header(tmp_path):
    path = tmp_path / "kea.csv"
    path.write_text("address,when\n198.18.0.2,now\n")
    with pytest.raises(InputError) as e:
        attribution.load(kea=[path])
    assert str(e.value) == f"{path}:1: not a Kea lease file header: address,when"


def test_id_text():
    assert id_text(b"olt1/0/3") == "olt1/0/3"
    assert id_text(b"a b") == "61:20:62"  # a space is not kept as text: ids stay one word
    assert id_text(b"\x01\x00\x16") == "01:00:16"
    assert id_text(b"") == ""


def test_unknown_field():
    with pytest.raises(attribution.CcxdpError, match="unknown line id field 'mac'"):
        attribution.load(line_id_from="mac")


def test_a_prefix_hit_goes_only_to_a_session_holding_the_whole_prefix():
    """IPv6 hits are counted per /64 (source_prefix_v6): the row names the prefix. The /56
    delegated to L-1 holds it; a /128 of another line inside it does not (the hit may have
    come from any address of the /64), and neither does a /72 inside it."""
    sessions = Sessions.build([
        Session("L-1", ipaddress.ip_network("fd00:12:0:500::/56"), t(1), 1 << 62),
        Session("L-2", ipaddress.ip_network("fd00:12:0:501::9/128"), t(1), 1 << 62),
        Session("L-3", ipaddress.ip_network("fd00:12:0:502::/72"), t(1), 1 << 62),
    ])
    assert sessions.lookup("fd00:12:0:501::/64", t(3), t(3)) == ("L-1", "")
    assert sessions.lookup("fd00:12:0:502::/64", t(3), t(3)) == ("L-1", "")
    assert sessions.lookup("fd00:12:0:501::9", t(3), t(3)) == ("L-2", "")  # a /128 row
    assert sessions.lookup("fd00:12:0:500::/56", t(3), t(3)) == ("L-1", "")
    assert sessions.lookup("fd00:12:0:400::/56", t(3), t(3)) == (None, "no session")
    assert sessions.lookup("fd00:12::/48", t(3), t(3)) == (None, "no session")
