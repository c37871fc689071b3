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
    squid's and dnsmasq's domain lists). A URL or an IP address is a bad line.
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
    ``||name^`` blocks the name and everything below it, ``@@||name^`` allows them; the
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

import codecs
import csv
import gc
import ipaddress
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import compress, repeat
from operator import itemgetter, not_
from pathlib import Path
from urllib.parse import urlsplit

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer
import dns.transaction
import dns.zonefile

from ccxdp.datapath.settings import ACTION_NAMES, ACTIONS, SettingError, parse_action
from ccxdp.errors import CcxdpError, InvalidNameError
from ccxdp.policy.catalog import ALLOW, BLOCK, KINDS, MATCHES, CatalogError, normalize_category
from ccxdp.policy.names import normalize

FORMATS = ("plain", "hosts", "rpz", "adblock", "csv")

EXACT, SUBTREE, BELOW = MATCHES

MAX_NAME_TEXT = 253  # 255 bytes in wire form
VALUE_SHOWN = 80  # characters of an offending value kept in a BadLine


class FeedFormatError(CcxdpError):
    """A feed file that cannot be read at all, or entries a format cannot hold."""


@dataclass(frozen=True, slots=True)
class FeedEntry:
    name: str  # normalized: lower-case ASCII, A-labels, no trailing dot
    kind: str  # "block" or "allow"
    match: str  # "exact", "subtree" (the name and all below) or "below" (only below)
    action: str | None  # None: the feed's configured action; else one of ACTIONS
    line: int  # 1-based line where the entry was (first) listed
    category: str | None = None  # only CSV files with a category column carry one


@dataclass(frozen=True)
class BadLine:
    path: str
    line: int
    reason: str
    value: str  # the offending text as found on the line, stripped, cut to VALUE_SHOWN

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}: {self.value}"


@dataclass
class ParsedFeed:
    path: str
    format: str
    entries: list[FeedEntry]  # deduplicated, in file order
    bad: list[BadLine]  # unusable lines, in file order
    skipped: dict[str, int]  # lines (hosts: names) left out on purpose, by reason
    duplicates: int  # listings that repeated an entry already listed


@dataclass(frozen=True)
class ExportEntry:
    name: str  # normalized
    kind: str = BLOCK
    match: str = EXACT
    action: str | None = None  # None: the configured default action
    category: str | None = None


