"""plain: one name per line; ``*.name`` and ``.name`` (see the package's docstring)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ccxdp.policy.catalog import BLOCK
from ccxdp.policy.formats.common import (
    _NAME,
    BELOW,
    EXACT,
    SUBTREE,
    ExportEntry,
    _Builder,
    _cannot,
    _check_entry,
    _is_ip,
    _names_only,
    _runs,
)

# -- plain -----------------------------------------------------------------------------------
_PLAIN_RUNS = _runs(_NAME)


def _one_name(b: _Builder, text: str, lineno: int, value: str, attrs) -> None:
    """A value that should be one name: an address is skipped and counted (lists of names
    and addresses exist: urlhaus-filter's has both; they are none of a DNS filter's
    business), several fields or a URL is a bad line, else the name goes to the builder."""
    if _is_ip(text):
        b.skip("IP address host", lineno, value)
    elif len(text.split()) > 1:
        b.refuse(lineno, "several fields, not one name", value)
    elif "://" in text:
        b.refuse(lineno, "a URL, not a domain name", value)
    else:
        b.name(text, lineno, value, attrs)


def _plain_line(b: _Builder, line: str, lineno: int) -> None:
    value = line.split("#", 1)[0].strip()
    if not value:
        return
    text, match = value, EXACT
    if text.startswith("*."):
        text, match = text[2:], BELOW
    elif text.startswith(".") and len(text) > 1:
        text, match = text[1:], SUBTREE
    _one_name(b, text, lineno, value, (BLOCK, match, None, None))


def _plain_lines(entries: Iterable[ExportEntry]) -> Iterator[str]:
    prefix = {EXACT: "", SUBTREE: ".", BELOW: "*."}
    for e in entries:
        _check_entry(e, "plain")
        if e.kind != BLOCK:
            raise _cannot("plain", e, "an allow entry")
        _names_only(e, "plain")
        yield prefix[e.match] + e.name
