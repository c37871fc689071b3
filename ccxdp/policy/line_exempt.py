"""Opt-out by line: the exempt prefixes of opted-out lines, following their sessions.

A subscriber opts out by line id (the hits store keeps the list). The addresses a line holds
change (a dynamic IPv4 address, a new IPv6 delegation after a reconnect), so the prefixes to
exempt are derived: the networks of the sessions that are current now (start <= now < stop)
and belong to an opted-out line. Sessions come from the sources ``notify`` reads (a RADIUS
accounting CSV, ISC dhcpd.leases, Kea lease CSV) and from FreeRADIUS's SQL accounting table
(``radacct``, its standard PostgreSQL schema). They combine as attribution.py says: an
address is held by one line at a time, a later session of another line ends an earlier one.

This module is the one owner of "opted-out lines + sessions -> prefixes"; the daemon (which
re-reads the sources as they change) and ``ccxdp exempt line sync`` (one shot) both call it,
and exempt.set_line_prefixes writes the result to the catalog and the kernel.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ccxdp import postgres
from ccxdp.datapath.loader import Datapath
from ccxdp.errors import CcxdpError
from ccxdp.notify import attribution
from ccxdp.notify.attribution import Session, Sessions
from ccxdp.policy.catalog import Catalog
from ccxdp.policy.exempt import (
    LinePrefixChange,
    PrefixError,
    check_width,
    parse_prefix,
    set_line_prefixes,
)

LINE_ID_MAX = 253  # RADIUS's User-Name, the longest line id a sessions source can carry
DEFAULT_RADACCT_TABLE = "radacct"
DEFAULT_RADACCT_LINE_ID = "username"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # an unquoted SQL name


class LineExemptError(CcxdpError):
    pass


def check_line_id(text: str) -> str:
    """A line id as typed: printable, no spaces or control characters, at most LINE_ID_MAX
    characters. The value is shown escaped (repr): it may hold anything."""
    if not text:
        raise LineExemptError("invalid line id '': give a non-empty id")
    if len(text) > LINE_ID_MAX:
        raise LineExemptError(
            f"invalid line id {text[:40]!r}...: longer than {LINE_ID_MAX} characters")
    if not text.isprintable() or any(c.isspace() for c in text):
        raise LineExemptError(
            f"invalid line id {text!r}: no spaces or control characters in a line id")
    return text


def check_identifier(what: str, text: str) -> str:
    """A table or column name for the radacct query: a plain SQL identifier."""
    if not _IDENTIFIER.fullmatch(text):
        raise LineExemptError(
            f"invalid {what} {text!r}: a plain SQL name (letters, digits, '_'), as in "
            f"FreeRADIUS's schema")
    return text


def check_conninfo(uri: str) -> str:
    """The radacct connection string: as ccxdp.postgres takes every one."""
    try:
        return postgres.check_conninfo(uri, "the radacct connection string")
    except postgres.ConnInfoError as e:
        raise LineExemptError(str(e)) from None


@dataclass(frozen=True)
class Radacct:
    """FreeRADIUS's accounting table in PostgreSQL."""

    uri: str
    line_id: str = DEFAULT_RADACCT_LINE_ID  # the column that names the line
    table: str = DEFAULT_RADACCT_TABLE

    def __post_init__(self) -> None:
        check_conninfo(self.uri)
        check_identifier("radacct column", self.line_id)
        check_identifier("radacct table", self.table)


# -- reading the sources -------------------------------------------------------------------


def read_file(path: Path, kind: str, line_id_from: str) -> list[Session]:
    """One file's sessions: kind "sessions" (the RADIUS accounting CSV) or "leases"
    (dhcpd.leases or Kea's CSV, told apart by content). InputError at the first bad line."""
    if kind == "sessions":
        return attribution.read_sessions_csv(path)
    if attribution.lease_kind(path) == "kea":
        return attribution.read_kea_leases(path, line_id_from)[0]
    return attribution.read_dhcpd_leases(path, line_id_from)[0]


# Every row that may decide who holds an address now: the open sessions, and any session
# that began after the oldest open one (a later session of another line on the same
# address ends an open one whose Stop was lost).
_RADACCT_QUERY = """
SELECT radacctid, {line}, framedipaddress, framedipv6address, framedipv6prefix,
       delegatedipv6prefix, acctstarttime, acctstoptime
FROM {table}
WHERE acctstarttime IS NOT NULL
  AND (acctstoptime IS NULL OR acctstoptime > %(now)s
       OR acctstarttime >= (SELECT min(acctstarttime) FROM {table}
                            WHERE acctstoptime IS NULL))
"""