# -- reading ---------------------------------------------------------------------------------
def _read_text(path: Path, limit: int | None = None) -> str:
    """The file as text with LF line ends, ending in one. Bytes that are not UTF-8 become
    U+FFFD, which the careful paths report as "not UTF-8"."""
    try:
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit)
    except OSError as e:
        raise FeedFormatError(f"{path}: cannot read: {e.strerror or e}") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    text = data.decode("utf-8", errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    return text


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building a million entries triggers the cyclic collector hundreds of times, each pass
    walking every object made so far (it doubles the parse time here); none of them can be
    part of a cycle, so it waits until the feed is read."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _cut(text: str) -> str:
    text = text.strip()
    return text if len(text) <= VALUE_SHOWN else text[: VALUE_SHOWN - 1] + "…"


def _is_ip(text: str) -> bool:
    if not text or not (text[0].isdigit() or ":" in text):
        return False  # a name, most of the time: no exception to build
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _canonical_action(text: str) -> str:
    """An action as FeedEntry carries it; ValueError for anything else."""
    try:
        return parse_action(text)
    except SettingError:
        raise ValueError(text) from None


# -- entries ---------------------------------------------------------------------------------
_SLOTS = tuple(
    getattr(FeedEntry, f) for f in ("name", "kind", "match", "action", "line", "category")
)
_exhaust = deque(maxlen=0).extend


def _make_entries(n: int, columns: Iterable[Iterable]) -> list[FeedEntry]:
    """n entries from one iterable of values per field (name, kind, match, action, line,
    category). FeedEntry(...) a million times costs about 0.6 s here; setting each slot
    through its descriptor, one C-level pass per field, about a third of that. The values
    are the same either way (tests compare the two)."""
    entries = list(map(object.__new__, repeat(FeedEntry, n)))
    for slot, values in zip(_SLOTS, columns, strict=True):
        _exhaust(map(slot.__set__, entries, values))
    return entries


_Attrs = tuple  # (kind, match, action, category)


class _Builder:
    """Collects listings in file order; finish() merges duplicates and exact+below pairs,
    reports conflicts, and makes the entries. Listings with the format's usual attributes
    cost two list appends; others are kept aside by index."""

    def __init__(self, path: str, default: _Attrs = (BLOCK, EXACT, None, None)):
        self.path = path
        self.default = default
        self.names: list[str] = []
        self.lines: list[int] = []
        self.attrs: dict[int, _Attrs] = {}  # index -> attributes, where not the default
        self.values: dict[int, str] = {}  # index -> text on the line, where not the name
        self.bad: list[BadLine] = []
        self.skipped: dict[str, int] = {}
        self.duplicates = 0

    def run(self, names: list[str], first_line: int) -> None:
        """Names in normalized form, with the default attributes, on consecutive lines."""
        self.names += names
        self.lines += range(first_line, first_line + len(names))

    def add(self, name: str, line: int, value: str, attrs: _Attrs | None = None) -> None:
        index = len(self.names)
        if attrs is not None and attrs != self.default:
            self.attrs[index] = attrs
        if value != name:
            self.values[index] = value
        self.names.append(name)
        self.lines.append(line)

    def name(self, text: str, line: int, value: str, attrs: _Attrs | None = None) -> None:
        """Normalize a name and add it, or report the line."""
        if "\ufffd" in text:
            self.refuse(line, "not UTF-8", value)
            return
        try:
            name = normalize(text)
        except InvalidNameError as e:
            self.refuse(line, e.reason, value)
            return
        self.add(name, line, value, attrs)

    def refuse(self, line: int, reason: str, value: str) -> None:
        self.bad.append(BadLine(self.path, line, reason, _cut(value)))

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def finish(self, fmt: str) -> ParsedFeed:
        names, lines = self.names, self.lines
        n = len(names)
        kind, match, action, category = self.default
        if not self.attrs:
            if len(set(names)) == n:
                columns = [names, repeat(kind), repeat(match), repeat(action), lines]
            else:  # only duplicates: the attributes are all the same
                first_line = dict(zip(reversed(names), reversed(lines), strict=True))
                names = list(dict.fromkeys(names))  # in the order of their first listing
                columns = [names, repeat(kind), repeat(match), repeat(action),
                           map(first_line.__getitem__, names)]
                self.duplicates += n - len(names)
            entries = _make_entries(len(names), [*columns, repeat(category)])
        else:
            entries = self._merge()
        self.bad.sort(key=lambda b: b.line)
        return ParsedFeed(self.path, fmt, entries, self.bad, self.skipped, self.duplicates)

    def _merge(self) -> list[FeedEntry]:
        attrs, default, lines = self.attrs, self.default, self.lines
        index: dict[str, dict[str, int]] = {k: {} for k in KINDS}
        out: list[list] = []  # [name, kind, match, action, line, category, merged]
        for i, name in enumerate(self.names):
            kind, match, action, category = attrs.get(i, default)
            seen = index[kind]
            j = seen.get(name)
            if j is None:
                seen[name] = len(out)
                out.append([name, kind, match, action, lines[i], category, False])
                continue
            first = out[j]
            if (action, category) != (first[3], first[5]):
                self.refuse(lines[i], f"conflicts with line {first[4]}", self.values.get(i, name))
            elif match == first[2] or (first[6] and match in (EXACT, BELOW)):
                self.duplicates += 1
            elif {match, first[2]} == {EXACT, BELOW}:
                first[2], first[6] = SUBTREE, True
            else:
                self.refuse(lines[i], f"conflicts with line {first[4]}", self.values.get(i, name))
        columns = list(zip(*out, strict=True))[:6] if out else [[]] * 6
        return _make_entries(len(out), columns)


# -- the fast path ---------------------------------------------------------------------------
# A name as normalize() returns it, loosely: labels of a-z 0-9 _ -, at least two, the last
# one starting with a letter (so no address matches). What the loose pattern lets through
# wrongly, _suspects() finds with a few substring searches: that is twice as fast as
# checking every label's edges in the pattern.
_LABEL = r"[a-z0-9_-]{1,63}"
_NAME = rf"(?:{_LABEL}\.)+[a-z][a-z0-9_-]{{0,62}}"

_SUSPECT = (("-.", 0), (".-", 1), ("-\n", 0), ("\n-", 1), ("xn--", 0))


def _runs(line: str) -> re.Pattern[str]:
    """A pattern that, matched at the start of a line, takes the run of lines that each match
    `line` (group 1) and then the next line, if any (group 2). Each line is an atomic group:
    the run never backtracks, and sre scans a million lines in one C call."""
    return re.compile(rf"((?>{line}\n)*)(?:([^\n]*)\n)?")


def _split_runs(text: str, runs: re.Pattern[str]) -> Iterator[tuple[int, str | None, str]]:
    """(first line number, run, "") for each run of fast lines, (line number, None, line)
    for each other line."""
    pos, lineno, end = 0, 1, len(text)
    match = runs.match
    while pos < end:
        m = match(text, pos)
        run = m.group(1)
        if run:
            yield lineno, run, ""
            lineno += run.count("\n")
        line = m.group(2)
        if line is not None:
            yield lineno, None, line
            lineno += 1
        pos = m.end()


def _suspects(block: str, names: list[str], extra: tuple = ()) -> list[int]:
    """Indexes of the names of a fast run (one per line in `block`) that the loose pattern
    may have let through wrongly: a hyphen at a label's edge, an xn-- label (its punycode is
    checked), a name over 253 characters, and the format's own `extra` substrings. Those take
    the careful path."""
    positions = []
    for needle, offset in _SUSPECT + extra:
        i = block.find(needle)
        while i >= 0:
            positions.append(i + offset)
            i = block.find(needle, i + 1)
    if block.startswith(("-", "\n")):  # a hyphen first; or a first line without a name
        positions.append(0)
    out = set()
    line, last = 0, 0
    for p in sorted(positions):
        line += block.count("\n", last, p)
        last = p
        out.add(line)
    if names and max(map(len, names)) > MAX_NAME_TEXT:
        out.update(i for i, name in enumerate(names) if len(name) > MAX_NAME_TEXT)
    return sorted(out)


_Careful = Callable[[_Builder, str, int], None]


def _parse_lines(
    b: _Builder, text: str, runs: re.Pattern[str], names_of: Callable[[str], str],
    careful: _Careful, extra: tuple = (),
) -> None:
    """Fast runs give names (names_of turns a run into one name a line); other lines, and
    suspects, go to `careful`."""
    for lineno, run, line in _split_runs(text, runs):
        if run is None:
            careful(b, line, lineno)
            continue
        block = names_of(run)
        names = block[:-1].split("\n")
        suspects = _suspects(block, names, extra)
        if not suspects:
            b.run(names, lineno)
            continue
        lines = run[:-1].split("\n")
        start = 0
        for i in suspects:
            b.run(names[start:i], lineno + start)
            careful(b, lines[i], lineno + i)
            start = i + 1
        b.run(names[start:], lineno + start)


# -- plain -----------------------------------------------------------------------------------
_PLAIN_RUNS = _runs(_NAME)


def _not_a_name(text: str) -> str | None:
    """Why a value that should be one name is not, before normalize() looks at it."""
    if len(text.split()) > 1:
        return "several fields, not one name"
    if "://" in text:
        return "a URL, not a domain name"
    if _is_ip(text):
        return "IP address"
    return None


def _plain_line(b: _Builder, line: str, lineno: int) -> None:
    value = line.split("#", 1)[0].strip()
    if not value:
        return
    text, match = value, EXACT
    if text.startswith("*."):
        text, match = text[2:], BELOW
    elif text.startswith(".") and len(text) > 1:
        text, match = text[1:], SUBTREE
    reason = _not_a_name(text)
    if reason:
        b.refuse(lineno, reason, value)
        return
    b.name(text, lineno, value, (BLOCK, match, None, None))


# -- hosts -----------------------------------------------------------------------------------
_HOSTS_RUNS = _runs(rf"(?:0\.0\.0\.0|127\.0\.0\.1|::1?)[ \t]+{_NAME}[ \t]*")
_HOSTS_NAME = re.compile(r"^\S+[ \t]+([^ \t\n]+)", re.M)
_BOILERPLATE = frozenset({
    "localhost", "localhost.localdomain", "local", "broadcasthost",
    "localhost4", "localhost4.localdomain4", "localhost6", "localhost6.localdomain6",
})  # and ip6-localhost, ip6-loopback, ip6-allnodes … (any "ip6-" name)


def _hosts_names(run: str) -> str:
    if "\t" in run or "  " in run or " \n" in run:
        return "\n".join(_HOSTS_NAME.findall(run)) + "\n"
    # Each line is one of the four addresses, one space, a name with no space or colon: an
    # address followed by its space is found nowhere else.
    return run.replace("0.0.0.0 ", "").replace("127.0.0.1 ", "").replace("::1 ", "").replace(
        ":: ", "")


def _hosts_line(b: _Builder, line: str, lineno: int) -> None:
    content = line.split("#", 1)[0].strip()
    fields = content.split()
    if not fields:
        return
    if not _is_ip(fields[0]):
        b.refuse(lineno, "not an address followed by names", content)
        return
    if len(fields) == 1:
        b.refuse(lineno, "an address without names", content)
        return
    for value in fields[1:]:
        low = value.lower().rstrip(".")
        if low in _BOILERPLATE or low.startswith("ip6-"):
            b.skip("hosts-file boilerplate")
        elif _is_ip(value):
            b.skip("IP address host")
        else:
            b.name(value, lineno, value)


# -- adblock ---------------------------------------------------------------------------------
_ADBLOCK_RUNS = _runs(rf"\|\|{_NAME}\^")
_ADBLOCK_MODIFIERS = frozenset({"important", "all", "document", "doc"})  # none narrows a rule
_COSMETIC = ("##", "#@#", "#?#", "#$#", "#%#")


def _adblock_names(run: str) -> str:
    return run.replace("||", "").replace("^", "")


def _adblock_line(b: _Builder, line: str, lineno: int) -> None:
    s = line.strip()
    if not s or s[0] == "!" or (s[0] == "[" and s[-1] == "]"):
        return  # comment, or the [Adblock Plus 2.0] header
    if any(c in s for c in _COSMETIC):
        b.skip("not a domain rule")
        return
    if s[0] == "#":
        return  # a comment, the way AdGuard's DNS lists write them
    kind, rule = BLOCK, s
    if rule.startswith("@@"):
        kind, rule = ALLOW, rule[2:]
    rule, _, modifiers = rule.partition("$")
    if rule.endswith("^|"):
        rule = rule[:-1]
    host = rule[2:-1]
    if not rule.startswith("||") or not rule.endswith("^") or not host or any(
        c in host for c in "/*^|:?=&@"
    ):
        b.skip("not a domain rule")
        return
    if any(m.strip().lower() not in _ADBLOCK_MODIFIERS for m in modifiers.split(",") if m):
        b.skip("unsupported adblock modifier")
        return
    if _is_ip(host):
        b.skip("IP address host")
        return
    reason = _not_a_name(host)
    if reason:
        b.refuse(lineno, reason, s)
        return
    b.name(host, lineno, s, (kind, SUBTREE, None, None))


# -- csv -------------------------------------------------------------------------------------
NAME_COLUMNS = ("ioc_value", "ioc", "url", "domain", "host", "hostname", "name")
_HEADER_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_ -]*")
_CSV_RUNS = _runs(_NAME)  # a column of names only
# A value the fast path takes: a name, name:port or name/path, or a URL with such a host.
# Anything else (upper case, user@, an address, …) goes to _csv_value, which _host() serves
# with the same result for what the fast path takes (tests compare the two).
_CSV_FAST_HOSTS = re.compile(
    rf"^(?:({_NAME})(?::[0-9]+)?(?:[/?#][^\n]*)?"
    rf"|[a-z][a-z0-9+.-]*://({_NAME})(?::[0-9]*)?(?:[/?#][^\n]*)?"
    r"|[^\n]*)$", re.M)
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_IOC_TYPES = frozenset({"domain", "url", "hostname"})


