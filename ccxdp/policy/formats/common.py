"""What every feed format shares: the entry types, reading a file as UTF-8, the builder that
turns lines into entries (duplicates, conflicts, bad lines), and the fast path over runs of
lines already in normalized form."""

from __future__ import annotations

import codecs
import errno
import gc
import gzip
import os
import re
import stat
import zipfile
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice, repeat
from pathlib import Path

from ccxdp.datapath.settings import ACTION_NAMES, SettingError, parse_action
from ccxdp.errors import CcxdpError, InvalidNameError
from ccxdp.inputs import shown
from ccxdp.policy.catalog import ALLOW, BLOCK, KINDS, MATCHES
from ccxdp.policy.names import is_ip_literal, normalize, unusual_a_label

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
    value: str  # the offending text on the line, stripped, cut to VALUE_SHOWN, escaped

    def __str__(self) -> str:
        return f"{shown(self.path)}:{self.line}: {self.reason}: {self.value}"


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
# A feed is read once, whole, as bytes (the sync's digest and its line hashes need them), and
# never more than the cap: a runaway download or a wrong path (a disk image, a log) is refused
# from its size before a byte is read, or as the cap is passed while it is unpacked or grows.
# The text is decoded and parsed a chunk of lines at a time (text_chunks), so no copy of the
# whole file as text is ever made for the line formats.
DEFAULT_MAX_FEED_BYTES = 256 << 20  # far above any public blocklist (~50 MB); as for URLs
MAX_FEED_BYTES_ENV = "CCXDP_MAX_FEED_BYTES"
CHUNK_BYTES = 4 << 20  # of text decoded and parsed at a time
_HEAD_BYTES = 64 << 10  # checked for binary content before the rest is read
_SIZE = re.compile(r"(\d+)\s*([KMG]?)(?:i?B)?", re.IGNORECASE)


