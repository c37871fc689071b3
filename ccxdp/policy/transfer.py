"""RPZ feeds by zone transfer: a zone on a primary server as a feed, and NOTIFY from it.

A zone feed is a feed (policy/feeds.py) whose file is ccxdp's last good copy of the zone,
kept whole in the state folder (``feeds/<name>.zone``, one record a line). The first
transfer is an AXFR; later ones ask for an IXFR (RFC 1995) from the serial the catalog says
is applied. A primary may answer that with the whole zone (AXFR-style) or with its SOA alone
(up to date); both are handled. A transfer is taken whole into memory first: one that fails,
is cut short, or whose TSIG (RFC 8945) does not verify, changes neither the copy nor the
catalog nor the kernel. A complete one is written as a new copy (temporary file, fsync,
rename) and applied by the ordinary feed sync, as one atomic swap, with the copy's provenance
(zone, serial, SOA timers, times) in the same catalog transaction.

Transfers run without the datapath's lock (``fetch``); only applying one takes it
(``apply``), so a long AXFR never holds up other commands. ``NotifyListener`` answers NOTIFY
(RFC 1996) for the daemon, from a configured primary for its zone only.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import queue
import re
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.serial
import dns.transaction
import dns.tsig
import dns.xfr

from ccxdp.datapath.loader import Datapath
from ccxdp.errors import CcxdpError
from ccxdp.policy.catalog import Catalog, Source
from ccxdp.policy.feeds import (
    FeedError,
    ImportResult,
    Progress,
    add_feed,
    check_feed_name,
    sync_feed,
)
from ccxdp.utc import utc_now_text

ZONE = "zone"  # Source.origin["kind"] of a zone feed
DEFAULT_PORT = 53
MESSAGE_TIMEOUT = 15.0  # seconds to wait for each message of a transfer
TRANSFER_LIFETIME = 1800.0  # seconds for a whole transfer (a million names take ~30 s)
# Timers before a zone's first SOA is known (a failed first transfer): RFC 1912's advice.
DEFAULT_RETRY = 60.0
# Kinds of transfer, as the log and 'feed list' show them.
AXFR, IXFR, AXFR_STYLE, UP_TO_DATE = "axfr", "ixfr", "axfr-style ixfr", "up to date"
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1",
                   "hmac-md5")


class TransferError(FeedError):
    """A transfer that failed: nothing was changed."""


# -- what an operator gives -------------------------------------------------------------------
@dataclass(frozen=True)
class Primary:
    address: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def parse_primary(text: str) -> Primary:
    """``ADDR``, ``ADDR:PORT``, ``[V6ADDR]:PORT`` or a bare IPv6 address."""
    raw = text.strip()
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", raw)
    host, port = (m[1], m[2]) if m and m[1] else (m[3], m[4]) if m else (raw, None)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise CcxdpError(f"primary {text!r} is not ADDRESS[:PORT] (an IP address; IPv6 as "
                         "[ADDRESS]:PORT)") from None
    if port is not None and not 1 <= int(port) <= 65535:
        raise CcxdpError(f"primary {text!r}: port {port} is outside 1..65535")
    return Primary(str(address), int(port) if port else DEFAULT_PORT)


def check_zone(text: str) -> str:
    """A zone's name as the catalog keeps it: lower case, no trailing dot."""
    try:
        name = dns.name.from_text(text.strip())
    except dns.exception.DNSException as e:
        raise CcxdpError(f"zone {text!r} is not a domain name: {e}") from None
    if name == dns.name.root:
        raise CcxdpError("zone '.': give the RPZ zone's name (rpz.example, for instance)")
    return name.to_text(omit_final_dot=True).lower()


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str = field(repr=False)  # base64, never logged or printed
    path: Path | None = None
    warning: str | None = None  # the file can be read by others

    def keyring(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, self.algorithm)


_BIND_KEY = re.compile(
    r'key\s+"?([A-Za-z0-9._-]+)"?\s*\{\s*(?:algorithm\s+"?([A-Za-z0-9-]+)"?\s*;\s*'
    r'|secret\s+"([A-Za-z0-9+/=]+)"\s*;\s*){2}\}\s*;', re.S)