def _csv_fields(line: str) -> list[str]:
    try:
        row = next(csv.reader([line], skipinitialspace=True), [])
    except csv.Error:  # a carriage return in it: good enough to look at a header
        row = line.split(",")
    return [f.strip() for f in row]


def _is_header(fields: list[str], least: int) -> bool:
    return len(fields) >= least and all(_HEADER_FIELD.fullmatch(f) for f in fields)


def _csv_layout(text: str) -> tuple[list[str] | None, int, int]:
    """(header, offset of the first data line, its number). The header is the last comment
    line before the data if it reads as column names (abuse.ch writes it that way), else the
    first line if none of its fields has a dot (a data row has its name)."""
    pos, lineno, end = 0, 1, len(text)
    last_comment = None
    while pos < end:
        nl = text.find("\n", pos)
        s = text[pos:nl].strip()
        if s and s[0] != "#":
            break
        if s:
            last_comment = s
        pos, lineno = nl + 1, lineno + 1
    else:
        return None, end, lineno
    first = _csv_fields(text[pos:nl])
    if last_comment is not None:
        header = _csv_fields(last_comment.lstrip("#").strip())
        if _is_header(header, 2):
            if [f.lower() for f in first] == [h.lower() for h in header]:
                return header, nl + 1, lineno + 1  # written twice: skip the copy
            return header, pos, lineno
    if _is_header(first, 1) and not any("." in f for f in first):
        return first, nl + 1, lineno + 1
    return None, pos, lineno


def _csv_column(path: str, header: list[str] | None, first_row: list[str],
                column: str | None) -> int:
    names = [h.lower() for h in header] if header else None
    shown = ", ".join(header) if header else ""
    if column is not None:
        wanted = column.strip()
        if wanted.isdigit():
            index = int(wanted) - 1
            if index < 0 or (header and index >= len(header)):
                raise FeedFormatError(
                    f"{path}: no column {wanted} (the header has {len(header or [])}: {shown})"
                    if header else f"{path}: columns are numbered from 1"
                )
            return index
        if names is None:
            raise FeedFormatError(f"{path}: no header line; give the column as a number")
        if wanted.lower() not in names:
            raise FeedFormatError(f"{path}: no column {wanted!r} (columns: {shown})")
        return names.index(wanted.lower())
    if names is not None:
        for candidate in NAME_COLUMNS:
            if candidate in names:
                return names.index(candidate)
        raise FeedFormatError(
            f"{path}: cannot tell which column holds the names (columns: {shown}); "
            "choose one with --column"
        )
    if len(first_row) == 1:
        return 0
    raise FeedFormatError(
        f"{path}: no header line and {len(first_row)} columns; choose one with --column"
    )


def _host(value: str) -> str | None:
    """The host a CSV value names: itself, a URL's host (with a scheme or starting with //),
    host:port's host, host/path's host. None for a URL without one; ValueError for a URL
    urllib cannot split."""
    if _URL_SCHEME.match(value) or value.startswith("//"):
        return urlsplit(value).hostname
    host = re.split(r"[/?#]", value, maxsplit=1)[0]
    if host.startswith("[") and "]" in host:
        return host[1 : host.index("]")]
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        if port.isdigit():
            return name
    return host


