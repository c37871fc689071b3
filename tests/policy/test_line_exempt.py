"""Opt-out by line: which prefixes opted-out lines hold now, from every sessions source,
FreeRADIUS's radacct in a real PostgreSQL included; and the checks on what an operator
gives (line ids, connection strings, SQL names)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest

from ccxdp.errors import CcxdpError
from ccxdp.notify.attribution import OPEN_US, Session
from ccxdp.policy import line_exempt
from ccxdp.policy.line_exempt import (
    LineExemptError,
    Radacct,
    check_conninfo,
    check_line_id,
    current_prefixes,
    read_file,
    read_radacct,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC).timestamp()
HOUR = 3600 * 1_000_000


def session(line, net, start_h, stop_h=None, origin="s.csv:1"):
    """A session from start_h to stop_h hours around NOW (None: still open)."""
    base = int(NOW * 1_000_000)
    stop = OPEN_US if stop_h is None else base + int(stop_h * HOUR)
    return Session(line, ipaddress.ip_network(net), base + int(start_h * HOUR), stop, origin)


def test_current_sessions_of_opted_out_lines_only():
    sessions = [
        session("L-1", "198.18.5.2/32", -2),                 # open: current
        session("L-1", "fd00:5:1::/56", -2),                 # its delegated prefix
        session("L-1", "198.18.5.9/32", -5, -1),             # stopped an hour ago
        session("L-1", "198.18.5.10/32", 1),                 # starts in an hour
        session("L-2", "198.18.5.3/32", -2),                 # not opted out
        session("L-3", "198.18.5.4/32", -3, 0),              # stops exactly now: gone
        session("L-3", "198.18.5.5/32", 0),                  # starts exactly now: current
    ]
    assert current_prefixes(sessions, {"L-1", "L-3"}, NOW) == {
        "198.18.5.2/32": "L-1", "fd00:5:1::/56": "L-1", "198.18.5.5/32": "L-3"}
    assert current_prefixes(sessions, set(), NOW) == {}


def test_an_address_moves_to_the_line_that_took_it_last():
    """L-1's Stop was lost; L-2 got the address later: it is L-2's, not exempt."""
    sessions = [session("L-1", "198.18.5.2/32", -5), session("L-2", "198.18.5.2/32", -1),
                session("L-1", "198.18.5.7/32", -1)]
    assert current_prefixes(sessions, {"L-1"}, NOW) == {"198.18.5.7/32": "L-1"}
    assert current_prefixes(sessions, {"L-2"}, NOW) == {"198.18.5.2/32": "L-2"}
    # A released lease (no line) ends the holder's session too.
    released = [session("L-1", "198.18.5.2/32", -5), session(None, "198.18.5.2/32", -1)]
    assert current_prefixes(released, {"L-1"}, NOW) == {}


def test_a_network_no_prefix_may_be_names_its_session():
    bad = [session("L-1", "::/0", -1, origin="radius.csv:7")]
    with pytest.raises(LineExemptError, match=r"^radius\.csv:7: cannot exempt it: .*every "
                                              r"IPv4 source"):
        current_prefixes(bad, {"L-1"}, NOW)
    assert current_prefixes(bad, {"L-2"}, NOW) == {}  # not opted out: never checked


def test_a_session_wider_than_any_isp_holds_is_refused_naming_it():
    for prefix, words in (("0.0.0.0/0", "0.0.0.0/0 would exempt all of the IPv4 Internet"),
                          ("2000::/3", "2000::/3 would exempt 1/8 of the IPv6 Internet")):
        bad = [session("L-1", prefix, -1, origin="radius.csv:9")]
        with pytest.raises(LineExemptError) as e:
            current_prefixes(bad, {"L-1"}, NOW)
        assert str(e.value).startswith(f"radius.csv:9: cannot exempt it: {words} from "
                                       "filtering and counting")
    wide = [session("L-1", "198.18.0.0/15", -1), session("L-1", "2001:db8::/32", -1)]
    assert current_prefixes(wide, {"L-1"}, NOW) == {"198.18.0.0/15": "L-1",
                                                    "2001:db8::/32": "L-1"}


def test_every_file_source(tmp_path):
    csv = tmp_path / "radius.csv"
    csv.write_text("line_id,address_or_prefix,start,stop\n"
                   "L-1,198.18.5.2,2026-12-03T10:00:00Z,\n"
                   "L-1,fd00:5:1::/56,2026-12-03T19:00:00+09:00,\n"
                   "L-2,198.18.5.3,2026-12-03T10:00:00Z,2026-12-03T11:00:00Z\n")
    dhcpd = tmp_path / "dhcpd.leases"
    dhcpd.write_text('lease 198.18.6.2 {\n  starts 4 2026/12/03 11:00:00;\n'
                     '  ends 4 2026/12/03 13:00:00;\n  binding state active;\n'
                     '  option agent.circuit-id "L-1";\n}\n')
    kea = tmp_path / "kea-leases6.csv"
    # A delegated /48 (lease_type 2); the relay's interface-id (option 18) is "L-1". Kea
    # escapes the commas of the user context.
    context = '{ "ISC": { "relay-info": [ { "hop": 0, "options": "0x001200034c2d31" } ] } }'
    kea.write_text("address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,"
                   "iaid,prefix_len,fqdn_fwd,fqdn_rev,hostname,hwaddr,state,user_context\n"
                   f"fd00:6:2::,00:01,7200,{int(NOW) + 3600},1,3600,2,1,48,0,0,,,0,"
                   + context.replace(",", "&#x2c") + "\n")
    found = (read_file(csv, "sessions", "circuit-id") + read_file(dhcpd, "leases", "circuit-id")
             + read_file(kea, "leases", "circuit-id"))
    assert current_prefixes(found, {"L-1"}, NOW) == {
        "198.18.5.2/32": "L-1", "fd00:5:1::/56": "L-1", "198.18.6.2/32": "L-1",
        "fd00:6:2::/48": "L-1"}


@pytest.mark.parametrize("value, words", [
    ("", "give a non-empty id"),
    ("L 1001", "no spaces or control characters"),
    ("L-1001\n", "no spaces or control characters"),
    ("L-\x1b[31m", r"'L-\x1b[31m'"),  # shown escaped, never raw
    ("L" * 254, "longer than 253"),
])
def test_bad_line_ids_are_refused(value, words):
    with pytest.raises(LineExemptError) as e:
        check_line_id(value)
    assert words in str(e.value) and "\x1b" not in str(e.value)
    assert check_line_id("L-1001") == "L-1001"
    assert check_line_id("0:1e:4f:aa") == "0:1e:4f:aa"  # a circuit id as hex


@pytest.mark.parametrize("uri", [
    "postgresql://ccxdp:s3cret@db.example/radius",
    "host=db.example dbname=radius password=s3cret",
    "postgresql://ccxdp@db.example/radius?password=s3cret",
])
def test_a_connection_string_with_a_password_is_refused_without_echoing_it(uri):
    with pytest.raises(LineExemptError) as e:
        check_conninfo(uri)
    assert "holds a password" in str(e.value) and "s3cret" not in str(e.value)
    assert "PGPASSFILE" in str(e.value)


def test_radacct_names_must_be_plain_sql_names():
    assert Radacct("postgresql://ccxdp@db/radius").line_id == "username"
    with pytest.raises(LineExemptError, match="invalid radacct column 'user name'"):
        Radacct("postgresql://ccxdp@db/radius", "user name")
    with pytest.raises(LineExemptError, match="invalid radacct table 'radacct;drop'"):
        Radacct("postgresql://ccxdp@db/radius", table="radacct;drop")
    with pytest.raises(LineExemptError, match="not a libpq URI"):
        Radacct("postgresql://[::1")


# -- FreeRADIUS's radacct in a real PostgreSQL -------------------------------------------------

# The accounting table of FreeRADIUS 3.2's PostgreSQL schema
# (raddb/mods-config/sql/main/postgresql/schema.sql), as its rlm_sql writes it.
RADACCT_DDL = """
CREATE TABLE IF NOT EXISTS radacct (
    RadAcctId           bigserial PRIMARY KEY,
    AcctSessionId       text NOT NULL,
    AcctUniqueId        text NOT NULL UNIQUE,
    UserName            text,
    Realm               text,
    NASIPAddress        inet NOT NULL,
    NASPortId           text,
    NASPortType         text,
    AcctStartTime       timestamp with time zone,
    AcctUpdateTime      timestamp with time zone,
    AcctStopTime        timestamp with time zone,
    AcctInterval        bigint,
    AcctSessionTime     bigint,
    AcctAuthentic       text,
    ConnectInfo_start   text,
    ConnectInfo_stop    text,
    AcctInputOctets     bigint,
    AcctOutputOctets    bigint,
    CalledStationId     text,
    CallingStationId    text,
    AcctTerminateCause  text,
    ServiceType         text,
    FramedProtocol      text,
    FramedIPAddress     inet,
    FramedIPv6Address   inet,
    FramedIPv6Prefix    inet,
    FramedInterfaceId   text,
    DelegatedIPv6Prefix inet,
    Class               text
);
CREATE INDEX radacct_active_session_idx ON radacct (AcctUniqueId) WHERE AcctStopTime IS NULL;
CREATE INDEX radacct_bulk_close ON radacct (NASIPAddress, AcctStartTime)
    WHERE AcctStopTime IS NULL;