def read_tsig(path: Path | str) -> TsigKey:
    """A TSIG key from BIND's keyfile (``key "name" { algorithm hmac-sha256; secret "…";
    };``, as tsig-keygen writes it) or Knot's (``key: - id: name / algorithm: / secret:``,
    as ``keymgr -t`` writes it). Errors name the file, never the secret."""
    path = Path(path)
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as e:
        raise CcxdpError(f"TSIG key file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CcxdpError(f"TSIG key file {path}: not UTF-8 text") from None
    text = re.sub(r"(?m)(#|//).*$", "", text)
    found = _BIND_KEY.search(text)
    if found:
        whole = found.group(0)
        name = found.group(1)
        algorithm = re.search(r'algorithm\s+"?([A-Za-z0-9-]+)', whole)
        secret = re.search(r'secret\s+"([A-Za-z0-9+/=]+)"', whole)
        algorithm = algorithm.group(1) if algorithm else None
        secret = secret.group(1) if secret else None
    else:
        fields = dict(re.findall(r"(?m)^[\s-]*(id|algorithm|secret)\s*:\s*(\S+)\s*$", text))
        name, algorithm, secret = fields.get("id"), fields.get("algorithm"), fields.get("secret")
    if not (name and algorithm and secret):
        raise CcxdpError(f"TSIG key file {path}: no key found (expected BIND's 'key \"name\" "
                         "{ algorithm …; secret \"…\"; };' or Knot's 'key: - id: …')")
    algorithm = algorithm.lower()
    if algorithm not in TSIG_ALGORITHMS:
        raise CcxdpError(f"TSIG key file {path}: algorithm {algorithm!r} is not one of "
                         f"{', '.join(TSIG_ALGORITHMS)}")
    try:
        base64.b64decode(secret, validate=True)
        dns.name.from_text(name)
    except (binascii.Error, ValueError, dns.exception.DNSException):
        raise CcxdpError(f"TSIG key file {path}: the key's name or secret is malformed") \
            from None
    warning = None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = (f"TSIG key file {path} can be read by others (mode "
                   f"{stat.S_IMODE(st.st_mode):o}): chmod 600 it")
    return TsigKey(name, algorithm, secret, path.resolve(), warning)


@dataclass(frozen=True)
class ZoneOrigin:
    """Where a zone feed comes from, as Source.origin keeps it."""

    primary: Primary
    zone: str
    tsig: Path | None = None

    def as_dict(self) -> dict:
        return {"kind": ZONE, "primary": self.primary.address, "port": self.primary.port,
                "zone": self.zone, "tsig": str(self.tsig) if self.tsig else None}

    @classmethod
    def of(cls, source: Source) -> ZoneOrigin | None:
        o = source.origin
        if not o or o.get("kind") != ZONE:
            return None
        return cls(Primary(o["primary"], o["port"]), o["zone"],
                   Path(o["tsig"]) if o.get("tsig") else None)

    def where(self) -> str:
        return f"zone {self.zone} from {self.primary}"


def zone_origin(primary: str, zone: str, tsig: Path | str | None) -> ZoneOrigin:
    """The origin of a zone feed from the operator's text, each part checked."""
    key = read_tsig(tsig) if tsig else None
    return ZoneOrigin(parse_primary(primary), check_zone(zone), key.path if key else None)


def copy_path(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "feeds" / f"{name}.zone"


# -- the copy --------------------------------------------------------------------------------
# The copy holds each record as "owner TYPE rdata" (owner relative to the zone, names in the
# rdata too). That is both the file (an RPZ zone file: "name CNAME ." is the form its fast
# path reads) and, in memory, a dict from "owner TYPE" to that rdataset's rdata texts: a
# million names cost a dict of strings, and an IXFR builds rdatasets only for the names it
# touches. TTLs are not kept: ccxdp answers with TTLs of its own.
_MISSING = object()


class ZoneCopy(dns.transaction.TransactionManager):
    def __init__(self, zone: str, records: dict[str, tuple[str, ...]] | None = None):
        self.origin = dns.name.from_text(zone)
        self.zone = zone
        self.records = records if records is not None else {}
        self.commits = 0
        self.replaced = False  # a commit replaced everything (an AXFR, or AXFR-style)

    # dns.transaction.TransactionManager
    def reader(self) -> _CopyTransaction:
        return _CopyTransaction(self, False, True)

    def writer(self, replacement: bool = False) -> _CopyTransaction:
        return _CopyTransaction(self, replacement)

    def origin_information(self):
        return self.origin, False, self.origin

    def get_class(self):
        return dns.rdataclass.IN

    # the copy's own
    @property
    def soa(self) -> tuple[int, int, int, int] | None:
        """(serial, refresh, retry, expire) of the copy's SOA."""
        texts = self.records.get("@ SOA")
        if not texts:
            return None
        fields = texts[0].split()
        return int(fields[2]), int(fields[3]), int(fields[4]), int(fields[5])

    def lines(self) -> Iterator[str]:
        yield f"$ORIGIN {self.origin.to_text()}"
        first = ("@ SOA", "@ NS")
        for key in (*first, *(k for k in self.records if k not in first)):
            for text in self.records.get(key, ()):
                yield f"{key} {text}"

    def write(self, path: Path) -> None:
        """Write whole: a temporary file beside it, fsync, rename, then the folder."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write("\n".join(self.lines()))
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: Path, zone: str) -> ZoneCopy | None:
        """A copy written by ``write``; None when it is missing or not that zone's."""
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return None
        lines = text.split("\n")
        if not lines or lines[0] != f"$ORIGIN {zone}.":
            return None
        records: dict[str, tuple[str, ...]] = {}
        for line in lines[1:]:
            if not line:
                continue
            owner, rdtype, rdata = line.split(" ", 2)
            key = f"{owner} {rdtype}"
            have = records.get(key)
            records[key] = (rdata,) if have is None else (*have, rdata)
        copy = cls(zone, records)
        return copy if copy.soa is not None else None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _CopyTransaction(dns.transaction.Transaction):
    """Changes to a ZoneCopy, kept aside until commit: a rollback is forgetting them."""

    def __init__(self, copy: ZoneCopy, replacement: bool, read_only: bool = False):
        super().__init__(copy, replacement, read_only)
        self.copy = copy
        self.base: dict[str, tuple[str, ...]] = {} if replacement else copy.records
        self.changes: dict[str, tuple[str, ...] | None] = {}

    def _key(self, name: dns.name.Name, rdtype: int) -> str:
        return f"{name.relativize(self.copy.origin).to_text()} {dns.rdatatype.to_text(rdtype)}"

    def _texts(self, key: str) -> tuple[str, ...] | None:
        got = self.changes.get(key, _MISSING)
        return self.base.get(key) if got is _MISSING else got

    def _get_rdataset(self, name, rdtype, covers):
        texts = self._texts(self._key(name, rdtype))
        if not texts:
            return None
        return dns.rdataset.from_text_list(dns.rdataclass.IN, rdtype, 0, list(texts),
                                           origin=self.copy.origin, relativize=False)

    def _put_rdataset(self, name, rdataset):
        origin = self.copy.origin
        self.changes[self._key(name, rdataset.rdtype)] = tuple(
            rd.to_text(origin=origin, relativize=True) for rd in rdataset)

    def _delete_rdataset(self, name, rdtype, covers):
        self.changes[self._key(name, rdtype)] = None

    def _owned(self, name) -> list[str]:
        owner = name.relativize(self.copy.origin).to_text() + " "
        return [k for k in {*self.base, *self.changes} if k.startswith(owner)
                and self._texts(k)]

    def _delete_name(self, name):
        for key in self._owned(name):
            self.changes[key] = None

    def _name_exists(self, name):
        return bool(self._owned(name))

    def _changed(self):
        return self.replacement or bool(self.changes)

    def _end_transaction(self, commit):
        if not commit or self.read_only:
            return
        if self.replacement:
            self.copy.records = {k: v for k, v in self.changes.items() if v}
            self.copy.replaced = True
        else:
            for key, texts in self.changes.items():
                if texts:
                    self.base[key] = texts
                else:
                    self.base.pop(key, None)
        self.copy.commits += 1

    def _set_origin(self, origin):
        pass

    def _iterate_rdatasets(self):
        origin = self.copy.origin
        for key in list({*self.base, *self.changes}):
            texts = self._texts(key)
            if texts:
                owner, rdtype = key.split(" ")
                name = dns.name.from_text(owner, origin)
                yield name, self._get_rdataset(name, dns.rdatatype.from_text(rdtype), 0)

    def _iterate_names(self):
        seen = set()
        for name, _ in self._iterate_rdatasets():
            if name not in seen:
                seen.add(name)
                yield name

    def _get_node(self, name):
        node = dns.node.Node()
        for got, rdataset in self._iterate_rdatasets():
            if got == name:
                node.rdatasets.append(rdataset)
        return node if node.rdatasets else None


# -- a transfer ------------------------------------------------------------------------------
@dataclass
class Fetched:
    """One transfer's outcome, not applied yet."""

    origin: ZoneOrigin
    kind: str  # AXFR, IXFR, AXFR_STYLE or UP_TO_DATE
    base_serial: int | None  # the serial asked from (None: AXFR)
    copy: ZoneCopy | None  # the new copy; None when up to date
    serial: int
    timers: tuple[int, int, int]  # (refresh, retry, expire) from the SOA
    seconds: float
    warning: str | None = None  # from the key file


def _reason(e: BaseException, timeout: float) -> str:
    """What went wrong, in words; dnspython's names are not an operator's."""
    if isinstance(e, EOFError):
        return "the primary closed the connection before the transfer was complete"
    if isinstance(e, dns.exception.Timeout | socket.timeout | TimeoutError):
        return f"no answer from the primary within {timeout:g} s"
    if isinstance(e, ConnectionResetError):
        return "the connection was reset before the transfer was complete"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is the primary listening on that port?)"
    if isinstance(e, dns.xfr.TransferError):
        return f"the primary answered {dns.rcode.to_text(e.rcode)}" + (
            " (is this host allowed to transfer the zone, with the right key?)"
            if e.rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH) else "")
    if isinstance(e, dns.tsig.PeerError):
        return f"the primary refused our TSIG key ({e})"
    if isinstance(e, dns.tsig.BadSignature | dns.tsig.BadTime | dns.tsig.BadAlgorithm):
        return f"the answer's TSIG does not verify ({e})"
    if isinstance(e, dns.message.UnknownTSIGKey):
        return "the answer is signed with a key we do not have"
    if isinstance(e, dns.xfr.SerialWentBackwards):
        return "the primary's serial is older than the one applied here"
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return f"{e} ({type(e).__name__})"