def _csv_value(b: _Builder, cell: str, lineno: int, attrs: _Attrs | None = None) -> None:
    value = cell.strip()
    if not value:
        b.refuse(lineno, "empty value", cell or "\"\"")
        return
    try:
        host = _host(value)
    except ValueError:
        b.refuse(lineno, "not a valid URL", value)
        return
    if not host:
        b.refuse(lineno, "URL without a host", value)
    elif _is_ip(host):
        b.skip("IP address host")
    elif len(host.split()) > 1:
        b.refuse(lineno, "several words, not one name", value)
    else:
        b.name(host, lineno, value, attrs)


class _Semantic:
    """The kind, match, action and category columns of a file export_feed wrote."""

    def __init__(self, names: list[str]):
        def col(name: str) -> int | None:
            return names.index(name) if name in names else None

        self.kind, self.match = col("kind"), col("match")
        self.action, self.category = col("action"), col("category")

    def attrs(self, b: _Builder, row: list[str], lineno: int) -> _Attrs | None:
        def cell(index: int | None) -> str:
            return row[index].strip() if index is not None and index < len(row) else ""

        kind = cell(self.kind).lower() or BLOCK
        match = cell(self.match).lower() or EXACT
        action_text = cell(self.action)
        category_text = cell(self.category)
        value = ",".join(row)
        if kind not in KINDS:
            b.refuse(lineno, f"unknown kind {kind!r} (block, allow)", value)
            return None
        if match not in MATCHES:
            b.refuse(lineno, f"unknown match {match!r} ({', '.join(MATCHES)})", value)
            return None
        action = None
        if action_text and action_text.lower() != "default":
            try:
                action = _canonical_action(action_text)
            except ValueError:
                b.refuse(lineno, f"unknown action {action_text!r} ({', '.join(ACTIONS)})", value)
                return None
        if kind == ALLOW and action is not None:
            b.refuse(lineno, "an allow entry takes no action", value)
            return None
        category = None
        if category_text:
            try:
                category = normalize_category(category_text)
            except CatalogError:
                b.refuse(lineno, f"invalid category {category_text!r}", value)
                return None
        return (kind, match, action, category)


def _parse_csv(b: _Builder, text: str, column: str | None) -> None:
    header, start, first_line = _csv_layout(text)
    end = _csv_end(text, start)
    if end <= start:
        return
    nl = text.find("\n", start, end)
    first_raw = text[start : nl if nl >= 0 else end]
    col = _csv_column(b.path, header, _csv_fields(first_raw), column)
    names = [h.lower() for h in header] if header else []
    type_col = None
    if "ioc_type" in names and names[col] in ("ioc_value", "ioc"):
        type_col = names.index("ioc_type")
    semantic = _Semantic(names) if "name" in names and "kind" in names else None

    if semantic is None:
        picked = _pick_by_pattern(text, start, end, first_raw, col, type_col)
        if picked is not None:
            _csv_picked(b, picked, range(first_line, first_line + len(picked)), type_col)
            return
    # Comment lines among the rows: csv.reader must not see them (a quote in a comment
    # would swallow the next lines), and the rows keep their line numbers.
    lines = text[start:end].split("\n")
    numbers = None
    if any(line[:1] in ("#", " ", "\t") for line in lines):
        kept = [i for i, line in enumerate(lines) if not line.lstrip().startswith("#")]
        lines = [lines[i] for i in kept]
        numbers = [first_line + i for i in kept]
    if semantic is None:
        picked = _pick_by_reader(lines, col, type_col)
        if picked is not None:
            _csv_picked(b, picked, numbers or range(first_line, first_line + len(picked)),
                        type_col)
            return
    _csv_rows(b, lines, numbers, first_line, col, type_col, semantic)


def _csv_end(text: str, start: int) -> int:
    """Where the data lines end: before the comment and blank lines after the last row
    (ThreatFox ends with "# Number of entries: …"); those in the middle cost the fast path."""
    end = len(text)
    while end > start:
        cut = text.rfind("\n", start, end - 1) + 1  # the start of the last line
        last = text[max(cut, start) : end].strip()
        if last and not last.startswith("#"):
            return end - 1 if text[end - 1] == "\n" else end
        end = max(cut, start)
    return start


# One CSV field as csv.reader reads it, when it holds no quote and no line break. Rows of
# such fields only are read by one pattern; any other row makes the reader do the file.
_CSV_FIELD = r'(?:"[^"\r\n]*"|[^",\r\n]*)'


def _pick_by_pattern(text: str, start: int, end: int, first_raw: str, col: int,
                     type_col: int | None) -> list | None:
    """The chosen cell of every data line (with the ioc_type cell: pairs) by one pattern over
    the text, or None unless every line gave one. The cell is quoted as on the first row."""
    wanted = [col] if type_col is None else [col, type_col]
    fields = re.match(rf"^(?:{_CSV_FIELD},[ ]*)*{_CSV_FIELD}", first_raw)
    raw = re.findall(rf"({_CSV_FIELD})(?:,[ ]*|$)", fields.group(0)) if fields else []
    if max(wanted) >= len(raw):
        return None
    parts = []
    for i in range(max(wanted) + 1):
        if i in wanted:
            parts.append(r'"([^"\r\n]*)"' if raw[i].startswith('"') else r'([^",\r\n]*)')
        else:
            parts.append(_CSV_FIELD)
    # The match runs over every field to the line's end, so a quote the reader would take
    # as opening a field over several lines makes no match; and findall goes on from the
    # next line's start. A comment, blank or indented line never matches: the count below
    # then sends the file to the reader.
    pattern = re.compile(
        "^(?![#\\s])" + ",[ ]*".join(parts) + rf"(?:,[ ]*{_CSV_FIELD})*$", re.M
    )
    found = pattern.findall(text, start, end)
    if len(found) != text.count("\n", start, end) + 1:
        return None
    if type_col is not None and type_col < col:
        found = [(value, ioc_type) for ioc_type, value in found]
    return found


def _pick_by_reader(lines: list[str], col: int, type_col: int | None) -> list | None:
    """The same by csv.reader, the other cells freed at once; None when a row is short or
    blank or a record spans lines (the row by row path says which)."""
    reader = csv.reader(lines, skipinitialspace=True)
    try:
        if type_col is None:
            picked = [row[col] for row in reader]
        else:
            picked = [(row[col], row[type_col]) for row in reader]
    except (IndexError, csv.Error):
        return None
    if len(picked) != len(lines):
        return None
    if col == 0:  # a blank or whitespace-only line reads as one blank cell
        values = picked if type_col is None else [value for value, _ in picked]
        if "" in values or any(map(str.isspace, values)):
            return None
    return picked