def max_feed_bytes() -> int:
    """The cap on a feed file (what it unpacks to, for gzip and zip): CCXDP_MAX_FEED_BYTES,
    in bytes or with K, M or G (binary units), else DEFAULT_MAX_FEED_BYTES."""
    text = os.environ.get(MAX_FEED_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_FEED_BYTES
    m = _SIZE.fullmatch(text)
    if m is None or int(m.group(1)) == 0:
        raise FeedFormatError(f"{MAX_FEED_BYTES_ENV}={shown(text)!r}: give a size of 1 or "
                              "more, in bytes (268435456) or with K, M or G (256M)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def _over_cap(path: Path, what: str, cap: int) -> FeedFormatError:
    return FeedFormatError(
        f"{path}: {what} more than the cap of {cap:,} bytes: refused (a feed is text of at "
        f"most that; {MAX_FEED_BYTES_ENV} raises it)")


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


def _not_regular(path: Path, mode: int) -> FeedFormatError:
    kind = next((k for test, k in _FILE_KINDS if test(mode)), "not a file")
    return FeedFormatError(f"{path}: not a regular file ({kind}); a feed is a file")


def cannot_read(path: Path | str, e: OSError) -> FeedFormatError:
    """The one message for a feed file that cannot be opened or read."""
    if e.errno == errno.ENOENT:
        return FeedFormatError(f"{path}: no such file")
    return FeedFormatError(f"{path}: cannot read: {e.strerror or e}")


def read_feed_bytes(path: Path, limit: int | None = None, max_bytes: int | None = None
                    ) -> bytes:
    """The file's bytes, a gzip file's or a one-member zip archive's contents transparently
    (blocklist projects publish both), at most ``limit`` bytes when given (detection).
    Refused (FeedFormatError): anything but a regular file (a FIFO is opened without
    waiting for a writer), more than ``max_bytes`` (default: max_feed_bytes()), and binary
    content (a NUL byte: no text feed has one)."""
    cap = max_bytes if max_bytes is not None else max_feed_bytes()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise cannot_read(path, e) from None
    try:
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise _not_regular(path, st.st_mode)
        with open(fd, "rb") as f:
            if limit is None and st.st_size > cap:
                raise _over_cap(path, f"{st.st_size:,} bytes,", cap)
            want = limit if limit is not None else cap
            head = f.read(min(_HEAD_BYTES, want + 1))
            if head[:2] == b"\x1f\x8b":
                f.seek(0)
                data = _bounded(path, gzip.GzipFile(fileobj=f), limit, cap, "gzip")
            elif head[:4] == b"PK\x03\x04":
                f.seek(0)
                with zipfile.ZipFile(f) as z:
                    members = [m for m in z.infolist() if not m.is_dir()]
                    if len(members) != 1:
                        raise FeedFormatError(
                            f"{path}: a zip archive of {len(members)} files; a feed is one")
                    with z.open(members[0]) as member:
                        data = _bounded(path, member, limit, cap, "zip")
            else:
                _refuse_binary(path, head)
                f.seek(0)
                data = f.read(want + 1)
                if len(data) > want:
                    if limit is not None:
                        return data[:limit]
                    raise _over_cap(path, "it grew while read to", cap)
    except OSError as e:
        raise cannot_read(path, e) from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise FeedFormatError(f"{path}: a damaged or truncated archive: {shown(e)}") from None
    _refuse_binary(path, data)
    return data


def _bounded(path: Path, stream, limit: int | None, cap: int, kind: str) -> bytes:
    data = stream.read((limit if limit is not None else cap) + 1)
    if limit is not None:
        return data[:limit]
    if len(data) > cap:
        raise _over_cap(path, f"the {kind} file unpacks to", cap)
    return data


def _refuse_binary(path: Path, data: bytes) -> None:
    at = data.find(b"\0")
    if at >= 0:
        line = data.count(b"\n", 0, at) + 1
        raise FeedFormatError(f"{path}: binary content (a NUL byte on line {line:,}), not a "
                              "feed: refused")


def text_chunks(data: bytes, size: int | None = None) -> Iterator[tuple[int, str]]:
    """The feed's text in pieces of about ``size`` bytes, each whole lines with LF line ends
    and ending in one, with the line number of its first: (first line, text). A BOM is
    dropped; bytes that are not UTF-8 become U+FFFD, which the careful paths report as
    "not UTF-8" (a piece ends at a line end: a UTF-8 sequence is never cut)."""
    size = size or CHUNK_BYTES
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    lineno, end = 1, len(data)
    while start < end:
        cut = data.find(b"\n", min(start + size, end) - 1)
        stop = end if cut < 0 else cut + 1
        text = data[start:stop].decode("utf-8", errors="replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        if not text.endswith("\n"):
            text += "\n"
        yield lineno, text
        lineno += text.count("\n")
        start = stop


def feed_text(data: bytes) -> str:
    """The whole text at once, for the formats whose lines depend on others (RPZ, CSV)."""
    return "".join(text for _, text in text_chunks(data, max(len(data), 1)))


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
    """A line's text as a BadLine shows it: stripped, cut, and escaped (a third party's
    feed may hold an OSC sequence that retitles the operator's terminal, or NUL bytes)."""
    text = text.strip()
    return shown(text if len(text) <= VALUE_SHOWN else text[: VALUE_SHOWN - 1] + "…")


_is_ip = is_ip_literal  # the rule is names.py's; the formats skip such lines


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
        # Line numbers as 4-byte machine words, not a million int objects (~28 MB less)
        self.lines = array("I")
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
        self.lines.extend(range(first_line, first_line + len(names)))

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
        self.bad.append(BadLine(self.path, line, shown(reason), _cut(value)))

    def skip(self, reason: str, line: int, value: str) -> None:
        reason = shown(reason)  # some name what the line says (csv: its ioc_type)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.skipped_lines) < SKIPPED_LINES_KEPT:
            self.skipped_lines.append(BadLine(self.path, line, reason, _cut(value)))

    def skip_many(self, counts: dict[str, int], lines: Iterable[tuple[int, str, str]]) -> None:
        """Lines skipped in bulk, ``counts`` by reason; ``lines`` yields their (line, reason,
        value) in file order, taken only as far as the kept list has room."""
        for reason, count in counts.items():
            self.skipped[shown(reason)] = self.skipped.get(shown(reason), 0) + count
        room = max(SKIPPED_LINES_KEPT - len(self.skipped_lines), 0)
        self.skipped_lines += (BadLine(self.path, n, shown(reason), _cut(v))
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


def _split_runs(text: str, runs: re.Pattern[str], lineno: int = 1
                ) -> Iterator[tuple[int, str | None, str]]:
    """(first line number, run, "") for each run of fast lines, (line number, None, line)
    for each other line; ``lineno``: the number of the text's first line."""
    pos, end = 0, len(text)
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
    b: _Builder, chunks: Iterable[tuple[int, str]], runs: re.Pattern[str],
    names_of: Callable[[str], str], careful: _Careful, extra: tuple = (),
) -> None:
    """Each chunk of lines (text_chunks) in turn: fast runs give names (names_of turns a run
    into one name a line); other lines, and suspects, go to `careful`."""
    for first, text in chunks:
        _parse_text(b, text, first, runs, names_of, careful, extra)


def _parse_text(b: _Builder, text: str, first: int, runs: re.Pattern[str],
                names_of: Callable[[str], str], careful: _Careful, extra: tuple) -> None:
    for lineno, run, line in _split_runs(text, runs, first):
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