def fetch(origin: ZoneOrigin, base: Source | None = None, force: bool = False,
          timeout: float = MESSAGE_TIMEOUT) -> Fetched:
    """Transfer the zone: an IXFR from the serial ``base`` (the registered feed) has
    applied, when its copy is at that serial and not ``force``; an AXFR otherwise. Any
    failure is a TransferError and changes nothing."""
    key = read_tsig(origin.tsig) if origin.tsig else None
    applied = (base.provenance or {}).get("serial") if base is not None else None
    copy = None
    if applied is not None and not force and base is not None and base.path:
        copy = ZoneCopy.load(Path(base.path), origin.zone)
        if copy is not None and copy.soa[0] != applied:
            copy = None  # a copy that was never applied: start again from the whole zone
    if copy is None:
        copy = ZoneCopy(origin.zone)
        serial_asked = None
    else:
        serial_asked = applied
    started = time.perf_counter()
    try:
        query, _ = dns.xfr.make_query(
            copy, serial=serial_asked,
            keyring=key.keyring() if key else None,
            keyname=dns.name.from_text(key.name) if key else None,
            keyalgorithm=key.algorithm if key else dns.tsig.default_algorithm,
        )
        _inbound(origin.primary, copy, query, serial_asked, timeout)
    except (dns.exception.DNSException, EOFError, OSError, ValueError) as e:
        raise TransferError(f"{origin.where()}: {_reason(e, timeout)}; nothing was "
                            "changed") from None
    seconds = time.perf_counter() - started
    if serial_asked is None:
        kind = AXFR
    elif copy.commits == 0:
        kind = UP_TO_DATE
    else:
        kind = AXFR_STYLE if copy.replaced else IXFR
    soa = copy.soa
    if soa is None:
        raise TransferError(f"{origin.where()}: the transfer gave no SOA; nothing was "
                            "changed")
    serial, refresh, retry, expire = soa
    return Fetched(origin, kind, serial_asked, None if kind == UP_TO_DATE else copy, serial,
                   (refresh, retry, expire), seconds, key.warning if key else None)