def _csv_picked(b: _Builder, picked: list, numbers: Iterable[int], type_col: int | None) -> None:
    """Cells of the chosen column, one per row, in the runs a plain list has."""
    if type_col is not None:
        values, numbers = _ioc_rows(b, picked, numbers)
    else:
        values = picked
    numbers = numbers if isinstance(numbers, list) else list(numbers)
    if not values:
        return
    joined = "\n".join(values)
    if ":" not in joined and "/" not in joined:  # names only: runs of them, as in plain
        for index, run, value in _split_runs(joined + "\n", _CSV_RUNS):
            if run is None:
                _csv_value(b, value, numbers[index - 1])
            else:
                _csv_hosts(b, run[:-1].split("\n"), values, numbers, index - 1)
        return
    # URLs, host:port: one pattern gives each value's host where the fast path takes it
    # (the name in the first group, a URL's host in the second), "" where it does not.
    hosts = [name or url for name, url in _CSV_FAST_HOSTS.findall(joined)]
    _csv_hosts(b, hosts, values, numbers, 0)


def _ioc_rows(b: _Builder, picked: list[tuple[str, str]],
              numbers: Iterable[int]) -> tuple[list[str], Iterable[int]]:
    """The values (and line numbers) of the rows whose ioc_type is one we take; the others
    counted by type. Done in C-level passes: a ThreatFox export is mostly other types."""
    types = list(map(itemgetter(1), picked))
    taken = list(map(_IOC_TYPES.__contains__, types))
    others = Counter(compress(types, map(not_, taken)))
    if any(t.strip().lower() in _IOC_TYPES for t in others):  # " Domain", by hand: slowly
        taken = [t.strip().lower() in _IOC_TYPES for t in types]
        others = Counter(t for t, ok in zip(types, taken, strict=True) if not ok)
    for ioc_type, count in others.items():
        ioc_type = ioc_type.strip().lower()
        b.skip("IP address host" if ioc_type == "ip:port" else f"ioc_type {ioc_type}", count)
    if not others:
        return list(map(itemgetter(0), picked)), numbers
    return (list(compress(map(itemgetter(0), picked), taken)),
            list(compress(numbers, taken)))


def _csv_hosts(b: _Builder, hosts: list[str], values: list[str], numbers: list[int],
               offset: int) -> None:
    """Hosts of values[offset:…] that the fast path took ("" where it did not): the names
    go to the builder, the others and suspects to _csv_value."""
    block = "\n".join(hosts) + "\n"
    start = 0
    for i in [*_suspects(block, hosts, (("\n\n", 1),)), len(hosts)]:
        b.names += hosts[start:i]
        b.lines += numbers[offset + start : offset + i]
        if i < len(hosts):
            _csv_value(b, values[offset + i], numbers[offset + i])
        start = i + 1


def _csv_rows(b: _Builder, lines: list[str], numbers: list[int] | None, first_line: int,
              col: int, type_col: int | None, semantic: _Semantic | None) -> None:
    """Row by row: blank rows, short rows, records over several lines, the columns of an
    export."""
    reader = csv.reader(lines, skipinitialspace=True)
    consumed = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:  # a carriage return inside a field: the reader goes on after it
            line = numbers[consumed] if numbers is not None else first_line + consumed
            b.refuse(line, "unreadable CSV row (a line break inside a field)", lines[consumed])
            consumed = reader.line_num
            continue
        start, consumed = consumed, reader.line_num
        if not row or not lines[start].strip():  # a blank line
            continue
        lineno = numbers[start] if numbers is not None else first_line + start
        if col >= len(row):
            b.refuse(lineno, f"no column {col + 1} (the row has {len(row)})", ",".join(row))
            continue
        cell = row[col]
        if type_col is not None:
            ioc_type = row[type_col].strip().lower() if type_col < len(row) else ""
            if ioc_type not in _IOC_TYPES:
                b.skip("IP address host" if ioc_type == "ip:port" else f"ioc_type {ioc_type}")
                continue
        attrs = None
        if semantic is not None:
            attrs = semantic.attrs(b, row, lineno)
            if attrs is None:
                continue
        _csv_value(b, cell, lineno, attrs)


# -- rpz -------------------------------------------------------------------------------------
_RPZ_POLICY_TEXT = {
    ".": (BLOCK, "nxdomain"),
    "*.": (BLOCK, "nodata"),
    "rpz-drop.": (BLOCK, "drop"),
    "rpz-passthru.": (ALLOW, None),
    "rpz-tcp-only.": (BLOCK, "tc"),
}
_RPZ_POLICY = {dns.name.from_text(t): p for t, p in _RPZ_POLICY_TEXT.items()}
# Owners whose last label (next to the apex) says they are not query names.
_NOT_QNAME = {f"rpz-{t}".encode(): f"rpz-{t} trigger" for t in ("ip", "nsdname", "nsip",
                                                                  "client-ip")}
_RPZ_DEFAULT = (BLOCK, EXACT, "nxdomain", None)

_TTL_CLASS = (r"(?:[0-9]{1,9}[ \t]+(?:(?i:in)[ \t]+)?"
              r"|(?i:in)[ \t]+(?:[0-9]{1,9}[ \t]+)?)?")
_RPZ_TARGET = r"(?:\.|\*\.|rpz-drop\.|rpz-passthru\.|rpz-tcp-only\.)"
_RPZ_LINE = (rf"(?:\*\.)?{_NAME}[ \t]+{_TTL_CLASS}(?i:cname)[ \t]+{_RPZ_TARGET}"
             r"[ \t]*(?:;[^\n]*)?")
_RPZ_RUNS = _runs(_RPZ_LINE)
_RPZ_PARTS = re.compile(rf"^(\S+)[^\n]*?[ \t]({_RPZ_TARGET})[ \t]*(?:;[^\n]*)?$", re.M)


def _paren_depth(line: str) -> int:
    """How much a zone-file line opens parentheses, outside quotes and comments."""
    if "(" not in line and ")" not in line:
        return 0
    depth, quoted, escaped = 0, False, False
    for c in line:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif c == ";":
            break
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
    return depth


class _Origins(dns.transaction.TransactionManager):
    """Names stay absolute (the apex is decided after reading) and nothing is out of zone."""

    def origin_information(self):
        return dns.name.root, False, dns.name.root

    def get_class(self):
        return dns.rdataclass.IN


