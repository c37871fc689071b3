"""Feeds downloaded over HTTPS: fetched, checked whole, kept as the feed's last good copy.

A URL feed is an ordinary feed (feeds.py) whose file is a copy ccxdp keeps in the state
folder, ``feeds/<name>.<sha256 prefix>.download``, named by its content. A download becomes
that copy only once it is complete and verified (TLS, status, length, size cap, a gzip or zip
body unpacked, no HTML error page): it is written to a temporary file, fsynced and renamed.
The catalog is then pointed at it in the same transaction as the sync that applies it, with
its provenance (URL, ETag, Last-Modified, when it was fetched), so a failed download or a
refused file leaves the catalog, the kernel and the previous copy exactly as they were.

``feed add --url``/``feed sync`` and the daemon both come here. The CLI retries a failed
attempt a few times with backoff; the daemon makes one attempt per turn and schedules the
next with ``retry_delay``, so a slow server never stalls it for long. Neither holds the
datapath's lock while downloading unless the caller already took it (the CLI does).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import ssl
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from ccxdp import __version__, inputs
from ccxdp.datapath.loader import Datapath
from ccxdp.errors import CcxdpError
from ccxdp.policy.catalog import Catalog, Source
from ccxdp.policy.feeds import (
    ImportResult,
    Progress,
    add_feed,
    check_feed_name,
    check_new_feed,
    sync_feed,
)
from ccxdp.utc import utc_now_text

DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # larger than any public blocklist (~50 MB), by far
CONNECT_TIMEOUT = 10.0  # seconds to open the connection and finish the TLS handshake
READ_TIMEOUT = 60.0  # seconds without a byte from the server
ATTEMPTS = 3  # per CLI call; the daemon makes one per turn and retries on its schedule
FIRST_RETRY = 1.0  # seconds before the CLI's second attempt; doubled for each after it
DAEMON_FIRST_RETRY = 10.0  # the daemon's first retry after a failed attempt; doubled,
DAEMON_MAX_RETRY = 900.0  # up to this, and never later than the feed's refresh
MAX_REDIRECTS = 5
CHUNK = 1 << 16
SHOWN = 120  # characters of a server's text (a reason, a header) put in a message
_COPY = re.compile(r"^(?P<name>.+)\.[0-9a-f]{16}\.download$")
_GZIP, _ZIP, _ZIP_EMPTY = b"\x1f\x8b", b"PK\x03\x04", b"PK\x05\x06"
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


class DownloadError(CcxdpError):
    """A download that failed; ``retry``: worth another attempt (the server or the network
    may recover), unlike a refusal (an untrusted certificate, an HTML page, a body over the
    cap)."""

    def __init__(self, message: str, retry: bool = False):
        super().__init__(message)
        self.retry = retry


def shown(text: object, limit: int = SHOWN) -> str:
    """A server's text made safe for a terminal and a log line, its length capped."""
    return inputs.shown(text, limit)


def redact(url: str) -> str:
    """The URL as it may be shown and logged: never with a user name or password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return shown(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])
    return shown(parts.geturl(), 400)


def check_url(url: str, insecure_http: bool = False) -> str:
    """A URL a feed may be fetched from: https (http only when allowed), a host, no
    credentials. Credentials never go in a URL: it is stored, shown and logged."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as e:
        raise DownloadError(f"{redact(url)}: not a URL ({e})") from None
    if any(not c.isprintable() or c.isspace() for c in url):
        raise DownloadError(f"{redact(url)}: a URL has no spaces or control characters")
    if parts.scheme not in ("https", "http"):
        raise DownloadError(f"{redact(url)}: not an https:// URL")
    if parts.scheme == "http" and not insecure_http:
        raise DownloadError(f"{redact(url)}: plain http is refused: anyone on the path could "
                            "change the feed (--insecure-http or insecure_http = true allows "
                            "it)")
    if parts.username is not None or parts.password is not None:
        raise DownloadError(f"{redact(url)}: a URL with a user name or password is refused: "
                            "it would be stored, shown and logged")
    if not parts.hostname:
        raise DownloadError(f"{redact(url)}: no host")
    return url


def check_ca(path: Path | str) -> Path:
    """A file of PEM CA certificates, the only ones a URL feed's server is checked against."""
    path = Path(path).absolute()
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise DownloadError(f"{path}: no such file") from None
    except (ssl.SSLError, OSError, ValueError) as e:
        raise DownloadError(f"{path}: not a file of PEM CA certificates "
                            f"({shown(getattr(e, 'reason', None) or e)})") from None
    return path