def _inbound(primary: Primary, copy: ZoneCopy, query: dns.message.Message,
             serial: int | None, timeout: float) -> None:
    """dns.query.inbound_xfr, but the stream is read by a thread of its own as fast as it
    comes: parsing a million records takes longer than a primary waits for a secondary that
    stops reading (knotd dropped a 1,000,000-name AXFR midway before this)."""
    frames: queue.SimpleQueue = queue.SimpleQueue()
    wire = query.to_wire()
    deadline = time.monotonic() + TRANSFER_LIFETIME
    with socket.create_connection((primary.address, primary.port), timeout=timeout) as s:
        s.sendall(len(wire).to_bytes(2, "big") + wire)

        def read() -> None:
            try:
                while True:
                    head = _read_exactly(s, 2)
                    body = _read_exactly(s, int.from_bytes(head, "big")) if head else None
                    frames.put(body if body is not None else EOFError())
                    if body is None:
                        return
            except OSError as e:
                frames.put(e)

        reader = threading.Thread(target=read, name="ccxdp-xfr", daemon=True)
        reader.start()
        rdtype = query.question[0].rdtype
        try:
            with dns.xfr.Inbound(copy, rdtype, serial) as inbound:
                done, first, tsig_ctx = False, True, None
                while not done:
                    try:
                        item = frames.get(timeout=max(0.0, min(timeout,
                                                               deadline - time.monotonic())))
                    except queue.Empty:
                        raise dns.exception.Timeout from None
                    if isinstance(item, BaseException):
                        raise item
                    r = dns.message.from_wire(item, keyring=query.keyring,
                                              request_mac=query.mac, xfr=True,
                                              tsig_ctx=tsig_ctx, multi=True,
                                              one_rr_per_rrset=rdtype == dns.rdatatype.IXFR)
                    if not query.is_response(r, xfr_continuation=not first):
                        raise dns.query.BadResponse
                    first = False
                    done = inbound.process_message(r)
                    tsig_ctx = r.tsig_ctx
        finally:
            try:
                s.shutdown(socket.SHUT_RDWR)  # ends the reader's recv
            except OSError:
                pass
            reader.join(timeout=5)


