"""Files an operator hands to ccxdp (sessions, subscribers, opt-outs, leases): read whole
as UTF-8, and every bad line reported the one way, ``file:line: reason: value``; and
``shown``, the one way text from outside is made safe to print."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

from ccxdp.errors import CcxdpError


def shown(text: object, limit: int | None = None) -> str:
    """Text from outside (a feed's line, a server's reason phrase, a header, a file name)
    made safe for a terminal, a log line or JSON: every character that is not printable
    (NUL, ESC and the rest of C0 and C1, DEL, line and paragraph separators, bidi overrides)
    as the backslash escape repr() would write, as the reasons' repr() of a label does;
    printable text, IDN labels included, as it is. ``limit``: at most that many characters of
    the text, then "…"."""
    out = str(text)
    if limit is not None and len(out) > limit:
        out = out[:limit] + "…"
    if out.isprintable():
        return out  # the usual case: no copy
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in out)


class InputError(CcxdpError):
    """A bad line in an input file: ``file:line: reason: value``, the value escaped."""

    def __init__(self, path: Path | str, line: int, reason: str, value: str):
        super().__init__(f"{shown(path)}:{line}: {reason}: {shown(value)}")
        self.path = str(path)
        self.line = line
        self.reason = reason
        self.value = value


def open_input(path: Path | str, **kwargs) -> io.StringIO:
    """An input file's text (UTF-8, checked whole before any parsing), or a clear error."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise CcxdpError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        bad = raw[e.start : e.start + 4]
        raise InputError(path, line, "not UTF-8 text", repr(bad)) from None
    return io.StringIO(text, newline=kwargs.get("newline", None))


def csv_rows(path: Path | str, header: Sequence[str]) -> Iterator[tuple[int, list[str], str]]:
    """The rows of a CSV file whose columns are `header`: (line number, fields stripped, the
    row's text). A first row that is the header itself (any case) is skipped, as are blank
    rows; a row with another number of fields is an InputError."""
    names = [h.lower() for h in header]
    with open_input(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or all(not c.strip() for c in row):
                continue
            text = ",".join(row)
            if lineno == 1 and [c.strip().lower() for c in row] == names:
                continue
            if len(row) != len(names):
                raise InputError(
                    path, lineno,
                    f"expected {len(names)} fields ({','.join(names)}), got {len(row)}", text,
                )  # fmt: skip
            yield lineno, [c.strip() for c in row], text
