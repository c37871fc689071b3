"""Threat-feed files: read the formats C&C names come in, and write them back.

``parse_feed`` reads a file into entries (normalized names and what to do with them), the
lines it could not use (``BadLine``: file, line, reason, text) and the lines it left out on
purpose (counted by reason). ``export_feed`` writes entries in any format that can say what
they mean, and refuses the first entry it cannot write faithfully.

The formats, and the decisions that are ours:

plain
    One name per line, ``#`` starts a comment (a whole line or the end of one). ``*.name``
    lists only the names below ``name`` (match "below", as an RPZ wildcard does); ``.name``
    lists ``name`` and everything below it (match "subtree", as the leading dot does in
    squid's and dnsmasq's domain lists). A URL is a bad line; an IP address is skipped as
    "IP address host", as in the other formats (lists of names and addresses exist).
hosts
    ``address name [alias…]``: every name on a line is an entry, whatever the address. Feeds
    write 0.0.0.0, 127.0.0.1, ::, ::1 or a sinkhole of their own, and each means "this name
    must not resolve"; the address is not kept (a sinkhole answer carries the address ccxdp
    is configured with). localhost and the other lines every hosts file has are skipped as
    "hosts-file boilerplate", a name that is an address as "IP address host".
rpz
    A response policy zone, read with dnspython's zone-file Reader (directives, relative
    names, parentheses, escapes), feeding a transaction that records each record with its
    line, so duplicates and conflicts are seen and every entry has a line number (a record
    written over several lines has its last one). Names are taken relative to the zone apex:
    the owner of the SOA, else the first ``$ORIGIN``, else the root (feeds such as URLhaus's
    write ``@ SOA`` and relative names, leaving the apex to the server). Policies:
    ``CNAME .`` nxdomain, ``CNAME *.`` nodata, ``CNAME rpz-drop.`` drop, ``CNAME
    rpz-tcp-only.`` tc, ``CNAME rpz-passthru.`` (or, the old way, the name itself) an allow
    entry, A/AAAA local data sinkhole. ``*.name`` is match "below". Triggers a query packet
    cannot decide (rpz-ip, rpz-nsdname, rpz-nsip, rpz-client-ip), CNAME rewrites to other
    names and other record types are counted in ``skipped``; the apex SOA and NS are the
    zone's own. A record without a TTL gets 0 (ccxdp does not use TTLs). Lines of the
    common form ``name [ttl] [IN] CNAME policy`` are read by a regular expression that gives
    the same entries; everything else goes through dnspython.
adblock
    As AdGuard Home reads them: ``||name^`` (or ``||name|``) blocks the name and everything
    below it, ``|name^`` (or ``|name|``) the name alone, and ``@@`` before either allows; the
    modifiers that do not narrow a rule (``$important``, ``$all``, ``$document``) are
    accepted, any other modifier makes the rule "unsupported adblock modifier" (a rule for
    third-party scripts only must not block the whole name). Cosmetic rules, paths, regular
    expressions and other rules that are not a whole domain are "not a domain rule".
    ``!`` and ``#`` start comments; the ``[Adblock Plus 2.0]`` header is ignored.
csv
    abuse.ch exports (ThreatFox, URLhaus: ``#`` comment lines, the header as a comment,
    quoted fields, ", " separators) and any CSV with a header line. The column is chosen
    by ``column`` (a header name or a 1-based number), else by header: ioc_value, ioc, url,
    domain, host, hostname, name, the first present. A value gives its host: a URL's (with
    a scheme, or starting with ``//``), and ``host:port``'s, ``host/path``'s, ``host?query``'s;
    an address is skipped as "IP address host" (ThreatFox's ip:port rows too). With
    ThreatFox's ``ioc_type`` column, rows of other types than domain and url (hashes) are
    skipped by type. A header with ``name`` and ``kind`` columns (what ``export_feed``
    writes) also gives each entry's kind, match, action and category (the only format that
    carries a category). A carriage return inside a field makes a bad line.

In every format: UTF-8 (a BOM is dropped; bytes that are not UTF-8 make a bad line), LF or
CRLF line ends, names normalized by ``names.normalize``. The same name and kind listed again
with the same match, action and category is a duplicate (counted, the first line kept);
with another, a bad line ("conflicts with line N"), except an exact listing and a "below"
listing with the same action: together they are one "subtree" entry (RPZ writes a subtree as
``name`` and ``*.name``; a plain list may too).

Feeds have a million lines, so lines already in normalized form are taken by one regular
expression over runs of them (see ``_runs``) and only the other lines take the careful path
that names their problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from ccxdp.datapath.settings import ACTIONS
from ccxdp.policy.catalog import BLOCK
from ccxdp.policy.formats.adblock import (
    _ADBLOCK_RUNS,
    _adblock_line,
    _adblock_lines,
    _adblock_names,
)
from ccxdp.policy.formats.common import (
    DEFAULT_MAX_FEED_BYTES,
    EXACT,
    FORMATS,
    MAX_FEED_BYTES_ENV,
    SKIPPED_LINES_KEPT,
    SUBTREE,
    BadLine,
    ExportEntry,
    FeedEntry,
    FeedFormatError,
    ParsedFeed,
    _Builder,
    _gc_paused,
    _parse_lines,
    cannot_read,
    feed_text,
    max_feed_bytes,
    read_feed_bytes,
    text_chunks,
)
from ccxdp.policy.formats.csv import NAME_COLUMNS, _csv_lines, _parse_csv
from ccxdp.policy.formats.detect import _DETECT_BYTES, _detect, detect_format
from ccxdp.policy.formats.hosts import _HOSTS_RUNS, _hosts_line, _hosts_lines, _hosts_names
from ccxdp.policy.formats.plain import _PLAIN_RUNS, _plain_line, _plain_lines
from ccxdp.policy.formats.rpz import _RPZ_DEFAULT, RPZ_ORIGIN, _parse_rpz, _rpz_lines

# -- parse -----------------------------------------------------------------------------------
MATCH_OVERRIDE_FORMATS = ("plain", "hosts", "csv")


def parse_feed(path: Path, fmt: str = "auto", column: str | None = None,
               match: str | None = None, min_confidence: int | None = None,
               data: bytes | None = None) -> ParsedFeed:
    """Read a feed file. Lines that cannot be used are in .bad; a file that cannot be read
    as the format at all raises FeedFormatError. ``match="subtree"``: the names a format
    lists exactly are listed with everything below them (DNS-tunnel C2 lists name the
    domain whose random subdomains the beacons query); only for formats whose lines carry no
    match of their own. ``min_confidence``: a ThreatFox export's rows below that
    confidence_level are skipped (its fk_malware is each entry's category in any case).
    ``data``: the file's contents as read_feed_bytes gave them, when the caller has them
    (a sync reads a feed once); else the file is read here."""
    if fmt != "auto" and fmt not in FORMATS:
        raise FeedFormatError(f"unknown feed format {fmt!r} ({', '.join(FORMATS)})")
    if data is None:
        data = read_feed_bytes(path)
    if fmt == "auto":
        fmt = _detect(next(iter(text_chunks(data[:_DETECT_BYTES])), (1, ""))[1])
        if fmt is None:
            raise FeedFormatError(
                f"{path}: cannot tell the feed format ({', '.join(FORMATS)}); "
                "give it with --format"
            )
    if column is not None and fmt != "csv":
        raise FeedFormatError(f"{path}: a column can only be chosen in a CSV feed, not {fmt}")
    if min_confidence is not None and fmt != "csv":
        raise FeedFormatError(f"{path}: --min-confidence is for CSV feeds (ThreatFox's), "
                              f"not {fmt}")
    if match not in (None, EXACT, SUBTREE):
        raise FeedFormatError(f"{path}: match {match!r}: give exact or subtree")
    if match == SUBTREE and fmt not in MATCH_OVERRIDE_FORMATS:
        raise FeedFormatError(
            f"{path}: {fmt} gives each entry its own match; --match is for "
            f"{', '.join(MATCH_OVERRIDE_FORMATS)} files")
    with _gc_paused():
        if fmt == "rpz":
            b = _Builder(str(path), _RPZ_DEFAULT)
            _parse_rpz(b, feed_text(data))
        else:
            b = _Builder(str(path))
            chunks = text_chunks(data)
            if fmt == "plain":
                _parse_lines(b, chunks, _PLAIN_RUNS, str, _plain_line)
            elif fmt == "hosts":
                _parse_lines(b, chunks, _HOSTS_RUNS, _hosts_names, _hosts_line,
                             (("localhost", 0),))
            elif fmt == "adblock":
                b.default = (BLOCK, SUBTREE, None, None)  # what ||name^ says
                _parse_lines(b, chunks, _ADBLOCK_RUNS, _adblock_names, _adblock_line)
            else:
                _parse_csv(b, feed_text(data), column, min_confidence)
        parsed = b.finish(fmt)
    if match == SUBTREE:
        parsed.entries = [e if e.match != EXACT else replace(e, match=SUBTREE)
                          for e in parsed.entries]
    return parsed


def export_feed(
    entries: Iterable[ExportEntry], fmt: str, *, origin: str = RPZ_ORIGIN, serial: int = 1
) -> Iterator[str]:
    """The lines (without line ends) of a file in `fmt` that parse_feed reads back as the
    same entries. Raises FeedFormatError at the first entry the format cannot hold
    faithfully. RPZ: `origin` is the zone's apex, `serial` its SOA serial; a subtree is
    written as the name and its wildcard, a sinkhole as A 0.0.0.0 and AAAA ::."""
    if fmt == "plain":
        return _plain_lines(entries)
    if fmt == "hosts":
        return _hosts_lines(entries)
    if fmt == "adblock":
        return _adblock_lines(entries)
    if fmt == "rpz":
        return _rpz_lines(entries, origin.rstrip("."), serial)
    if fmt == "csv":
        return _csv_lines(entries)
    raise FeedFormatError(f"unknown feed format {fmt!r} ({', '.join(FORMATS)})")


__all__ = [
    "ACTIONS", "DEFAULT_MAX_FEED_BYTES", "FORMATS", "MAX_FEED_BYTES_ENV", "NAME_COLUMNS",
    "SKIPPED_LINES_KEPT", "BadLine", "ExportEntry", "FeedEntry", "FeedFormatError",
    "ParsedFeed", "cannot_read", "detect_format", "export_feed", "max_feed_bytes",
    "parse_feed", "read_feed_bytes",
]