def _provenance(fetched: Fetched, before: dict | None) -> dict:
    now = utc_now_text()
    before = before or {}
    changed = fetched.kind != UP_TO_DATE
    refresh, retry, expire = fetched.timers
    return {
        "zone": fetched.origin.zone,
        "serial": fetched.serial,
        "refresh": refresh, "retry": retry, "expire": expire,
        # when the copy last changed, and how; and when the primary last confirmed it
        "transferred_at": now if changed else before.get("transferred_at"),
        "transfer": fetched.kind if changed else before.get("transfer"),
        "checked_at": now,
    }


def apply(dp: Datapath, catalog: Catalog, name: str, fetched: Fetched,
          progress: Progress | None = None, add: dict | None = None,
          allow_shrink: bool = False) -> ImportResult:
    """Apply a fetched transfer to the feed ``name`` (under the datapath's lock), or, with
    ``add`` (add_feed's action, category, skip_invalid), register it. The new copy replaces
    the old one only if the sync takes it; otherwise the old one is put back."""
    source = catalog.source(name)
    if add is None:
        if source is None:
            raise FeedError(f"no feed named {name!r} ('ccxdp feed list' shows them)")
        applied = (source.provenance or {}).get("serial")
        if fetched.base_serial is not None and applied != fetched.base_serial:
            raise TransferError(f"feed {name!r}: the feed changed during the transfer "
                                "(another sync?); nothing was changed, try again")
    elif source is not None:
        raise FeedError(f"feed {name!r} exists already ('ccxdp feed sync {name}' transfers "
                        "it again; remove it first to change its options)")
    path = copy_path(dp.state_dir, name)
    provenance = _provenance(fetched, source.provenance if source else None)
    if fetched.copy is None:  # up to date: the sync reads the copy as it is
        r = sync_feed(dp, catalog, name, progress, allow_shrink=allow_shrink,
                      provenance=provenance)
        r.seconds += fetched.seconds
        return r
    keep = path.with_name(f".{path.name}.last-good")
    had_copy = path.is_file()
    if had_copy:
        keep.unlink(missing_ok=True)
        os.link(path, keep)
    fetched.copy.write(path)
    try:
        if add is not None:
            r = add_feed(dp, catalog, name, path, "rpz", progress=progress,
                         origin=fetched.origin.as_dict(), provenance=provenance,
                         allow_shrink=allow_shrink, **add)
        else:
            r = sync_feed(dp, catalog, name, progress, allow_shrink=allow_shrink,
                          provenance=provenance)
    except BaseException:
        if had_copy:
            os.replace(keep, path)
        else:
            path.unlink(missing_ok=True)
        raise
    keep.unlink(missing_ok=True)
    r.seconds += fetched.seconds
    return r


