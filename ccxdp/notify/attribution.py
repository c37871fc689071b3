"""Attribution: which subscriber line held a source address at the time of a hit.

Three kinds of input, all read completely (and checked) before anything is written:

- a sessions CSV, ``line_id,address_or_prefix,start,stop`` (RADIUS accounting exports): an
  IPv4 or IPv6 address, or a delegated prefix (``2001:db8:1200::/56``); start and stop in ISO
  8601 with a UTC offset (``2026-11-03T09:00:00+09:00`` or ``...Z``); an empty stop is a session
  still open. A first row ``line_id,address_or_prefix,start,stop`` is a header.
- ISC DHCP's ``dhcpd.leases``: ``lease ADDRESS { ... }`` declarations (starts, ends, binding
  state, hardware, uid, client-hostname, ``option agent.circuit-id`` / ``agent.remote-id``).
- Kea's memfile lease CSV (``kea-leases4.csv`` / ``kea-leases6.csv``), read by its header.

Which lease field names the line is the operator's choice (``LINE_ID_FIELDS``). The default is
the relay agent's circuit id (DHCP option 82 sub-option 1; DHCPv6 interface-id, option 18):
an access node sets it per access loop, which is the contract line, the unit the service
promises to speak of. ``remote-id`` (sub-option 2 / DHCPv6 option 37) suits networks whose
access nodes put the subscriber's id there. ``hardware`` and ``client-id`` identify a device,
so they are right only where each line has exactly one DHCP client (the line's own router).
A lease without the chosen field attributes nothing and is counted as such.

Binary ids become text one way for every source, so a line id from dhcpd, Kea and the
subscribers CSV can match: printable ASCII as it is, anything else as lower-case hex pairs
joined by ':' (``01:00:16:3e:ef:a9:c1``).

How sessions combine: for one address or prefix, sessions are taken in order of start; a
session that begins while another line's session is still open ends that one (an address is
held by one line at a time, and a RADIUS Stop can be lost); sessions of the same line that
touch are merged. DHCP leases that were released, expired or freed end the holder's session.
A hit is matched against the most specific address or prefix that has sessions around its
time (a /128 before the /56 that contains it). IPv6 hits are counted per prefix (the setting
``source_prefix_v6``, /64 by default), so such a row names a prefix, and only sessions on that
prefix or a shorter one that contains it can take it. A stored row (one address, category, hour)
is attributed only when a single session covers it from its first to its last hit; a row
that straddles a change of holder, or that no session covers, stays under its address and is
reported as unattributed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from socket import AF_INET, AF_INET6, inet_pton

from ccxdp.errors import CcxdpError
from ccxdp.inputs import InputError, csv_rows, open_input

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LINE_ID_FIELDS = ("circuit-id", "remote-id", "hardware", "client-id", "hostname")
DEFAULT_LINE_ID_FIELD = "circuit-id"

SESSION_HEADER = ["line_id", "address_or_prefix", "start", "stop"]
_FOREVER = 1 << 62  # microseconds: an open session
OPEN_US = _FOREVER  # the stop of an open session, for other readers of sessions


@dataclass(frozen=True)
class Session:
    line: str | None  # None: nobody holds it (a released or expired lease)
    network: Network
    start_us: int
    stop_us: int  # exclusive; _FOREVER when still open
    origin: str = ""  # file:line, for messages


@dataclass
class Sessions:
    """Sessions by network, ready for lookups."""

    by_network: dict[Network, list[Session]] = field(default_factory=dict)
    # Prefix lengths present per IP version, most specific first.
    lengths: dict[int, list[int]] = field(default_factory=dict)
    leases_without_line_id: int = 0
    # by_network keyed by (version, prefix length, network as an integer): a lookup masks
    # the address's integer instead of making a network object per prefix length, which
    # was most of notify's time over a month of 65,000 addresses.
    _by_key: dict[tuple[int, int, int], list[Session]] = field(default_factory=dict,
                                                               repr=False)

    @classmethod
    def build(cls, sessions: Iterable[Session], leases_without_line_id: int = 0) -> Sessions:
        grouped: dict[Network, list[Session]] = defaultdict(list)
        for s in sessions:
            grouped[s.network].append(s)
        out = cls(leases_without_line_id=leases_without_line_id)
        for net, items in grouped.items():
            out.by_network[net] = _resolve(items)
        lengths: dict[int, set[int]] = defaultdict(set)
        for net in out.by_network:
            lengths[net.version].add(net.prefixlen)
        out.lengths = {v: sorted(ls, reverse=True) for v, ls in lengths.items()}
        out._by_key = {(n.version, n.prefixlen, int(n.network_address)): items
                       for n, items in out.by_network.items()}
        return out

    def __len__(self) -> int:
        return sum(1 for items in self.by_network.values() for s in items if s.line)

    def lookup(self, address: str, first_us: int, last_us: int) -> tuple[str | None, str]:
        """(line, "") when one session covers [first, last]; else (None, reason). The
        address may be the IPv6 prefix the hit was counted by (``2001:db8:1:200::/56``): only
        a session on that prefix or a shorter one holds all of it, so more specific sessions
        (a /128 inside a counted /64) never take its hits."""
        version, bits, value, counted_by = _address_int(address)
        for plen in self.lengths.get(version, ()):
            if plen > counted_by:
                continue
            host_bits = bits - plen
            items = self._by_key.get((version, plen, value >> host_bits << host_bits))
            if not items:
                continue
            overlapping = [
                s for s in items if s.start_us <= last_us and first_us < s.stop_us
            ]
            if not overlapping:
                continue
            if len(overlapping) == 1:
                s = overlapping[0]
                if s.line is None:
                    return None, "no session"
                if s.start_us <= first_us and last_us < s.stop_us:
                    return s.line, ""
            return None, "spans a change of session"
        return None, "no session"


def _address_int(address: str) -> tuple[int, int, int, int]:
    """(IP version, bits, the address as an integer, the prefix length it was counted by):
    inet_pton for the stored forms, which costs a tenth of an ipaddress object; ipaddress
    for anything else."""
    text, slash, plen = address.partition("/")
    try:
        if ":" in text:
            value = int.from_bytes(inet_pton(AF_INET6, text), "big")
            return 6, 128, value, int(plen) if slash else 128
        return 4, 32, int.from_bytes(inet_pton(AF_INET, text), "big"), int(plen) if slash else 32
    except (OSError, ValueError):
        net = ipaddress.ip_network(address)
        return (net.version, net.max_prefixlen, int(net.network_address), net.prefixlen)


def _resolve(items: list[Session]) -> list[Session]:
    """One network's sessions as disjoint intervals: later starts end earlier sessions of
    other lines; same-line sessions that overlap or touch merge. Stable on equal starts (the
    later record wins)."""
    out: list[Session] = []
    for s in sorted(items, key=lambda s: s.start_us):
        if out:
            prev = out[-1]
            if prev.line == s.line and s.start_us <= prev.stop_us:
                out[-1] = Session(
                    prev.line, prev.network, prev.start_us, max(prev.stop_us, s.stop_us),
                    prev.origin,
                )
                continue
            if prev.stop_us > s.start_us:
                if prev.start_us == s.start_us:
                    out.pop()
                else:
                    out[-1] = Session(
                        prev.line, prev.network, prev.start_us, s.start_us, prev.origin
                    )
        out.append(s)
    return [s for s in out if s.start_us < s.stop_us]


# -- times and ids -------------------------------------------------------------------------


def to_us(t: datetime) -> int:
    """An aware datetime as Unix microseconds, exactly."""
    return _us(t)


def _us(t: datetime) -> int:
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def parse_time(text: str) -> int:
    """ISO 8601 with a UTC offset, to Unix microseconds. ValueError otherwise."""
    t = datetime.fromisoformat(text.strip())
    if t.tzinfo is None:
        raise ValueError("no UTC offset")
    return _us(t)


def id_text(raw: bytes) -> str:
    """A binary identifier as a line id: printable ASCII as is, otherwise hex pairs."""
    if raw and all(0x21 <= b <= 0x7E for b in raw):
        return raw.decode("ascii")
    return ":".join(f"{b:02x}" for b in raw)


def _hex_bytes(text: str) -> bytes:
    """'0:1e:4f' (dhcpd, one or two digits a byte), '00:1E:4F' (Kea) or '0x001e4f' /
    '001E4F' (Kea's user context) to bytes. ValueError otherwise."""
    t = text.strip()
    if ":" in t:
        parts = t.split(":")
        if not all(re.fullmatch(r"[0-9a-fA-F]{1,2}", p) for p in parts):
            raise ValueError(text)
        return bytes(int(p, 16) for p in parts)
    if t[:2].lower() == "0x":
        t = t[2:]
    return bytes.fromhex(t)


# -- sessions CSV ----------------------------------------------------------------------------


def read_sessions_csv(path: Path | str) -> list[Session]:
    """``line_id,address_or_prefix,start,stop`` (a first row of those names is a header)."""
    out = []
    for lineno, (line_id, where, start, stop), text in csv_rows(path, SESSION_HEADER):
        if not line_id:
            raise InputError(path, lineno, "empty line id", text)
        try:
            net = ipaddress.ip_network(where)
        except ValueError:
            try:
                ipaddress.ip_network(where, strict=False)
                reason = "host bits set in prefix"
            except ValueError:
                reason = "invalid address or prefix"
            raise InputError(path, lineno, reason, where) from None
        start_us = _time_field(path, lineno, "start", start)
        if stop:
            stop_us = _time_field(path, lineno, "stop", stop)
            if stop_us < start_us:
                raise InputError(path, lineno, "stop before start", stop)
        else:
            stop_us = _FOREVER
        out.append(Session(line_id, net, start_us, stop_us, f"{path}:{lineno}"))
    return out


def _time_field(path, lineno: int, name: str, text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as e:
        reason = (
            f"{name} time has no UTC offset (add Z or +09:00)"
            if "no UTC offset" in str(e)
            else f"invalid {name} time (ISO 8601 expected)"
        )
        raise InputError(path, lineno, reason, text) from None


# -- ISC dhcpd.leases ------------------------------------------------------------------------

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{};]|[^\s{};"#]+', re.S)


def _tokens(path, text: str) -> Iterator[tuple[str, int]]:
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise InputError(path, line, "unterminated string", text[pos:pos + 40].split("\n")[0])
        tok = m.group()
        if not tok[0].isspace() and tok[0] != "#":
            yield tok, line
        line += tok.count("\n")
        pos = m.end()


def _unquote(tok: str) -> bytes:
    """A dhcpd string: backslash escapes, octal bytes (\\001) included."""
    body, out, i = tok[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            octal = re.match(r"[0-7]{1,3}", body[i + 1:])
            if octal:
                out.append(int(octal.group(), 8) & 0xFF)
                i += 1 + len(octal.group())
                continue
            nxt = body[i + 1]
            out += {"n": b"\n", "t": b"\t", "r": b"\r"}.get(nxt, nxt.encode())
            i += 2
            continue
        out += c.encode()
        i += 1
    return bytes(out)


def _lease_date(path, line: int, words: list[str]) -> int | None:
    """'W YYYY/MM/DD HH:MM:SS' (UTC), 'epoch N' or 'never' (None)."""
    text = " ".join(words)
    if words == ["never"]:
        return None
    try:
        if len(words) == 2 and words[0] == "epoch":
            return int(words[1]) * 1_000_000
        if len(words) == 3 and words[0].isdigit():
            t = datetime.strptime(f"{words[1]} {words[2]}", "%Y/%m/%d %H:%M:%S")
            return _us(t.replace(tzinfo=UTC))
    except ValueError:
        pass
    raise InputError(path, line, "invalid lease time", text)


def _statements(path, toks: list[tuple[str, int]], i: int) -> tuple[list, int]:
    """Statements of a block from toks[i] (after '{') to its '}': [(words, line)]; nested
    blocks (on commit { ... }) are skipped. Returns them and the index after '}'."""
    out, words, start = [], [], None
    while i < len(toks):
        tok, line = toks[i]
        if tok == "}":
            if words:
                raise InputError(path, line, "statement without ';'", " ".join(words))
            return out, i + 1
        if tok == "{":
            _, i = _statements(path, toks, i + 1)
            words, start = [], None
            continue
        if tok == ";":
            if words:
                out.append((words, start))
            words, start = [], None
        else:
            if not words:
                start = line
            words.append(tok)
        i += 1
    raise InputError(path, toks[-1][1] if toks else 1, "block without '}'", "end of file")


def _lease_value(path, line: int, tok: str) -> bytes:
    if tok.startswith('"'):
        return _unquote(tok)
    try:
        return _hex_bytes(tok)
    except ValueError:
        raise InputError(path, line, "invalid value (a string or hex bytes)", tok) from None


def read_dhcpd_leases(
    path: Path | str, line_id_from: str = DEFAULT_LINE_ID_FIELD
) -> tuple[list[Session], int]:
    """Sessions from an ISC dhcpd.leases file, and how many leases lacked the line id field.

    An active lease is a session from its starts to its ends; a later declaration of the
    same address in any other state (free, released, expired, abandoned, backup) ends it at
    that declaration's ends. Declarations other than ``lease`` are skipped."""
    _check_field(line_id_from)
    with open_input(path) as f:
        text = f.read()
    toks = list(_tokens(path, text))
    sessions, missing, i = [], 0, 0
    while i < len(toks):
        tok, line = toks[i]
        if tok == "lease":
            if i + 2 >= len(toks) or toks[i + 2][0] != "{":
                raise InputError(path, line, "expected 'lease ADDRESS {'", tok)
            where = toks[i + 1][0]
            try:
                addr = ipaddress.IPv4Address(where)
            except ValueError:
                raise InputError(path, line, "invalid lease address", where) from None
            stmts, i = _statements(path, toks, i + 3)
            s, lacks = _lease(path, line, addr, stmts, line_id_from)
            sessions.extend(s)
            missing += lacks
            continue
        # Anything else: a statement to ';' or a block to its '}'.
        j = i
        while j < len(toks) and toks[j][0] not in (";", "{"):
            j += 1
        if j < len(toks) and toks[j][0] == "{":
            _, i = _statements(path, toks, j + 1)
        else:
            i = j + 1
    return sessions, missing


def _lease(path, line, addr, stmts, line_id_from) -> tuple[list[Session], int]:
    values: dict[str, bytes | str] = {}
    starts = ends = None
    state = None
    for words, at in stmts:
        key = words[0]
        if key == "starts":
            starts = _lease_date(path, at, words[1:])
        elif key == "ends":
            ends = _lease_date(path, at, words[1:])
        elif key == "binding" and len(words) == 3 and words[1] == "state":
            state = words[2]
        elif key == "hardware" and len(words) == 3:
            values["hardware"] = id_text(_lease_value(path, at, words[2]))
        elif key == "uid" and len(words) == 2:
            values["client-id"] = id_text(_lease_value(path, at, words[1]))
        elif key == "client-hostname" and len(words) == 2:
            values["hostname"] = _lease_value(path, at, words[1]).decode("utf-8", "replace")
        elif key == "option" and len(words) == 3 and words[1] in (
            "agent.circuit-id", "agent.remote-id"
        ):
            values[words[1].split(".")[1]] = id_text(_lease_value(path, at, words[2]))
    if starts is None:
        raise InputError(path, line, "lease without 'starts'", str(addr))
    net = ipaddress.ip_network(addr)
    end_us = _FOREVER if ends is None else ends
    origin = f"{path}:{line}"
    if state != "active":
        # Whoever held it is gone from its ends on (a release sets ends to its time).
        return [Session(None, net, end_us, _FOREVER, origin)], 0
    line_id = values.get(line_id_from)
    if not line_id:
        return [Session(None, net, starts, end_us, origin)], 1
    return [Session(str(line_id), net, starts, end_us, origin)], 0


def _check_field(name: str) -> None:
    if name not in LINE_ID_FIELDS:
        raise CcxdpError(f"unknown line id field {name!r}: one of {', '.join(LINE_ID_FIELDS)}")


# -- Kea memfile CSV -----------------------------------------------------------------------

_KEA4 = ("address", "hwaddr", "client_id", "valid_lifetime", "expire", "subnet_id")
_KEA6 = ("address", "duid", "valid_lifetime", "expire", "subnet_id", "pref_lifetime",
         "lease_type", "iaid", "prefix_len")


def _kea_unescape(text: str) -> str:
    """Kea escapes the separator and other bytes in text columns as '&#x' and two hex digits."""
    def one(m: re.Match) -> str:
        return chr(int(m.group(1), 16))

    return re.sub(r"&#x([0-9a-fA-F]{2})", one, text)


def _tlvs(raw: bytes, width: int) -> dict[int, bytes]:
    """Options as code -> value: DHCPv4 sub-options (width 1) or DHCPv6 options (width 2)."""
    out, i = {}, 0
    while i + 2 * width <= len(raw):
        code = int.from_bytes(raw[i:i + width], "big")
        size = int.from_bytes(raw[i + width:i + 2 * width], "big")
        i += 2 * width
        out.setdefault(code, raw[i:i + size])
        i += size
    return out


def _relay_ids(context: dict, v6: bool) -> dict[str, str]:
    """circuit-id and remote-id from Kea's extended lease info (store-extended-info)."""
    isc = context.get("ISC") if isinstance(context, dict) else None
    if not isinstance(isc, dict):
        return {}
    out: dict[str, str] = {}
    if not v6:
        info = isc.get("relay-agent-info")
        subs = info.get("sub-options") if isinstance(info, dict) else info
        if isinstance(subs, str):
            opts = _tlvs(_hex_bytes(subs), 1)
            if 1 in opts:
                out["circuit-id"] = id_text(opts[1])
            if 2 in opts:
                out["remote-id"] = id_text(opts[2])
        if isinstance(info, dict) and isinstance(info.get("remote-id"), str):
            out.setdefault("remote-id", id_text(_hex_bytes(info["remote-id"])))
        return out
    relays = isc.get("relay-info")
    if isinstance(relays, list) and relays:
        first = min((r for r in relays if isinstance(r, dict)), key=lambda r: r.get("hop", 0),
                    default=None)
        if first and isinstance(first.get("options"), str):
            opts = _tlvs(_hex_bytes(first["options"]), 2)
            if 18 in opts:  # interface-id: the DHCPv6 circuit id
                out["circuit-id"] = id_text(opts[18])
            if 37 in opts and len(opts[37]) > 4:  # remote-id: enterprise number, then the id
                out["remote-id"] = id_text(opts[37][4:])
    return out


def read_kea_leases(
    path: Path | str, line_id_from: str = DEFAULT_LINE_ID_FIELD
) -> tuple[list[Session], int]:
    """Sessions from a Kea memfile lease file (v4 or v6, told apart by the header).

    A row in the default state (0) with a valid lifetime is a session from its last
    transmission (expire - valid_lifetime) to expire; a row in any other state, or with a
    lifetime of 0 (Kea's mark of a deleted lease), ends the holder's session at its expire."""
    _check_field(line_id_from)
    sessions, missing = [], 0
    with open_input(path, newline="") as f:
        header_line = f.readline()
        header = [h.strip() for h in header_line.rstrip("\r\n").split(",")]
        if header[: len(_KEA6)] == list(_KEA6):
            v6 = True
        elif header[: len(_KEA4)] == list(_KEA4):
            v6 = False
        else:
            raise InputError(path, 1, "not a Kea lease file header", header_line.strip())
        col = {name: i for i, name in enumerate(header)}
        for lineno, raw in enumerate(f, 2):
            text = raw.rstrip("\r\n")
            if not text.strip():
                continue
            row = text.split(",")
            if len(row) < len(_KEA6 if v6 else _KEA4) or len(row) > len(header):
                raise InputError(
                    path, lineno, f"expected {len(header)} fields, got {len(row)}", text
                )
            row += [""] * (len(header) - len(row))
            s, lacks = _kea_row(path, lineno, row, col, v6, line_id_from)
            sessions.append(s)
            missing += lacks
    return sessions, missing


def _kea_int(path, lineno, row, col, name) -> int:
    value = row[col[name]].strip()
    if not value.isdigit():
        raise InputError(path, lineno, f"invalid {name}", value)
    return int(value)


def _kea_row(path, lineno, row, col, v6, line_id_from) -> tuple[Session, int]:
    where = row[col["address"]].strip()
    try:
        addr = ipaddress.ip_address(where)
    except ValueError:
        raise InputError(path, lineno, "invalid lease address", where) from None
    if addr.version != (6 if v6 else 4):
        raise InputError(path, lineno, f"not an IPv{6 if v6 else 4} address", where)
    valid = _kea_int(path, lineno, row, col, "valid_lifetime")
    expire = _kea_int(path, lineno, row, col, "expire")
    state = _kea_int(path, lineno, row, col, "state") if "state" in col and row[
        col["state"]].strip() else 0
    net = ipaddress.ip_network(addr)
    if v6 and _kea_int(path, lineno, row, col, "lease_type") == 2:  # a delegated prefix
        plen = _kea_int(path, lineno, row, col, "prefix_len")
        try:
            net = ipaddress.ip_network((addr, plen))
        except ValueError:
            raise InputError(path, lineno, "invalid delegated prefix", f"{where}/{plen}") from None
    origin = f"{path}:{lineno}"
    if state != 0 or valid == 0:
        return Session(None, net, expire * 1_000_000, _FOREVER, origin), 0
    start, stop = (expire - valid) * 1_000_000, expire * 1_000_000
    try:
        line_id = _kea_line_id(row, col, v6, line_id_from)
    except (ValueError, json.JSONDecodeError):
        raise InputError(
            path, lineno, f"unreadable {line_id_from} value", _line_id_source(row, col)
        ) from None
    if not line_id:
        return Session(None, net, start, stop, origin), 1
    return Session(line_id, net, start, stop, origin), 0


def _line_id_source(row, col) -> str:
    return row[col["user_context"]] if "user_context" in col else ""


def _kea_line_id(row, col, v6, field_name) -> str | None:
    def get(name: str) -> str:
        return _kea_unescape(row[col[name]].strip()) if name in col else ""

    if field_name == "hardware":
        value = get("hwaddr")
        return id_text(_hex_bytes(value)) if value else None
    if field_name == "client-id":
        value = get("duid" if v6 else "client_id")
        return id_text(_hex_bytes(value)) if value else None
    if field_name == "hostname":
        return get("hostname") or None
    context = get("user_context")
    if not context:
        return None
    return _relay_ids(json.loads(context), v6).get(field_name)


# -- everything together ---------------------------------------------------------------------


def load(
    sessions: Iterable[Path | str] = (),
    dhcpd: Iterable[Path | str] = (),
    kea: Iterable[Path | str] = (),
    line_id_from: str = DEFAULT_LINE_ID_FIELD,
) -> Sessions:
    """Every input read and checked; raises InputError at the first bad line."""
    _check_field(line_id_from)
    found: list[Session] = []
    missing = 0
    for p in sessions:
        found += read_sessions_csv(p)
    for p in dhcpd:
        s, m = read_dhcpd_leases(p, line_id_from)
        found += s
        missing += m
    for p in kea:
        s, m = read_kea_leases(p, line_id_from)
        found += s
        missing += m
    return Sessions.build(found, missing)


def lease_kind(path: Path | str) -> str:
    """'kea' for a Kea memfile CSV (its header), otherwise 'dhcpd'."""
    with open_input(path) as f:
        first = f.readline()
    return "kea" if first.startswith("address,") else "dhcpd"

