"""csv: abuse.ch exports and any CSV with a header; what export writes, read back."""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import compress
from operator import itemgetter, not_
from urllib.parse import urlsplit

from ccxdp.datapath.settings import ACTIONS
from ccxdp.inputs import shown
from ccxdp.policy.catalog import ALLOW, BLOCK, KINDS, MATCHES, CatalogError, normalize_category
from ccxdp.policy.formats.common import (
    _NAME,
    EXACT,
    ExportEntry,
    FeedFormatError,
    _Attrs,
    _Builder,
    _canonical_action,
    _check_entry,
    _is_ip,
    _runs,
    _split_runs,
    _suspects,
)

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
    columns = shown(", ".join(header), 200) if header else ""  # the file's words
    if column is not None:
        wanted = column.strip()
        if wanted.isdigit():
            index = int(wanted) - 1
            if index < 0 or (header and index >= len(header)):
                raise FeedFormatError(
                    f"{path}: no column {wanted} (the header has {len(header or [])}: {columns})"
                    if header else f"{path}: columns are numbered from 1"
                )
            return index
        if names is None:
            raise FeedFormatError(f"{path}: no header line; give the column as a number")
        if wanted.lower() not in names:
            raise FeedFormatError(f"{path}: no column {wanted!r} (columns: {columns})")
        return names.index(wanted.lower())
    if names is not None:
        present = [names.index(c) for c in NAME_COLUMNS if c in names]
        # Of the columns whose header could name hosts, the first whose value in the first
        # row is one: C2IntelFeeds' "#domain,ioc,…" has its description under "ioc".
        for index in present:
            if index < len(first_row) and _looks_like_a_host(first_row[index]):
                return index
        if present:
            return present[0]
        raise FeedFormatError(
            f"{path}: cannot tell which column holds the names (columns: {columns}); "
            "choose one with --column"
        )
    if len(first_row) == 1:
        return 0
    raise FeedFormatError(
        f"{path}: no header line and {len(first_row)} columns; choose one with --column"
    )


def _looks_like_a_host(cell: str) -> bool:
    value = cell.strip()
    try:
        host = _host(value)
    except ValueError:
        return False
    return bool(host) and "." in host and not any(c.isspace() for c in value)


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
        b.skip("IP address host", lineno, value)
    elif len(host.split()) > 1:
        b.refuse(lineno, "several words, not one name", value)
    else:
        b.name(host, lineno, value, attrs)


class _ThreatFox:
    """A ThreatFox export's malware family (fk_malware, e.g. win.cobalt_strike) as each
    entry's category, and its confidence_level against ``min_confidence``."""

    def __init__(self, names: list[str], min_confidence: int | None, value_col: int):
        self.value_col = value_col
        self.first: dict[str, str | None] = {}  # host -> the family its first row gave
        self.family = names.index("fk_malware") if "fk_malware" in names else None
        self.confidence = (names.index("confidence_level") if "confidence_level" in names
                           else None)
        self.min_confidence = min_confidence

    def attrs(self, b: _Builder, row: list[str], lineno: int) -> _Attrs | None:
        def cell(index: int | None) -> str:
            return row[index].strip() if index is not None and index < len(row) else ""

        if self.min_confidence is not None:
            text = cell(self.confidence)
            if not text.isdigit():
                b.refuse(lineno, f"confidence_level {text!r} is not a number", ",".join(row))
                return None
            if int(text) < self.min_confidence:
                b.skip(f"confidence below {self.min_confidence}", lineno,
                       f"{cell(self.value_col)} (confidence_level {text})")
                return None
        family = cell(self.family).lower()
        category = family if _CATEGORY_LIKE.fullmatch(family) and family != "unknown" else None
        # ThreatFox lists a host again under another family (a URL on a domain IOC's host):
        # one name, its first family; not a conflict.
        try:
            host = (_host(cell(self.value_col)) or "").lower().rstrip(".")
        except ValueError:
            host = ""
        if host:
            category = self.first.setdefault(host, category)
        return (BLOCK, EXACT, None, category)


_CATEGORY_LIKE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62})")


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


def _parse_csv(b: _Builder, text: str, column: str | None,
               min_confidence: int | None = None) -> None:
    header, start, first_line = _csv_layout(text)
    end = _csv_end(text, start)
    if end <= start:
        return
    nl = text.find("\n", start, end)
    first_raw = text[start : nl if nl >= 0 else end]
    col = _csv_column(b.path, header, _csv_fields(first_raw), column)
    b.column = header[col] if header and col < len(header) else str(col + 1)
    names = [h.lower() for h in header] if header else []
    type_col = None
    if "ioc_type" in names and names[col] in ("ioc_value", "ioc"):
        type_col = names.index("ioc_type")
    semantic = _Semantic(names) if "name" in names and "kind" in names else None
    if semantic is None and ("fk_malware" in names or min_confidence is not None):
        if min_confidence is not None and "confidence_level" not in names:
            raise FeedFormatError(
                f"{b.path}: --min-confidence needs a confidence_level column (ThreatFox's)")
        semantic = _ThreatFox(names, min_confidence, col)

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
    def reason(ioc_type: str) -> str:
        ioc_type = ioc_type.strip().lower()
        return "IP address host" if ioc_type == "ip:port" else f"ioc_type {ioc_type}"

    counts: Counter[str] = Counter()
    for ioc_type, count in others.items():
        counts[reason(ioc_type)] += count
    rows = zip(numbers, picked, taken, strict=True)
    b.skip_many(counts, ((n, reason(t), v) for n, (v, t), ok in rows if not ok))
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
        b.lines.extend(numbers[offset + start : offset + i])
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
                b.skip("IP address host" if ioc_type == "ip:port" else f"ioc_type {ioc_type}",
                       lineno, cell)
                continue
        attrs = None
        if semantic is not None:
            attrs = semantic.attrs(b, row, lineno)
            if attrs is None:
                continue
        _csv_value(b, cell, lineno, attrs)


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
