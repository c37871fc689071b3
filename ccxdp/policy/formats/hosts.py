"""hosts: ``address name [alias…]``, every name an entry, the address not kept."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from ccxdp.policy.catalog import BLOCK
from ccxdp.policy.formats.common import (
    _BOILERPLATE,
    _NAME,
    EXACT,
    ExportEntry,
    _Builder,
    _cannot,
    _check_entry,
    _is_ip,
    _names_only,
    _runs,
)

# -- hosts -----------------------------------------------------------------------------------
_HOSTS_RUNS = _runs(rf"(?:0\.0\.0\.0|127\.0\.0\.1|::1?)[ \t]+{_NAME}[ \t]*")
_HOSTS_NAME = re.compile(r"^\S+[ \t]+([^ \t\n]+)", re.M)


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
            b.skip("hosts-file boilerplate", lineno, value)
        elif _is_ip(value):
            b.skip("IP address host", lineno, value)
        else:
            b.name(value, lineno, value)


def _hosts_lines(entries: Iterable[ExportEntry]) -> Iterator[str]:
    for e in entries:
        _check_entry(e, "hosts")
        if e.kind != BLOCK:
            raise _cannot("hosts", e, "an allow entry")
        if e.match != EXACT:
            raise _cannot("hosts", e, f"match {e.match}: hosts lists exact names",
                          "use plain, rpz or csv")
        _names_only(e, "hosts")
        yield f"0.0.0.0 {e.name}"
