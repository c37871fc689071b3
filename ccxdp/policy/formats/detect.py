"""Which format a file is in, from its first lines."""

from __future__ import annotations

import re
from pathlib import Path

from ccxdp.policy.formats.adblock import _COSMETIC
from ccxdp.policy.formats.common import (
    FORMATS,
    FeedFormatError,
    _is_ip,
    read_feed_bytes,
    text_chunks,
)
from ccxdp.policy.formats.csv import _csv_fields, _is_header

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
    head = read_feed_bytes(path, _DETECT_BYTES)
    fmt = _detect(next(iter(text_chunks(head, _DETECT_BYTES)), (1, ""))[1])
    if fmt is None:
        raise FeedFormatError(
            f"{path}: cannot tell the feed format ({', '.join(FORMATS)}); give it with --format"
        )
    return fmt