class _Recorder(dns.transaction.Transaction):
    """Where dnspython's zone-file Reader puts what it reads: every record, with the line
    it ended on, in order. Nothing is merged: duplicates and conflicts stay visible."""

    def __init__(self, tok: dns.tokenizer.Tokenizer):
        super().__init__(_Origins())
        self.tok = tok
        self.records: list[tuple[int, dns.name.Name, object]] = []

    def add(self, *args) -> None:
        name, _ttl, rdata = args  # how the Reader calls it
        # The rdata has consumed its line end: the line it ended on is the one before.
        self.records.append((self.tok.line_number - 1, name, rdata))

    def _set_origin(self, origin: dns.name.Name) -> None:
        pass  # on $ORIGIN; the scan before reading keeps the first one


class _Zone:
    """The reading of one RPZ file: fast lines, and the rest through dnspython."""

    def __init__(self, b: _Builder, text: str):
        self.b = b
        # (first line, $ORIGIN, owners or (owner, policy) pairs) for each run of fast lines
        self.fast: list[tuple[int, dns.name.Name, list]] = []
        self.slow: list[str] = []  # the zone text dnspython reads, a line each
        self.slow_lines: list[int] = []  # the file's number for each
        self.first_origin: dns.name.Name | None = None
        self._scan(text)

    def _scan(self, text: str) -> None:
        origin = dns.name.root
        depth = 0
        last_fast_owner: str | None = None  # absolute owner of the last record, if fast
        pos, lineno, end = 0, 1, len(text)
        while pos < end:
            if depth == 0:
                m = _RPZ_RUNS.match(text, pos)
                run = m.group(1)
                if run:
                    last_fast_owner = self._fast_run(run, lineno, origin)
                    lineno += run.count("\n")
                    pos = m.end(1)
                    if pos >= end:
                        break
            nl = text.find("\n", pos)
            line = text[pos:nl]
            pos = nl + 1
            stripped = line.strip()
            if depth == 0:
                if not stripped or stripped[0] == ";":
                    lineno += 1
                    continue
                if line[0] in " \t":
                    if last_fast_owner is not None:  # the Reader must see whose record it is
                        line = last_fast_owner + line
                elif stripped[0] == "$":
                    origin = self._directive(stripped, origin)
                else:
                    last_fast_owner = None
            depth = max(0, depth + _paren_depth(line))
            self.slow.append(line)
            self.slow_lines.append(lineno)
            lineno += 1

    def _directive(self, stripped: str, origin: dns.name.Name) -> dns.name.Name:
        words = stripped.split(";", 1)[0].split()
        if words[0].upper() == "$ORIGIN" and len(words) > 1:
            try:
                origin = dns.name.from_text(words[1], origin)
            except dns.exception.DNSException:
                return origin  # the Reader will say what is wrong
            if self.first_origin is None:
                self.first_origin = origin
        return origin

    def _fast_run(self, run: str, lineno: int, origin: dns.name.Name) -> str | None:
        """Keep a run of fast lines for later (the apex is not known yet): its owners (and
        policies) by line. Suspects go to dnspython. Returns the absolute owner of the last
        line, if it stays a fast one."""
        count = run.count("\n")
        if ("*" not in run and ";" not in run and "\t" not in run
                and run.count(" ") == 2 * count and run.count(" CNAME .\n") == count):
            block = run.replace(" CNAME .\n", "\n")  # all "name CNAME .", as feeds write
            items: list = block[:-1].split("\n")
            owners = items
        else:
            items = _RPZ_PARTS.findall(run)  # (owner, policy)
            owners = [owner for owner, _ in items]
            names = [owner[2:] if owner[0] == "*" else owner for owner in owners]
            block = "\n".join(names) + "\n"
        suspects = _suspects(block, block[:-1].split("\n"), (("rpz-", 0),))
        lines = run[:-1].split("\n") if suspects else []
        start = 0
        for i in [*suspects, count]:
            if i > start:
                self.fast.append((lineno + start, origin, items[start:i]))
            if i < count:
                self.slow.append(lines[i])
                self.slow_lines.append(lineno + i)
            start = i + 1
        if suspects and suspects[-1] == count - 1:
            return None  # the last line went to dnspython with its owner written out
        owner = owners[-1]
        return f"{owner}." if origin == dns.name.root else f"{owner}.{origin}"

    def _line(self, reduced: int) -> int:
        """The file's line number of a line of the text dnspython read."""
        if not self.slow_lines:
            return 1
        return self.slow_lines[min(max(reduced, 1), len(self.slow_lines)) - 1]

    def read(self, path: str) -> None:
        tok = dns.tokenizer.Tokenizer(
            "\n".join(self.slow) + "\n", path, idna_codec=dns.name.IDNA_2008_Practical
        )
        txn = _Recorder(tok)
        reader = dns.zonefile.Reader(tok, dns.rdataclass.IN, txn, allow_include=False,
                                     default_ttl=0)
        try:
            reader.read()
        except dns.exception.SyntaxError as e:
            # The Reader writes "path:line: detail", with its line in the text it read.
            where, _, detail = str(e).removeprefix(f"{path}:").partition(": ")
            line = self._line(int(where)) if where.isdigit() else self._line(tok.line_number)
            raise FeedFormatError(f"{path}:{line}: {detail or e}") from None
        except dns.exception.DNSException as e:
            raise FeedFormatError(f"{path}:{self._line(tok.line_number)}: {e}") from None
        soa = next((name for _, name, rd in txn.records if rd.rdtype == dns.rdatatype.SOA),
                   None)
        apex = soa or self.first_origin or dns.name.root
        self._entries(apex, txn.records)

    def _entries(self, apex: dns.name.Name, records: list) -> None:
        """Classify the records dnspython read, and hand them with the fast runs to the
        builder in file order."""
        b = self.b
        slow = []  # (name text, line, value, attrs), in file order
        local_data: dict[dns.name.Name, set] = {}
        for reduced, owner, rdata in records:
            line = self._line(reduced)
            rdtype = rdata.rdtype
            if rdtype == dns.rdatatype.CNAME:
                target = rdata.target
                policy = _RPZ_POLICY.get(target)
            else:
                target = policy = None
            trigger = self._trigger(apex, owner, line, rdtype)
            if trigger is None:
                continue
            text, value, match = trigger
            if rdtype == dns.rdatatype.CNAME:
                if policy is None and target == owner.relativize(apex).derelativize(
                    dns.name.root
                ):
                    policy = (ALLOW, None)  # the old passthru: a CNAME to the name itself
                if policy is None:
                    b.skip("CNAME rewrite")
                    continue
                kind, action = policy
                slow.append((text, line, value, (kind, match, action, None)))
            elif rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                seen = local_data.setdefault(owner, set())
                if rdata in seen:
                    b.duplicates += 1
                elif not seen:
                    slow.append((text, line, value, (BLOCK, match, "sinkhole", None)))
                seen.add(rdata)
            else:
                b.skip(f"{dns.rdatatype.to_text(rdtype)} record")
        queue = iter(slow)
        pending = next(queue, None)
        for first, origin, items in self.fast:
            while pending is not None and pending[1] < first:
                b.name(*pending)
                pending = next(queue, None)
            self._fast_entries(apex, first, origin, items)
        while pending is not None:
            b.name(*pending)
            pending = next(queue, None)

    def _trigger(self, apex, owner, line, rdtype) -> tuple[str, str, str] | None:
        """(name, text as written, match) of a QNAME trigger, or None when the record is
        not one (reported or counted here)."""
        b = self.b
        if not owner.is_subdomain(apex):
            b.refuse(line, f"outside the zone {apex}", owner.to_text())
            return None
        relative = owner.relativize(apex)
        labels = relative.labels
        if not labels:
            if rdtype not in (dns.rdatatype.SOA, dns.rdatatype.NS):
                b.skip("record at the zone apex")
            return None
        trigger = _NOT_QNAME.get(labels[-1].lower())
        if trigger is not None:
            b.skip(trigger)
            return None
        value = relative.to_text()
        if labels[0] == b"*":
            if len(labels) == 1:
                b.refuse(line, "a wildcard for the whole zone", value)
                return None
            return dns.name.Name(labels[1:]).to_text(), value, BELOW
        return value, value, EXACT

    def _fast_entries(self, apex, first, origin, items) -> None:
        """Entries of a run of fast lines: owners of "name CNAME ." lines, or (owner, policy)
        pairs."""
        b = self.b
        if origin == apex and items and isinstance(items[0], str):
            b.run(items, first)
            return
        pairs = [(item, ".") for item in items] if isinstance(items[0], str) else items
        if origin != apex:  # under another $ORIGIN: name by name, as dnspython's would be
            for i, (owner, target) in enumerate(pairs):
                name = dns.name.from_text(owner, origin)
                trigger = self._trigger(apex, name, first + i, dns.rdatatype.CNAME)
                if trigger is not None:
                    text, value, match = trigger
                    kind, action = _RPZ_POLICY_TEXT[target]
                    b.name(text, first + i, value, (kind, match, action, None))
            return
        names_append, lines_append = b.names.append, b.lines.append
        for i, (owner, target) in enumerate(pairs):
            if target == "." and owner[0] != "*":
                names_append(owner)
                lines_append(first + i)
                continue
            kind, action = _RPZ_POLICY_TEXT[target]
            if owner[0] == "*":
                b.add(owner[2:], first + i, owner, (kind, BELOW, action, None))
            else:
                b.add(owner, first + i, owner, (kind, EXACT, action, None))