def add_zone_feed(dp: Datapath, catalog: Catalog, name: str, origin: ZoneOrigin,
                  action: str | None = None, category: str | None = None,
                  skip_invalid: bool = False, progress: Progress | None = None,
                  max_shrink: float | None = None, allow_shrink: bool = False,
                  ) -> ImportResult:
    """Register the feed ``name`` as the zone on the primary, and load it (an AXFR);
    ``max_shrink``, ``allow_shrink``: the shrink guard's (feeds.add_feed)."""
    name = check_feed_name(name)
    if catalog.source(name) is not None:
        raise FeedError(f"feed {name!r} exists already ('ccxdp feed sync {name}' transfers "
                        "it again; remove it first to change its options)")
    if progress is not None:
        progress(f"transferring {origin.zone} from {origin.primary}")
    fetched = fetch(origin)
    return apply(dp, catalog, name, fetched, progress,
                 add={"action": action, "category": category, "skip_invalid": skip_invalid,
                      "max_shrink": max_shrink}, allow_shrink=allow_shrink)


def sync_zone_feed(dp: Datapath, catalog: Catalog, name: str, progress: Progress | None = None,
                   force: bool = False, allow_shrink: bool = False) -> ImportResult:
    """Transfer the zone feed ``name`` now (an IXFR when its copy allows; ``force``: an
    AXFR) and apply what changed."""
    source = catalog.source(check_feed_name(name))
    origin = ZoneOrigin.of(source) if source is not None else None
    if origin is None:
        raise FeedError(f"no zone feed named {name!r} ('ccxdp feed list' shows the feeds)")
    if progress is not None:
        progress(f"transferring {origin.zone} from {origin.primary}")
    return apply(dp, catalog, source.name, fetch(origin, source, force), progress,
                 allow_shrink=allow_shrink)


def sync(dp: Datapath, catalog: Catalog, name: str, progress: Progress | None = None,
         force: bool = False, allow_shrink: bool = False) -> ImportResult:
    """Refresh a feed of any kind: a zone feed by transfer, a file feed by reading it."""
    source = catalog.source(check_feed_name(name))
    if source is not None and ZoneOrigin.of(source) is not None:
        return sync_zone_feed(dp, catalog, name, progress, force, allow_shrink)
    return sync_feed(dp, catalog, name, progress, force, allow_shrink)