@dataclass(frozen=True)
class UrlOrigin:
    """Where a URL feed comes from, as the catalog keeps it (Source.origin)."""

    url: str
    ca: str | None = None  # a PEM file; None: the system's CAs
    max_bytes: int = DEFAULT_MAX_BYTES  # on the wire and unpacked
    insecure_http: bool = False

    @classmethod
    def make(cls, url: str, ca: Path | str | None = None, max_bytes: int | None = None,
             insecure_http: bool = False) -> UrlOrigin:
        """From what a user gave, each part checked."""
        check_url(url, insecure_http)
        if max_bytes is not None and max_bytes < 1:
            raise DownloadError(f"max_bytes {max_bytes}: give 1 or more")
        return cls(url, str(check_ca(ca)) if ca is not None else None,
                   max_bytes or DEFAULT_MAX_BYTES, insecure_http)

    @classmethod
    def of(cls, source: Source) -> UrlOrigin | None:
        o = source.origin or {}
        if o.get("kind") != "url":
            return None
        return cls(o["url"], o.get("ca"), o.get("max_bytes", DEFAULT_MAX_BYTES),
                   bool(o.get("insecure_http")))

    def as_dict(self) -> dict:
        return {"kind": "url", "url": self.url, "ca": self.ca, "max_bytes": self.max_bytes,
                "insecure_http": self.insecure_http}


def is_url_feed(source: Source | None) -> bool:
    return source is not None and UrlOrigin.of(source) is not None


def retry_delay(failures: int, refresh: float) -> float:
    """Seconds the daemon waits after `failures` failed attempts in a row."""
    return min(DAEMON_FIRST_RETRY * 2 ** max(failures - 1, 0), DAEMON_MAX_RETRY, refresh)


def copies_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "feeds"


# -- one download ---------------------------------------------------------------------------
@dataclass
class Download:
    """A finished fetch: ``staged`` holds the verified new body, not yet the feed's copy
    (None after a 304: the copy stands)."""

    staged: Path | None
    provenance: dict

    @property
    def unchanged(self) -> bool:
        return self.staged is None


