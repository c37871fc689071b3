"""A real HTTPS server for the URL-feed tests, with a CA and certificates the test makes.

``certificates(folder)`` makes, with the openssl command line, a CA and a server
certificate for 127.0.0.1 and localhost signed by it, plus a second, unrelated CA's server
certificate (one no client trusts). ``serving(...)`` runs this file as its own process (in
a namespace when given one), on 127.0.0.1 and a port the kernel picks, and stops it when
the ``with`` ends, passed or failed.

The server answers from a routes file the test may rewrite between requests:
``{"/path": {"status": 200, "body": "text", "gzip_body": true, "zip": "member.txt",
"content_encoding": "gzip", "etag": "\\"v1\\"", "last_modified": "...",
"content_type": "text/plain", "reason": "OK", "send": N, "cut": N,
"location": "http://..."}}``. ``send``
cuts the body after N bytes while Content-Length announces all of it; ``cut`` cuts the body
itself (a truncated gzip, served whole). A request whose If-None-Match
or If-Modified-Since matches the route's ETag or Last-Modified gets a 304. Every request is
appended to a log, one JSON object a line.

Run as a script: ``https.py CERT KEY ROUTES LOG PORT_FILE``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Certificates:
    ca: Path  # the CA clients are given (--ca)
    cert: Path  # the server's certificate, signed by it
    key: Path
    untrusted_cert: Path  # a server certificate from a CA no client knows
    untrusted_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, stem: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{stem}.key", "-out", f"{stem}.pem", "-days", "2",
             "-subj", f"/CN=ccxdp test {stem}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)


def _server(folder: Path, ca: str, stem: str) -> None:
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", "/CN=127.0.0.1",
             cwd=folder)
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
             "-extfile", "server.ext", "-out", f"{stem}.pem", cwd=folder)


def certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    _ca(folder, "ca")
    _server(folder, "ca", "server")
    _ca(folder, "other-ca")
    _server(folder, "other-ca", "untrusted")
    return Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                        folder / "untrusted.pem", folder / "untrusted.key")


class Server:
    """A running server: its URLs, its routes, the requests it saw."""

    def __init__(self, folder: Path, port: int, proc: subprocess.Popen):
        self.folder, self.port, self.proc = folder, port, proc
        self.routes_file = folder / "routes.json"
        self.log_file = folder / "requests.log"

    def url(self, path: str, scheme: str = "https") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def route(self, path: str, **how) -> str:
        """Serve `path` this way from the next request on; returns its URL."""
        routes = json.loads(self.routes_file.read_text())
        routes[path] = how
        tmp = self.routes_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(routes))
        tmp.replace(self.routes_file)
        return self.url(path)

    def requests(self, path: str | None = None) -> list[dict]:
        if not self.log_file.exists():
            return []
        seen = [json.loads(line) for line in self.log_file.read_text().splitlines()]
        return [r for r in seen if path is None or r["path"] == path]


@contextmanager
def serving(folder: Path, cert: Path, key: Path, enter: list[str] = ()):
    """This file as a server process (argv prefixed by `enter`, e.g. ip netns exec NS),
    stopped and waited for when the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes.json").write_text("{}")
    port_file = folder / "port"
    port_file.unlink(missing_ok=True)
    argv = [*enter, sys.executable, __file__, str(cert), str(key), str(folder / "routes.json"),
            str(folder / "requests.log"), str(port_file)]
    with open(folder / "server.err", "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the HTTPS server did not start: "
                                     + (folder / "server.err").read_text())
            time.sleep(0.02)
        yield Server(folder, int(port_file.read_text()), proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- the server process -----------------------------------------------------------------------
def _body(how: dict) -> bytes:
    body = how.get("body", "").encode()
    if "zip" in how:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            members = how["zip"] if isinstance(how["zip"], list) else [how["zip"]]
            for member in members:
                z.writestr(member, body)
        body = buf.getvalue()
    if how.get("gzip_body"):
        body = gzip.compress(body, mtime=0)
    if how.get("content_encoding") == "gzip":
        body = gzip.compress(body, mtime=0)
    return body[: how.get("cut", len(body))]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes_file: Path
    log_file: Path

    def log_message(self, *args) -> None:  # the request log below is the record
        pass

    def do_GET(self) -> None:
        routes = json.loads(self.routes_file.read_text())
        how = routes.get(self.path.split("?")[0], {"status": 404, "body": "no such feed\n"})
        inm, ims = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
        not_modified = (inm is not None and inm == how.get("etag")) or (
            inm is None and ims is not None and ims == how.get("last_modified"))
        status = 304 if not_modified and how.get("status", 200) == 200 else how.get("status",
                                                                                   200)
        with open(self.log_file, "a") as log:
            log.write(json.dumps({"path": self.path, "status": status, "if_none_match": inm,
                                  "if_modified_since": ims,
                                  "accept_encoding": self.headers.get("Accept-Encoding")})
                      + "\n")
        body = b"" if status == 304 else _body(how)
        self.send_response(status, how.get("reason"))
        headers = (("ETag", "etag"), ("Last-Modified", "last_modified"),
                   ("Location", "location"), ("Content-Encoding", "content_encoding"))
        for header, key in headers[:2] if status == 304 else headers:
            if key in how:
                self.send_header(header, how[key])
        self.send_header("Content-Type", how.get("content_type", "text/plain"))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body[: how.get("send", len(body))])
        self.wfile.flush()
        self.close_connection = True


def main(argv: list[str]) -> None:
    cert, key, routes, log, port_file = argv
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    Handler.routes_file, Handler.log_file = Path(routes), Path(log)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.replace(port_file)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
