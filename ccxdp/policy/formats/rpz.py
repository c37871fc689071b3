"""rpz: a response policy zone, through dnspython's zone-file reader, with a fast path for
the common ``name [ttl] [IN] CNAME policy`` lines."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer
import dns.transaction
import dns.zonefile

from ccxdp.inputs import shown
from ccxdp.policy.catalog import ALLOW, BLOCK
from ccxdp.policy.formats.common import (
    _NAME,
    BELOW,
    EXACT,
    SUBTREE,
    ExportEntry,
    FeedFormatError,
    _Builder,
    _cannot,
    _canonical_action,
    _check_entry,
    _runs,
    _suspects,
)

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
            raise FeedFormatError(f"{path}:{line}: {shown(detail or e)}") from None
        except dns.exception.DNSException as e:
            raise FeedFormatError(f"{path}:{self._line(tok.line_number)}: {shown(e)}") from None
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
                    b.skip("CNAME rewrite", line, f"{value} CNAME {target}")
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
                kind = dns.rdatatype.to_text(rdtype)
                b.skip(f"{kind} record", line, f"{value} {kind}")
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
                b.skip("record at the zone apex", line, f"@ {dns.rdatatype.to_text(rdtype)}")
            return None
        trigger = _NOT_QNAME.get(labels[-1].lower())
        if trigger is not None:
            b.skip(trigger, line, f"{relative} {dns.rdatatype.to_text(rdtype)}")
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


# -- export ----------------------------------------------------------------------------------
_TRIGGER_LABELS = frozenset(t.decode() for t in _NOT_QNAME)
_RPZ_ACTION_TARGET = {action: t for t, (kind, action) in _RPZ_POLICY_TEXT.items()
                      if kind == BLOCK}
RPZ_ORIGIN = "rpz.ccxdp.invalid"


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