def _parse_rpz(b: _Builder, text: str) -> None:
    zone = _Zone(b, text)
    zone.read(b.path)


# -- detection -------------------------------------------------------------------------------
_DETECT_BYTES = 64 * 1024
_DETECT_LINES = 50
_RR_WORDS = frozenset({"SOA", "NS", "CNAME", "A", "AAAA", "TXT", "DNAME", "MX", "PTR"})
_NAME_LIKE = re.compile(r"[\w*.-]+")


def _classify(line: str) -> str | None:
    """The format a data line (not a comment) belongs to, or None."""
    s = re.split(r"[ \t]#", line, maxsplit=1)[0].strip()  # a trailing comment
    if not s:
        return None
    if s.startswith(("||", "@@", "|", "/")) or any(c in s for c in _COSMETIC) or (
        s.endswith("^") or "^$" in s
    ):
        return "adblock"
    if s[0] in "{[<":
        return None  # JSON, HTML, XML: no feed format of ours
    if s[0] == "$" or s[0] == "@":
        return "rpz"
    words = s.split()
    if line[0] in " \t" and words[0].upper() in _RR_WORDS | {"IN"}:
        return "rpz"  # a record of the last owner
    if len(words) > 1:
        if _is_ip(words[0]):
            return "hosts"
        if any(w.upper() in _RR_WORDS for w in words[1:4]):
            return "rpz"
    if "," in s:
        return "csv"
    if len(words) == 1 and _NAME_LIKE.fullmatch(s):
        return "plain"
    return None


def _detect(text: str) -> str | None:
    votes: dict[str, int] = {}
    comment = None
    lines = text.split("\n", _DETECT_LINES * 20)
    seen = 0
    for i, line in enumerate(lines[: _DETECT_LINES * 20]):
        s = line.strip()
        if not s:
            continue
        if s.lower().startswith(("[adblock", "[ublock")):
            return "adblock"
        if s[0] in "!;":
            comment = comment or ("adblock" if s[0] == "!" else "rpz")
            continue
        if s[0] == "#" and not any(c in s for c in _COSMETIC):
            comment = comment or "plain"
            header = _csv_fields(s.lstrip("#").strip())
            following = next((x for x in lines[i + 1 :] if x.strip()), "")
            if _is_header(header, 2) and not following.lstrip().startswith("#"):
                return "csv"  # abuse.ch's commented header, just before the data
            continue
        kind = _classify(line)
        if kind is not None:
            votes[kind] = votes.get(kind, 0) + 1
        seen += 1
        if seen >= _DETECT_LINES:
            break
    if not votes:
        # No data line at all: an empty feed is a valid one. Only lines of no format: none.
        return None if seen else comment or "plain"
    return max(votes, key=lambda k: votes[k])  # the first to get the most, on a tie


def detect_format(path: Path) -> str:
    """The format of a feed file, from its first lines."""
    fmt = _detect(_read_text(path, _DETECT_BYTES)[:_DETECT_BYTES])
    if fmt is None:
        raise FeedFormatError(
            f"{path}: cannot tell the feed format ({', '.join(FORMATS)}); give it with --format"
        )
    return fmt


