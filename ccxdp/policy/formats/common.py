"""What every feed format shares: the entry types, reading a file as UTF-8, the builder that
turns lines into entries (duplicates, conflicts, bad lines), and the fast path over runs of
lines already in normalized form."""

from __future__ import annotations

import codecs
import gc
import gzip
import ipaddress
import re
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice, repeat
from pathlib import Path

from ccxdp.datapath.settings import ACTION_NAMES, SettingError, parse_action
from ccxdp.errors import CcxdpError, InvalidNameError
from ccxdp.policy.catalog import ALLOW, BLOCK, KINDS, MATCHES
from ccxdp.policy.names import normalize, unusual_a_label

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
    kept: dict[str, int] = field(default_factory=dict)  # unusual names listed, by what
    column: str | None = None  # CSV: the column the names were read from (header or number)
    # The first SKIPPED_LINES_KEPT skipped lines, in file order (``skipped`` counts them all)
    skipped_lines: list[BadLine] = field(default_factory=list)

@dataclass(frozen=True)
class ExportEntry:
    name: str  # normalized
    kind: str = BLOCK
    match: str = EXACT
    action: str | None = None  # None: the configured default action
    category: str | None = None


# -- reading ---------------------------------------------------------------------------------
MAX_DECOMPRESSED = 1 << 30  # a compressed feed may hold this much: a bomb is refused


def read_feed_bytes(path: Path, limit: int | None = None) -> bytes:
    """The file's bytes, a gzip file's or a one-member zip archive's contents transparently
    (blocklist projects publish both), at most ``limit`` bytes when given."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(0)
            if head[:2] == b"\x1f\x8b":
                return _bounded(path, gzip.GzipFile(fileobj=f), limit, "gzip")
            if head == b"PK\x03\x04":
                with zipfile.ZipFile(f) as z:
                    members = [m for m in z.infolist() if not m.is_dir()]
                    if len(members) != 1:
                        raise FeedFormatError(
                            f"{path}: a zip archive of {len(members)} files; a feed is one")
                    with z.open(members[0]) as member:
                        return _bounded(path, member, limit, "zip")
            return f.read() if limit is None else f.read(limit)
    except OSError as e:
        raise FeedFormatError(f"{path}: cannot read: {e.strerror or e}") from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise FeedFormatError(f"{path}: a damaged or truncated archive: {e}") from None


def _bounded(path: Path, stream, limit: int | None, kind: str) -> bytes:
    data = stream.read((limit if limit is not None else MAX_DECOMPRESSED) + 1)
    if limit is not None:
        return data[:limit]
    if len(data) > MAX_DECOMPRESSED:
        raise FeedFormatError(
            f"{path}: the {kind} file holds more than {MAX_DECOMPRESSED >> 20} MiB: refused")
    return data


def _read_text(path: Path, limit: int | None = None) -> str:
    """The file as text with LF line ends, ending in one. Bytes that are not UTF-8 become
    U+FFFD, which the careful paths report as "not UTF-8"."""
    data = read_feed_bytes(path, limit)
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


# Skipped lines kept to be listed (--show-skipped): a feed of names and addresses skips
# tens of thousands, and the counts by reason say the rest.
SKIPPED_LINES_KEPT = 1000


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
        self.skipped_lines: list[BadLine] = []
        self.duplicates = 0
        self.column: str | None = None

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

    def skip(self, reason: str, line: int, value: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.skipped_lines) < SKIPPED_LINES_KEPT:
            self.skipped_lines.append(BadLine(self.path, line, reason, _cut(value)))

    def skip_many(self, counts: dict[str, int], lines: Iterable[tuple[int, str, str]]) -> None:
        """Lines skipped in bulk, ``counts`` by reason; ``lines`` yields their (line, reason,
        value) in file order, taken only as far as the kept list has room."""
        for reason, count in counts.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count
        room = max(SKIPPED_LINES_KEPT - len(self.skipped_lines), 0)
        self.skipped_lines += (BadLine(self.path, n, reason, _cut(v))
                               for n, reason, v in islice(lines, room))

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
        self.skipped_lines.sort(key=lambda b: b.line)
        unusual = sum(1 for e in entries if "xn--" in e.name and unusual_a_label(e.name))
        kept = {"xn-- label that is not valid IDNA": unusual} if unusual else {}
        return ParsedFeed(self.path, fmt, entries, self.bad, self.skipped, self.duplicates,
                          kept, self.column, self.skipped_lines)

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
_BOILERPLATE = frozenset({
    "localhost", "localhost.localdomain", "local", "broadcasthost",
    "localhost4", "localhost4.localdomain4", "localhost6", "localhost6.localdomain6",
})  # and ip6-localhost, ip6-loopback, ip6-allnodes … (any "ip6-" name)


def _cannot(fmt: str, e: ExportEntry, what: str, hint: str = "use csv") -> FeedFormatError:
    return FeedFormatError(f"{fmt} cannot hold {e.name} ({what}); {hint}")


def _names_only(e: ExportEntry, fmt: str) -> None:
    """Refuse what a format of bare names cannot carry: an entry's own action or category."""
    if e.action is not None:
        raise _cannot(fmt, e, f"action {e.action}")
    if e.category is not None:
        raise _cannot(fmt, e, f"category {e.category}")


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