def fetch(origin: UrlOrigin, into: Path, previous: dict | None = None,
          attempts: int = ATTEMPTS, sleep: Callable[[float], None] = time.sleep) -> Download:
    """Fetch the URL into a temporary file in `into`, retrying what may recover. `previous`:
    the provenance of the copy at hand, for a conditional GET (None: fetch whatever is
    there). A DownloadError says what failed, with nothing left behind."""
    context = _tls_context(origin)
    for attempt in range(1, attempts + 1):
        try:
            return _attempt(origin, context, into, previous)
        except DownloadError as e:
            if not e.retry or attempt == attempts:
                if attempt > 1:
                    raise DownloadError(f"{e} (after {attempt} attempts)", e.retry) from None
                raise
        sleep(FIRST_RETRY * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _tls_context(origin: UrlOrigin) -> ssl.SSLContext:
    # With a CA file, only its certificates are trusted; without, the system's.
    try:
        return ssl.create_default_context(cafile=origin.ca)
    except (ssl.SSLError, OSError) as e:
        raise DownloadError(f"{origin.ca}: cannot read CA certificates "
                            f"({shown(getattr(e, 'strerror', None) or e)})") from None


def _attempt(origin: UrlOrigin, context: ssl.SSLContext, into: Path,
             previous: dict | None) -> Download:
    headers = {"User-Agent": f"ccxdp/{__version__}", "Accept": "*/*",
               "Accept-Encoding": "gzip", "Connection": "close"}
    conditional = bool(previous) and previous.get("url") == origin.url
    if conditional and previous.get("etag"):
        headers["If-None-Match"] = previous["etag"]
    if conditional and previous.get("last_modified"):
        headers["If-Modified-Since"] = previous["last_modified"]
    url = origin.url
    for _ in range(MAX_REDIRECTS + 1):
        conn, resp = _request(url, context, headers)
        try:
            if resp.status in _REDIRECT_STATUS:
                url = _redirect(url, resp, origin)
                continue
            if resp.status == 304 and ("If-None-Match" in headers
                                       or "If-Modified-Since" in headers):
                return Download(None, {**previous, "checked_at": utc_now_text()})
            if resp.status != 200:
                raise DownloadError(f"{redact(url)}: HTTP {resp.status} {shown(resp.reason)}",
                                    retry=resp.status in _RETRY_STATUS)
            return _receive(url, resp, origin, into)
        finally:
            resp.close()  # with Connection: close, the response holds the socket
            conn.close()
    raise DownloadError(f"{redact(origin.url)}: more than {MAX_REDIRECTS} redirects")


def _request(url: str, context: ssl.SSLContext, headers: dict
             ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=CONNECT_TIMEOUT, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=CONNECT_TIMEOUT)
    try:
        conn.connect()
        conn.sock.settimeout(READ_TIMEOUT)
        conn.request("GET", target, headers=headers)
        return conn, conn.getresponse()
    except BaseException as e:
        conn.close()
        if isinstance(e, Exception):
            raise _network_error(url, e) from None
        raise


def _network_error(url: str, e: Exception) -> DownloadError:
    where = redact(url)
    if isinstance(e, ssl.SSLCertVerificationError):
        return DownloadError(f"{where}: the server's certificate is not trusted "
                             f"({shown(e.verify_message or e.reason)}; --ca names the CA "
                             "file to trust)")
    if isinstance(e, ssl.SSLError):
        return DownloadError(f"{where}: TLS failed ({shown(e.reason or e)})", retry=True)
    if isinstance(e, TimeoutError):
        return DownloadError(f"{where}: timed out", retry=True)
    if isinstance(e, socket.gaierror):
        return DownloadError(f"{where}: cannot resolve the host ({shown(e.strerror)})",
                             retry=True)
    if isinstance(e, http.client.IncompleteRead):
        return DownloadError(f"{where}: the body ended early, after {len(e.partial):,} "
                             "bytes of a chunk", retry=True)
    if isinstance(e, http.client.HTTPException | OSError):
        text = getattr(e, "strerror", None) or str(e) or type(e).__name__
        return DownloadError(f"{where}: {shown(text)}", retry=True)
    raise e


def _redirect(url: str, resp: http.client.HTTPResponse, origin: UrlOrigin) -> str:
    location = resp.getheader("Location")
    if not location:
        raise DownloadError(f"{redact(url)}: HTTP {resp.status} without a Location")
    target = urljoin(url, location)
    try:
        check_url(target, origin.insecure_http)
    except DownloadError as e:
        raise DownloadError(f"{redact(url)}: redirected to {e}") from None
    return target


def _receive(url: str, resp: http.client.HTTPResponse, origin: UrlOrigin,
             into: Path) -> Download:
    """The body, checked while it streams in, then unpacked and checked again: a staged
    copy, or a DownloadError with nothing left behind."""
    where = redact(url)
    cap = origin.max_bytes
    if resp.headers.get_content_type() == "text/html":
        raise DownloadError(f"{where}: an HTML page (Content-Type "
                            f"{shown(resp.getheader('Content-Type'))}), not a feed")
    encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise DownloadError(f"{where}: unsupported Content-Encoding {shown(encoding)}")
    length = _content_length(where, resp)
    if length is not None and length > cap:
        raise _over_cap(where, f"{length:,} bytes (Content-Length),", cap)
    into.mkdir(parents=True, exist_ok=True, mode=0o700)
    raw = _temp(into, ".body")
    out: Path | None = None
    try:
        received = _stream(where, resp, raw, cap, gzip=encoding != "identity")
        if length is not None and received < length:
            raise DownloadError(f"{where}: the body ended after {received:,} of {length:,} "
                                "bytes (Content-Length)", retry=True)
        out = _temp(into, ".part")
        compression, member = _unpack(where, raw, out, cap)
        if compression is None and encoding != "identity":
            compression = "gzip"  # Content-Encoding: gzip
        _refuse_html(where, out)
        size, digest = _fsync_and_hash(out)
        provenance = {
            "url": origin.url, "etag": _header(resp, "ETag"),
            "last_modified": _last_modified(resp), "fetched_at": utc_now_text(),
            "bytes": size, "sha256": digest, "compression": compression, "member": member,
        }
        provenance["checked_at"] = provenance["fetched_at"]
        return Download(out, provenance)
    except BaseException:
        if out is not None:
            out.unlink(missing_ok=True)
        raise
    finally:
        raw.unlink(missing_ok=True)


def _over_cap(where: str, what: str, cap: int) -> DownloadError:
    return DownloadError(f"{where}: {what} over the cap of {cap:,} bytes (--max-bytes or "
                         "max_bytes raises it)")


def _content_length(where: str, resp: http.client.HTTPResponse) -> int | None:
    if resp.chunked:
        return None  # chunked: http.client itself refuses a body cut short
    text = resp.getheader("Content-Length")
    if text is None:
        return None
    if not text.strip().isdigit():
        raise DownloadError(f"{where}: a bad Content-Length {shown(text)}")
    return int(text)


def _stream(where: str, resp: http.client.HTTPResponse, path: Path, cap: int,
            gzip: bool) -> int:
    """Copy the body to `path`, gunzipping it as it comes with Content-Encoding gzip;
    refused as soon as either side passes the cap. Returns the bytes received."""
    received = 0
    inflate = _Gunzip(where, cap) if gzip else None
    with open(path, "wb") as f:
        while True:
            try:
                chunk = resp.read(CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise _network_error(where, e) from None
            if not chunk:
                break
            received += len(chunk)
            if received > cap:
                raise _over_cap(where, "the body goes", cap)
            f.write(inflate.feed(chunk) if inflate else chunk)
    if inflate is not None:
        inflate.finish()
    return received


class _Gunzip:
    """Streamed gunzip of one or more gzip members, refused past the cap (a small gzip can
    unpack to gigabytes)."""

    def __init__(self, where: str, cap: int):
        self.where, self.cap, self.out = where, cap, 0
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.started = False

    def feed(self, data: bytes) -> bytes:
        parts = []
        while data:
            self.started = True
            try:
                part = self.d.decompress(data, self.cap + 1 - self.out)
            except zlib.error as e:
                raise DownloadError(f"{self.where}: not valid gzip ({shown(e)})") from None
            self.out += len(part)
            if self.out > self.cap:
                raise _over_cap(self.where, "the gzip unpacks to", self.cap)
            parts.append(part)
            if self.d.eof:  # another member may follow
                data = self.d.unused_data
                if data:
                    self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                data = self.d.unconsumed_tail
        return b"".join(parts)

    def finish(self) -> None:
        if self.started and not self.d.eof:
            raise DownloadError(f"{self.where}: truncated gzip (the stream ends before its "
                                "end)")


def _unpack(where: str, raw: Path, out: Path, cap: int) -> tuple[str | None, str | None]:
    """A gzip or zip body unpacked into `out` (a zip must hold one file); anything else
    copied as it is. Returns (compression, zip member)."""
    with open(raw, "rb") as f:
        magic = f.read(4)
    if magic[:2] == _GZIP:
        inflate = _Gunzip(where, cap)
        with open(raw, "rb") as src, open(out, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(inflate.feed(chunk))
        inflate.finish()
        return "gzip", None
    if magic in (_ZIP, _ZIP_EMPTY):
        return "zip", _unzip(where, raw, out, cap)
    os.replace(raw, out)
    return None, None


def _unzip(where: str, raw: Path, out: Path, cap: int) -> str:
    try:
        with zipfile.ZipFile(raw) as z:
            files = [i for i in z.infolist() if not i.is_dir()]
            if len(files) != 1:
                names = ", ".join(shown(i.filename, 40) for i in files[:5])
                raise DownloadError(f"{where}: a zip of {len(files)} files ({names}); a feed "
                                    "is a zip of one")
            info = files[0]
            if info.file_size > cap:
                raise _over_cap(where, f"{shown(info.filename)} unpacks to "
                                f"{info.file_size:,} bytes,", cap)
            written = 0
            with z.open(info) as src, open(out, "wb") as dst:
                while chunk := src.read(CHUNK):  # checks the size and CRC at the end
                    written += len(chunk)
                    if written > cap:
                        raise _over_cap(where, "the zip unpacks to", cap)
                    dst.write(chunk)
            return info.filename
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
            EOFError, zlib.error) as e:
        raise DownloadError(f"{where}: not a zip ccxdp can read ({shown(e)})") from None


def _refuse_html(where: str, path: Path) -> None:
    # A portal, a login wall or a web server's error page served as 200: never a feed.
    with open(path, "rb") as f:
        head = f.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype", b"<html")):
        raise DownloadError(f"{where}: an HTML page, not a feed")


def _temp(into: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(dir=into, prefix=".", suffix=suffix)
    os.close(fd)
    return Path(name)


def _fsync_and_hash(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb+") as f:
        while chunk := f.read(CHUNK * 16):
            h.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return size, h.hexdigest()


def _header(resp: http.client.HTTPResponse, name: str) -> str | None:
    """A validator worth sending back: printable ASCII, of a sane length; else none."""
    value = resp.getheader(name)
    if value is None or len(value) > 1024 or not all(" " <= c <= "~" for c in value):
        return None
    return value.strip() or None


def _last_modified(resp: http.client.HTTPResponse) -> str | None:
    value = _header(resp, "Last-Modified")
    try:
        return value if value and parsedate_to_datetime(value) else None
    except (TypeError, ValueError):
        return None


# -- the feed's copy ------------------------------------------------------------------------
def _copy_path(state_dir: Path, name: str, sha256: str) -> Path:
    return copies_dir(state_dir) / f"{name}.{sha256[:16]}.download"


def _keep(staged: Path, copy: Path) -> None:
    """The staged body becomes a copy: renamed, and the rename made durable."""
    os.replace(staged, copy)
    fd = os.open(copy.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep(state_dir: Path, name: str, keep: Path) -> None:
    """Remove the feed's other copies: the one replaced, and any a crash left behind."""
    for p in copies_dir(state_dir).glob(f"{name}.*.download"):
        m = _COPY.match(p.name)
        if m and m["name"] == name and p != keep:
            p.unlink(missing_ok=True)


def _locked(dp: Datapath):
    return nullcontext() if dp.locked else dp


def _apply(dp: Datapath, catalog: Catalog, name: str, download: Download,
           apply: Callable[[str | None], ImportResult]) -> ImportResult:
    """Make the download the feed's copy and apply it, all or nothing: the catalog's path
    moves to the new copy in the transaction of the sync that reads it, so a refused file
    rolls both back and the previous copy stays the feed's."""
    if download.staged is None:
        with _locked(dp):
            return apply(None)
    copy = _copy_path(dp.state_dir, name, download.provenance["sha256"])
    try:
        _keep(download.staged, copy)
        with _locked(dp), catalog.transaction():
            result = apply(str(copy))
    except BaseException:
        download.staged.unlink(missing_ok=True)
        source = catalog.source(name)
        if source is None or source.path != str(copy):
            copy.unlink(missing_ok=True)
        raise
    _sweep(dp.state_dir, name, copy)
    return result


def _failed(name: str, e: DownloadError) -> DownloadError:
    return DownloadError(f"feed {name!r}: {e}; nothing was changed", e.retry)


def add_url_feed(
    dp: Datapath, catalog: Catalog, name: str, origin: UrlOrigin, fmt: str = "auto",
    column: str | None = None, action: str | None = None, category: str | None = None,
    skip_invalid: bool = False, progress: Progress | None = None, attempts: int = ATTEMPTS,
    feed_options: dict | None = None,
) -> ImportResult:
    """Register a URL feed and load it: downloaded first, registered only if both the
    download and the file are good. ``feed_options``: add_feed's other options (the shrink
    guard's, match, min_confidence)."""
    name = check_new_feed(catalog, name)
    if progress is not None:
        progress(f"downloading {redact(origin.url)}")
    try:
        download = fetch(origin, copies_dir(dp.state_dir), None, attempts)
    except DownloadError as e:
        raise _failed(name, e) from None

    def apply(path: str | None) -> ImportResult:
        return add_feed(dp, catalog, name, Path(path or ""), fmt, column, action, category,
                        skip_invalid, progress, origin=origin.as_dict(),
                        provenance=download.provenance, **(feed_options or {}))

    return _apply(dp, catalog, name, download, apply)


def sync_url_feed(dp: Datapath, catalog: Catalog, name: str,
                  progress: Progress | None = None, force: bool = False,
                  attempts: int = ATTEMPTS, allow_shrink: bool = False) -> ImportResult:
    """Fetch a URL feed now and apply what changed. A 304 (Not Modified) costs no parse;
    ``force`` fetches without a condition and parses whatever comes."""
    name = check_feed_name(name)
    source = catalog.source(name)
    origin = UrlOrigin.of(source) if source is not None else None
    if origin is None:
        raise DownloadError(f"feed {name!r} is not a URL feed")
    have_copy = bool(source.path) and Path(source.path).is_file()
    previous = source.provenance if have_copy and not force else None
    if progress is not None:
        progress(f"downloading {redact(origin.url)}")
    try:
        download = fetch(origin, copies_dir(dp.state_dir), previous, attempts)
    except DownloadError as e:
        raise _failed(name, e) from None

    def apply(path: str | None) -> ImportResult:
        now = catalog.source(name)
        if now is None or now.id != source.id or now.origin != source.origin:
            raise DownloadError(f"feed {name!r} was removed or changed during the download; "
                                "nothing was changed")
        if path is not None:
            catalog.set_source_path(source.id, path)
        return sync_feed(dp, catalog, name, progress, force, allow_shrink,
                         provenance=download.provenance)

    return _apply(dp, catalog, name, download, apply)