# -- the schedule ----------------------------------------------------------------------------
def _age(text: str | None, now: float) -> float | None:
    if not text:
        return None
    return now - datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def expired(source: Source | None, now: float | None = None) -> bool:
    """Whether the primary has not confirmed the copy for longer than the SOA's expire. The
    copy stays applied all the same: an old list blocks more than an empty one."""
    p = (source.provenance if source else None) or {}
    age = _age(p.get("checked_at"), time.time() if now is None else now)
    return age is not None and "expire" in p and age > p["expire"]


def next_refresh(source: Source | None, ok: bool) -> float:
    """Seconds until the next transfer: the SOA's refresh after a success, its retry after
    a failure (DEFAULT_RETRY before any SOA is known)."""
    p = (source.provenance if source else None) or {}
    if ok and "refresh" in p:
        return float(max(p["refresh"], 1))
    return float(max(p.get("retry", DEFAULT_RETRY), 1))


# -- NOTIFY ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Watched:
    """A zone the listener accepts NOTIFY for: from this primary's address, for this feed."""

    feed: str
    zone: str
    primary: Primary
    key: TsigKey | None = None


@dataclass(frozen=True)
class NotifyEvent:
    sender: str
    zone: str | None
    feed: str | None  # the feed to transfer now; None when refused
    rcode: str
    reason: str | None = None
    serial: int | None = None


def _response(query: dns.message.Message, rcode: int) -> bytes:
    r = dns.message.make_response(query)
    r.set_rcode(rcode)
    r.flags |= dns.flags.AA
    return r.to_wire()


def _bare_refusal(wire: bytes, rcode: int) -> bytes | None:
    """A response to what could not be parsed or verified: its id and question echoed,
    unsigned (RFC 8945 5.2: a bad key or signature is answered without one)."""
    try:
        q = dns.message.from_wire(wire, keyring=False, ignore_trailing=True)
    except dns.exception.DNSException:
        return None
    if q.flags & dns.flags.QR:
        return None
    r = dns.message.Message(q.id)
    r.flags = dns.flags.QR | (q.flags & dns.flags.RD)
    r.set_opcode(q.opcode())
    r.set_rcode(rcode)
    r.question = q.question
    return r.to_wire()


def answer_notify(wire: bytes, sender: str, watched: list[Watched]
                  ) -> tuple[bytes | None, NotifyEvent]:
    """The response to one datagram, and what it means. A NOTIFY is accepted only for a
    watched zone, from its primary's address, signed with its key when it has one."""
    try:
        q = dns.message.from_wire(wire, keyring=False)
    except dns.exception.DNSException:
        return None, NotifyEvent(sender, None, None, "none", "not a DNS message")
    if q.flags & dns.flags.QR:
        return None, NotifyEvent(sender, None, None, "none", "a response, not a NOTIFY")
    if q.opcode() != dns.opcode.NOTIFY:
        return (_response(q, dns.rcode.NOTIMP) if not q.had_tsig else
                _bare_refusal(wire, dns.rcode.NOTIMP),
                NotifyEvent(sender, None, None, "NOTIMP", "not a NOTIFY"))
    if len(q.question) != 1 or q.question[0].rdtype != dns.rdatatype.SOA:
        return _bare_refusal(wire, dns.rcode.FORMERR), NotifyEvent(
            sender, None, None, "FORMERR", "a NOTIFY needs one SOA question")
    zone = q.question[0].name.to_text(omit_final_dot=True).lower()
    same_zone = [w for w in watched if w.zone == zone]
    if not same_zone:
        return _bare_refusal(wire, dns.rcode.REFUSED), NotifyEvent(
            sender, zone, None, "REFUSED", "no feed of that zone")
    ours = [w for w in same_zone if ipaddress.ip_address(w.primary.address)
            == ipaddress.ip_address(sender)]
    if not ours:
        return _bare_refusal(wire, dns.rcode.REFUSED), NotifyEvent(
            sender, zone, None, "REFUSED", "not from the zone's primary")
    w = ours[0]
    if w.key is not None or q.had_tsig:
        if w.key is None:
            return _bare_refusal(wire, dns.rcode.NOTAUTH), NotifyEvent(
                sender, zone, None, "NOTAUTH", "signed, but the feed has no TSIG key")
        try:
            q = dns.message.from_wire(wire, keyring=w.key.keyring())
        except dns.exception.DNSException as e:
            q = None
            why = "unsigned" if isinstance(e, dns.message.UnknownTSIGKey) else str(e)
        else:
            why = None if q.had_tsig else "unsigned"
        if why is not None:
            return _bare_refusal(wire, dns.rcode.NOTAUTH), NotifyEvent(
                sender, zone, None, "NOTAUTH", f"TSIG: {why}")
    serial = None
    for rrset in q.answer:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            serial = rrset[0].serial
    feeds = [x.feed for x in ours]
    return _response(q, dns.rcode.NOERROR), NotifyEvent(sender, zone, ",".join(feeds),
                                                        "NOERROR", None, serial)


