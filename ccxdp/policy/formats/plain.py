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
    if _is_ip(text):
        # A list of names and addresses (urlhaus-filter's domains list has both): the
        # addresses are none of a DNS filter's business, left out and counted, as the
        # other formats do.
        b.skip("IP address host")
        return
    reason = _not_a_name(text)
    if reason:
        b.refuse(lineno, reason, value)
        return
    b.name(text, lineno, value, (BLOCK, match, None, None))


def _plain_lines(entries: Iterable[ExportEntry]) -> Iterator[str]:
    prefix = {EXACT: "", SUBTREE: ".", BELOW: "*."}
    for e in entries:
        _check_entry(e, "plain")
        if e.kind != BLOCK:
            raise _cannot("plain", e, "an allow entry")
        _names_only(e, "plain")
        yield prefix[e.match] + e.name
