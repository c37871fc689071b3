"""adblock: domain rules as AdGuard Home reads them. ``||name^`` (and ``||name|``) is the
name and every name below it, ``|name^`` and ``|name|`` the name alone; ``@@`` before either
makes it an exception (an allow entry)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ccxdp.policy.catalog import ALLOW, BLOCK
from ccxdp.policy.formats.common import (
    _NAME,
    EXACT,
    SUBTREE,
    ExportEntry,
    _Builder,
    _cannot,
    _check_entry,
    _names_only,
    _runs,
)
from ccxdp.policy.formats.plain import _one_name

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
        b.skip("not a domain rule", lineno, s)
        return
    if s[0] == "#":
        return  # a comment, the way AdGuard's DNS lists write them
    kind, rule = BLOCK, s
    if rule.startswith("@@"):
        kind, rule = ALLOW, rule[2:]
    rule, _, modifiers = rule.partition("$")
    # '||' anchors at a label boundary (the name and below), '|' at the start of the name
    # (the name alone); '^' or '|' ends the name.
    match, host = (SUBTREE, rule[2:]) if rule.startswith("||") else (EXACT, rule[1:])
    ended = rule.startswith("|") and host.endswith(("^", "|"))
    host = host[:-2] if host.endswith("^|") else host[:-1]
    if not ended or not host or any(c in host for c in "/*^|:?=&@"):
        b.skip("not a domain rule", lineno, s)
        return
    if any(m.strip().lower() not in _ADBLOCK_MODIFIERS for m in modifiers.split(",") if m):
        b.skip("unsupported adblock modifier", lineno, s)
        return
    _one_name(b, host, lineno, s, (kind, match, None, None))


def _adblock_lines(entries: Iterable[ExportEntry]) -> Iterator[str]:
    yield "[Adblock Plus 2.0]"
    for e in entries:
        _check_entry(e, "adblock")
        if e.match not in (SUBTREE, EXACT):
            raise _cannot("adblock", e, f"match {e.match}: ||name^ is a subtree, |name^ "
                          "the name alone", "use rpz or csv")
        _names_only(e, "adblock")
        anchor = "||" if e.match == SUBTREE else "|"
        yield f"@@{anchor}{e.name}^" if e.kind == ALLOW else f"{anchor}{e.name}^"