class NotifyListener:
    """UDP and TCP sockets on one address answering NOTIFY, in a thread of their own (Knot
    sends NOTIFY over TCP, BIND over UDP). ``on_event`` is called for every message answered
    or dropped (the daemon queues them, to act and log in its own loop); ``watched`` gives
    the zones accepted now (the config may be reloaded)."""

    TCP_IDLE = 5.0  # seconds a TCP connection may wait for its next message

    def __init__(self, address: str, port: int, watched: Callable[[], list[Watched]],
                 on_event: Callable[[NotifyEvent], None]):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.udp.bind((address, port))
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind((address, self.udp.getsockname()[1]))
            self.tcp.listen(16)
        except OSError:
            self.udp.close()
            self.tcp.close()
            raise
        self.address = self.udp.getsockname()
        self.watched = watched
        self.on_event = on_event
        self._stop = False
        self.thread = threading.Thread(target=self._serve, name="ccxdp-notify", daemon=True)
        self.thread.start()

    def _answer(self, wire: bytes, sender: str) -> bytes | None:
        try:
            reply, event = answer_notify(wire, sender, self.watched())
        except Exception as e:  # noqa: BLE001 - one bad message must not stop the thread
            reply, event = None, NotifyEvent(sender, None, None, "none", type(e).__name__)
        self.on_event(event)
        return reply

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.udp, selectors.EVENT_READ)
        sel.register(self.tcp, selectors.EVENT_READ)
        while not self._stop:
            for key, _ in sel.select(timeout=0.2):
                try:
                    if key.fileobj is self.udp:
                        wire, sender = self.udp.recvfrom(65535)
                        reply = self._answer(wire, sender[0])
                        if reply is not None:
                            self.udp.sendto(reply, sender)
                    else:
                        conn, sender = self.tcp.accept()
                        threading.Thread(target=self._stream, args=(conn, sender[0]),
                                         daemon=True).start()
                except OSError:
                    if self._stop:
                        return
        sel.close()

    def _stream(self, conn: socket.socket, sender: str) -> None:
        """NOTIFY over TCP: length-prefixed messages until the primary closes or idles."""
        with conn:
            conn.settimeout(self.TCP_IDLE)
            try:
                while not self._stop:
                    head = _read_exactly(conn, 2)
                    if head is None:
                        return
                    wire = _read_exactly(conn, int.from_bytes(head, "big"))
                    if wire is None:
                        return
                    reply = self._answer(wire, sender)
                    if reply is not None:
                        conn.sendall(len(reply).to_bytes(2, "big") + reply)
            except OSError:
                return

    def stop(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.udp.close()
        self.tcp.close()


def _read_exactly(conn: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        got = conn.recv(count - len(data))
        if not got:
            return None
        data += got
    return data