# -- parse -----------------------------------------------------------------------------------
def parse_feed(path: Path, fmt: str = "auto", column: str | None = None) -> ParsedFeed:
    """Read a feed file. Lines that cannot be used are in .bad; a file that cannot be read
    as the format at all raises FeedFormatError."""
    if fmt != "auto" and fmt not in FORMATS:
        raise FeedFormatError(f"unknown feed format {fmt!r} ({', '.join(FORMATS)})")
    text = _read_text(path)
    if fmt == "auto":
        fmt = _detect(text[:_DETECT_BYTES])
        if fmt is None:
            raise FeedFormatError(
                f"{path}: cannot tell the feed format ({', '.join(FORMATS)}); "
                "give it with --format"
            )
    if column is not None and fmt != "csv":
        raise FeedFormatError(f"{path}: a column can only be chosen in a CSV feed, not {fmt}")
    with _gc_paused():
        if fmt == "rpz":
            b = _Builder(str(path), _RPZ_DEFAULT)
            _parse_rpz(b, text)
        else:
            b = _Builder(str(path))
            if fmt == "plain":
                _parse_lines(b, text, _PLAIN_RUNS, str, _plain_line)
            elif fmt == "hosts":
                _parse_lines(b, text, _HOSTS_RUNS, _hosts_names, _hosts_line,
                             (("localhost", 0),))
            elif fmt == "adblock":
                b.default = (BLOCK, SUBTREE, None, None)  # what ||name^ says
                _parse_lines(b, text, _ADBLOCK_RUNS, _adblock_names, _adblock_line)
            else:
                _parse_csv(b, text, column)
        return b.finish(fmt)


# -- export ----------------------------------------------------------------------------------
_TRIGGER_LABELS = frozenset(t.decode() for t in _NOT_QNAME)
_RPZ_ACTION_TARGET = {action: t for t, (kind, action) in _RPZ_POLICY_TEXT.items()
                      if kind == BLOCK}
RPZ_ORIGIN = "rpz.ccxdp.invalid"


def _cannot(fmt: str, e: ExportEntry, what: str, hint: str = "use csv") -> FeedFormatError:
    return FeedFormatError(f"{fmt} cannot hold {e.name} ({what}); {hint}")


def _check_entry(e: ExportEntry, fmt: str) -> None:
    """What every format needs of an entry; and names a format would read as something
    else (an address in all but RPZ, hosts-file boilerplate in hosts)."""
    if fmt != "rpz" and _is_ip(e.name):
        raise _cannot(fmt, e, f"{fmt} reads it as an IP address", "use rpz")
    if fmt == "hosts" and (e.name in _BOILERPLATE or e.name.startswith("ip6-")):
        raise _cannot(fmt, e, "hosts files skip it as boilerplate", "use plain, rpz or csv")
    if e.kind not in KINDS:
        raise FeedFormatError(f"{e.name}: unknown kind {e.kind!r}")
    if e.match not in MATCHES:
        raise FeedFormatError(f"{e.name}: unknown match {e.match!r}")
    if e.action is not None and e.action not in ACTION_NAMES:
        raise FeedFormatError(f"{e.name}: unknown action {e.action!r}")
    if e.kind == ALLOW and e.action is not None:
        raise FeedFormatError(f"{e.name}: an allow entry takes no action")


def _plain_lines(entries: Iterable[ExportEntry]) -> Iterator[str]:
    prefix = {EXACT: "", SUBTREE: ".", BELOW: "*."}
    for e in entries:
        _check_entry(e, "plain")
        if e.kind != BLOCK:
            raise _cannot("plain", e, "an allow entry")
        if e.action is not None:
            raise _cannot("plain", e, f"action {e.action}")
        if e.category is not None:
            raise _cannot("plain", e, f"category {e.category}")
        yield prefix[e.match] + e.name


def _hosts_lines(entries: Iterable[ExportEntry]) -> Iterator[str]:
    for e in entries:
        _check_entry(e, "hosts")
        if e.kind != BLOCK:
            raise _cannot("hosts", e, "an allow entry")
        if e.match != EXACT:
            raise _cannot("hosts", e, f"match {e.match}: hosts lists exact names",
                          "use plain, rpz or csv")
        if e.action is not None:
            raise _cannot("hosts", e, f"action {e.action}")
        if e.category is not None:
            raise _cannot("hosts", e, f"category {e.category}")
        yield f"0.0.0.0 {e.name}"


def _adblock_lines(entries: Iterable[ExportEntry]) -> Iterator[str]:
    yield "[Adblock Plus 2.0]"
    for e in entries:
        _check_entry(e, "adblock")
        if e.match != SUBTREE:
            raise _cannot("adblock", e, f"match {e.match}: ||name^ is a subtree",
                          "use plain, rpz or csv")
        if e.action is not None:
            raise _cannot("adblock", e, f"action {e.action}")
        if e.category is not None:
            raise _cannot("adblock", e, f"category {e.category}")
        yield f"@@||{e.name}^" if e.kind == ALLOW else f"||{e.name}^"


def _rpz_lines(entries: Iterable[ExportEntry], origin: str, serial: int) -> Iterator[str]:
    yield f"$ORIGIN {origin}."
    yield "$TTL 300"
    yield f"@ SOA localhost. hostmaster.localhost. {serial} 3600 600 86400 300"
    yield "@ NS localhost."
    for e in entries:
        _check_entry(e, "rpz")
        if e.category is not None:
            raise _cannot("rpz", e, f"category {e.category}")
        if e.name.rsplit(".", 1)[-1] in _TRIGGER_LABELS:
            raise _cannot("rpz", e, "its last label names an RPZ trigger")
        if e.kind == ALLOW:
            rdata = ["CNAME rpz-passthru."]
        elif e.action is None:
            raise _cannot("rpz", e, "no action: RPZ gives every name its own",
                          "give the action the entry has in effect")
        else:
            action = _canonical_action(e.action)
            if action == "sinkhole":
                rdata = ["A 0.0.0.0", "AAAA ::"]
            elif action in _RPZ_ACTION_TARGET:
                rdata = [f"CNAME {_RPZ_ACTION_TARGET[action]}"]
            else:
                raise _cannot("rpz", e, f"action {action}: RPZ has no such policy")
        owners = {EXACT: [e.name], BELOW: [f"*.{e.name}"],
                  SUBTREE: [e.name, f"*.{e.name}"]}[e.match]
        for owner in owners:
            for rd in rdata:
                yield f"{owner} {rd}"


def _csv_cell(value: str | None) -> str:
    if value is None:
        return ""
    if any(c in value for c in ',"\n\r') or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


def _csv_lines(entries: Iterable[ExportEntry]) -> Iterator[str]:
    yield "name,kind,match,action,category"
    for e in entries:
        _check_entry(e, "csv")
        action = _canonical_action(e.action) if e.action is not None else None
        cells = (e.name, e.kind, e.match, action, e.category)
        yield ",".join(map(_csv_cell, cells))


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
    "ACTIONS", "FORMATS", "NAME_COLUMNS", "BadLine", "ExportEntry", "FeedEntry",
    "FeedFormatError", "ParsedFeed", "detect_format", "export_feed", "parse_feed",
]