CREATE INDEX radacct_start_user_idx ON radacct (AcctStartTime, UserName);
"""


def radacct_row(n: int, user, start: str, stop: str | None = None, v4=None, v6addr=None,
                v6prefix=None, delegated=None, calling=None) -> str:
    def lit(v):
        return "NULL" if v is None else f"'{v}'"

    return (f"INSERT INTO radacct (AcctSessionId, AcctUniqueId, UserName, NASIPAddress, "
            f"AcctStartTime, AcctStopTime, FramedIPAddress, FramedIPv6Address, "
            f"FramedIPv6Prefix, DelegatedIPv6Prefix, CallingStationId) VALUES ('s{n}', 'u{n}', "
            f"{lit(user)}, '198.18.100.1', {lit(start)}, {lit(stop)}, {lit(v4)}, "
            f"{lit(v6addr)}, {lit(v6prefix)}, {lit(delegated)}, {lit(calling)});\n")


@pytest.fixture
def radius_db(postgres_server, fleet_uri):
    """A database holding FreeRADIUS's radacct table; its URI (no password: pgpass)."""
    database = fleet_uri.rsplit("/", 1)[1]
    postgres_server.psql(RADACCT_DDL, database=database, user="ccxdp")
    return postgres_server, database, fleet_uri


def test_radacct_sessions_follow_starts_stops_and_moves(radius_db):
    server, database, uri = radius_db
    server.psql(
        # L-1: open, with an IPv4 address, an IPv6 address, a framed /64 and a delegated /56.
        radacct_row(1, "L-1", "2026-12-03 10:00:00+00", v4="198.18.5.2",
                    v6addr="fd00:5::2", v6prefix="fd00:5:0:1::/64",
                    delegated="fd00:5:100::/56")
        # L-1's earlier session, stopped: its address is nobody's now.
        + radacct_row(2, "L-1", "2026-12-03 08:00:00+00", "2026-12-03 09:00:00+00",
                      v4="198.18.5.9")
        # L-3's Stop was lost; L-4 has had the address since 11:00.
        + radacct_row(3, "L-3", "2026-12-02 10:00:00+00", v4="198.18.5.4")
        + radacct_row(4, "L-4", "2026-12-03 11:00:00+00", v4="198.18.5.4")
        # L-3 reconnected with another address.
        + radacct_row(5, "L-3", "2026-12-03 11:00:00+00", v4="198.18.5.5")
        # No line id: skipped. Starting in an hour: not yet.
        + radacct_row(6, None, "2026-12-03 10:00:00+00", v4="198.18.5.6")
        + radacct_row(7, "L-1", "2026-12-03 13:00:00+00", v4="198.18.5.10"),
        database=database, user="ccxdp")
    sessions = read_radacct(Radacct(uri), now=NOW)
    assert current_prefixes(sessions, {"L-1", "L-3"}, NOW) == {
        "198.18.5.2/32": "L-1", "fd00:5::2/128": "L-1", "fd00:5:0:1::/64": "L-1",
        "fd00:5:100::/56": "L-1", "198.18.5.5/32": "L-3"}
    assert current_prefixes(sessions, {"L-4"}, NOW) == {"198.18.5.4/32": "L-4"}
    assert {s.origin for s in sessions if str(s.network) == "198.18.5.2/32"} == {
        "radacct row 1"}

    # L-1 stops; the line id may live in another column.
    server.psql("UPDATE radacct SET AcctStopTime = '2026-12-03 11:30:00+00' "
                "WHERE AcctUniqueId = 'u1'; UPDATE radacct SET CallingStationId = UserName;",
                database=database, user="ccxdp")
    sessions = read_radacct(Radacct(uri, line_id="callingstationid"), now=NOW)
    assert current_prefixes(sessions, {"L-1", "L-3"}, NOW) == {"198.18.5.5/32": "L-3"}


def test_radacct_unreachable_or_wrong_is_one_line(radius_db, tmp_path):
    server, database, uri = radius_db
    with pytest.raises(LineExemptError, match=r'^radacct: .*column "circuit" does not exist'):
        read_radacct(Radacct(uri, line_id="circuit"), now=NOW)
    nowhere = f"postgresql://ccxdp@{str(tmp_path).replace('/', '%2F')}:5999/radius"
    with pytest.raises(LineExemptError) as e:
        read_radacct(Radacct(nowhere), now=NOW, connect_timeout=2)
    assert str(e.value).startswith("radacct: ") and "\n" not in str(e.value)


def test_line_exempt_errors_are_domain_errors():
    assert issubclass(LineExemptError, CcxdpError)
    assert line_exempt.LINE_ID_MAX == 253