def read_radacct(source: Radacct, now: float | None = None,
                 connect_timeout: int = 5) -> list[Session]:
    """The sessions in FreeRADIUS's radacct table that can be current at ``now`` (Unix
    seconds): each row gives a session for each of framedipaddress, framedipv6address,
    framedipv6prefix and delegatedipv6prefix it holds, from acctstarttime to acctstoptime
    (NULL: still open). Rows without a line id are skipped."""
    import psycopg
    from psycopg import sql

    query = sql.SQL(_RADACCT_QUERY).format(line=sql.Identifier(source.line_id),
                                           table=sql.Identifier(source.table))
    at = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    try:
        with psycopg.connect(source.uri, connect_timeout=connect_timeout, autocommit=True,
                             application_name="ccxdp") as conn:
            rows = conn.execute(query, {"now": at}).fetchall()
    except psycopg.Error as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LineExemptError(f"radacct: {reason}") from None
    out = []
    for rid, line, *addresses, start, stop in rows:
        if line is None or not str(line):
            continue
        start_us = attribution.to_us(start)
        stop_us = attribution.OPEN_US if stop is None else attribution.to_us(stop)
        for value in addresses:
            if value is None:
                continue
            # inet: an address (a /32 or /128) or an interface with a mask; a prefix given
            # with host bits set means its network.
            net = ipaddress.ip_interface(str(value)).network
            out.append(Session(str(line), net, start_us, max(start_us, stop_us),
                               f"radacct row {rid}"))
    return out


# -- from sessions to prefixes -------------------------------------------------------------


def current_prefixes(sessions: Sessions | Iterable[Session], opted_out: Collection[str],
                     now: float | None = None) -> dict[str, str]:
    """{prefix: line} for every network an opted-out line holds at ``now`` (Unix seconds).
    A network no exempt prefix may be (one that covers every IPv4 source, say) is a
    LineExemptError naming the session it came from."""
    if not isinstance(sessions, Sessions):
        sessions = Sessions.build(sessions)
    now_us = int((time.time() if now is None else now) * 1_000_000)
    out: dict[str, str] = {}
    for net, items in sessions.by_network.items():
        for s in items:  # disjoint after Sessions.build: at most one is current
            if s.start_us <= now_us < s.stop_us and s.line is not None:
                if s.line in opted_out:
                    try:
                        prefix = parse_prefix(str(net))
                        check_width([prefix])  # a session's address, never a /0: no force
                        out[str(prefix)] = s.line
                    except PrefixError as e:
                        raise LineExemptError(f"{s.origin}: cannot exempt it: {e}") from None
                break
    return out


@dataclass(frozen=True)
class LineSync:
    changes: list[LinePrefixChange]
    prefixes: dict[str, str]  # the line-derived prefixes now, {prefix: line}
    sessions: int  # sessions read, of every line
    opted_out: int  # lines opted out


def apply(dp: Datapath, catalog: Catalog, sessions: Sessions | Iterable[Session],
          opted_out: Collection[str], now: float | None = None) -> LineSync:
    """Make the catalog's and the kernel's line-derived prefixes those of current_prefixes."""
    if not isinstance(sessions, Sessions):
        sessions = Sessions.build(sessions)
    wanted = current_prefixes(sessions, opted_out, now)
    changes = set_line_prefixes(dp, catalog, wanted)
    return LineSync(changes, wanted, len(sessions), len(opted_out))


def sync(dp: Datapath, catalog: Catalog, opted_out: Collection[str],
         sessions_files: Sequence[Path] = (), lease_files: Sequence[Path] = (),
         line_id_from: str = attribution.DEFAULT_LINE_ID_FIELD,
         radacct: Radacct | None = None, now: float | None = None) -> LineSync:
    """One shot, every source read whole before anything changes."""
    found: list[Session] = []
    for p in sessions_files:
        found += read_file(p, "sessions", line_id_from)
    for p in lease_files:
        found += read_file(p, "leases", line_id_from)
    if radacct is not None:
        found += read_radacct(radacct, now)
    return apply(dp, catalog, found, opted_out, now)


def drop_lines(dp: Datapath, catalog: Catalog, lines: Collection[str]) -> list[LinePrefixChange]:
    """Take these lines' prefixes out at once (they opted back in): filtered and counted
    again without waiting for the next sync."""
    kept = {e.prefix: e.line for e in catalog.line_exempt() if e.line not in lines}
    return set_line_prefixes(dp, catalog, kept)
