"""Real primary servers for the zone-transfer tests: Knot DNS (knotd) and BIND 9 (named),
each with a config, zone and keys of its own in a temporary folder, listening on a free
loopback port. ``primary()`` stops and removes them however the test ends. ``CutProxy``
stands between ccxdp and a primary and cuts the answer short after so many bytes: a
transfer that breaks midway.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

LOOPBACK = "127.0.0.1"


def free_port(address: str = LOOPBACK) -> int:
    """A port free for both TCP and UDP on the address (a server binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((address, 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((address, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def zone_text(zone: str, serial: int, records: list[str], timers=(3600, 600, 86400)) -> str:
    refresh, retry, expire = timers
    return "\n".join([f"$ORIGIN {zone}.", "$TTL 60",
                      f"@ SOA ns.invalid. hostmaster.invalid. {serial} {refresh} {retry} "
                      f"{expire} 60", "@ NS localhost.", *records]) + "\n"


def soa_serial(address: str, port: int, zone: str, timeout: float = 1.0) -> int | None:
    q = dns.message.make_query(zone, dns.rdatatype.SOA)
    try:
        r = dns.query.udp(q, address, port=port, timeout=timeout)
    except (OSError, dns.exception.DNSException):
        return None
    for rrset in r.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return rrset[0].serial
    return None


class Primary:
    """What both servers share: a folder, a process, a zone that tests change."""

    kind = "?"

    def __init__(self, folder: Path, zone: str, records: list[str], serial: int = 1,
                 timers=(3600, 600, 86400), key: str | None = None,
                 notify: tuple[str, int] | None = None):
        self.folder, self.zone, self.serial, self.timers = folder, zone, serial, timers
        self.records = list(records)
        self.key_name = key
        self.notify = notify
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = folder / f"{self.kind}.log"
        self.zone_file = folder / f"{zone}.zone"
        self.key_file: Path | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def write_zone(self) -> None:
        self.zone_file.write_text(zone_text(self.zone, self.serial, self.records, self.timers))

    def wait_serial(self, serial: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited:\n{self.log.read_text()}")
            if soa_serial(LOOPBACK, self.port, self.zone, 0.3) == serial:
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.kind} never served serial {serial}:\n"
                             f"{self.log.read_text()}")

    def start(self) -> Primary:
        self.write_zone()
        self.configure()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.wait_serial(self.serial)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def configure(self) -> None:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError


class Knot(Primary):
    """knotd with ``zonefile-load: difference``: an edited zone file, reloaded, becomes a
    changeset in its journal, which IXFR serves; NOTIFY goes to ``notify``."""

    kind = "knot"

    def configure(self) -> None:
        f = self.folder
        (f / "db").mkdir(exist_ok=True)
        key = acl_key = remote_key = ""
        if self.key_name:
            self.key_file = f / "knot.key"
            out = subprocess.run(["keymgr", "-t", self.key_name, "hmac-sha256"], check=True,
                                 capture_output=True, text=True).stdout
            self.key_file.write_text(out)
            self.key_file.chmod(0o600)
            key = f"include: {self.key_file}\n"
            acl_key = f"    key: {self.key_name}\n"
            remote_key = f"    key: {self.key_name}\n"
        remote = notify = ""
        if self.notify:
            remote = (f"remote:\n  - id: ccxdp\n    address: {self.notify[0]}@{self.notify[1]}\n"
                      f"{remote_key}")
            notify = "    notify: ccxdp\n"
        (f / "knot.conf").write_text(
            f"server:\n    rundir: {f}\n    listen: {LOOPBACK}@{self.port}\n"
            f"database:\n    storage: {f}/db\n"
            f"{key}"
            f"acl:\n  - id: xfr\n    address: 127.0.0.0/8\n    action: transfer\n{acl_key}"
            f"{remote}"
            f"template:\n  - id: default\n    storage: {f}\n    zonefile-load: difference\n"
            f"    journal-content: changes\n    semantic-checks: off\n"
            f"zone:\n  - domain: {self.zone}\n    file: {self.zone_file}\n    acl: xfr\n"
            f"{notify}"
            f"control:\n    listen: {f}/knot.sock\n"
            f"log:\n  - target: stderr\n    any: info\n")

    def argv(self) -> list[str]:
        return ["knotd", "-c", str(self.folder / "knot.conf")]

    def change(self, records: list[str], serial: int | None = None) -> None:
        """Make ``records`` the zone's, under a new serial, as a changeset (IXFR)."""
        self.records = list(records)
        self.serial = serial if serial is not None else self.serial + 1
        self.write_zone()
        subprocess.run(["knotc", "-s", str(self.folder / "knot.sock"), "zone-reload",
                        self.zone], check=True, capture_output=True, timeout=30)
        self.wait_serial(self.serial)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(["knotc", "-s", str(self.folder / "knot.sock"), "stop"],
                           capture_output=True, timeout=30)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


class Bind(Primary):
    """named in the foreground, the zone open to dynamic updates (nsupdate) signed with the
    key, which also guards transfers; its journal serves IXFR."""

    kind = "bind"

    def configure(self) -> None:
        f = self.folder
        guard = "any"
        include = ""
        if self.key_name:
            self.key_file = f / "bind.key"
            out = subprocess.run(["tsig-keygen", "-a", "hmac-sha256", self.key_name],
                                 check=True, capture_output=True, text=True).stdout
            self.key_file.write_text(out)
            self.key_file.chmod(0o600)
            include = f'include "{self.key_file}";\n'
            guard = f"key {self.key_name}"
        notify = (f"    notify explicit;\n    also-notify {{ {self.notify[0]} port "
                  f"{self.notify[1]}; }};\n" if self.notify else "    notify no;\n")
        (f / "named.conf").write_text(
            f"{include}options {{\n    directory \"{f}\";\n    pid-file \"{f}/named.pid\";\n"
            f"    listen-on port {self.port} {{ {LOOPBACK}; }};\n    listen-on-v6 {{ none; }};\n"
            f"    recursion no;\n    session-keyfile \"{f}/session.key\";\n{notify}"
            f"    allow-transfer {{ {guard}; }};\n    max-ixfr-ratio unlimited;\n}};\n"
            f"controls {{ }};\n"
            f"zone \"{self.zone}\" {{\n    type primary;\n    file \"{self.zone_file}\";\n"
            f"    allow-update {{ {guard}; }};\n}};\n")

    def argv(self) -> list[str]:
        return ["named", "-g", "-u", "root", "-c", str(self.folder / "named.conf")]

    def update(self, add: list[str] = (), delete: list[str] = ()) -> None:
        """A dynamic update: records added and removed, the serial bumped by named."""
        lines = [f"server {LOOPBACK} {self.port}", f"zone {self.zone}"]
        lines += [f"update delete {r.split()[0]}.{self.zone}. {' '.join(r.split()[1:])}"
                  for r in delete]
        lines += [f"update add {r.split()[0]}.{self.zone}. 60 {' '.join(r.split()[1:])}"
                  for r in add]
        lines.append("send")
        key = ["-k", str(self.key_file)] if self.key_file else []
        subprocess.run(["nsupdate", *key], input="\n".join(lines) + "\n", text=True,
                       check=True, capture_output=True, timeout=30)
        self.serial += 1
        self.wait_serial(self.serial)

    def restart_with_file(self, records: list[str], serial: int) -> None:
        """Stopped, the zone file rewritten and its journal removed, started again: the
        history is gone, so an IXFR from an older serial is answered AXFR-style."""
        self.stop()
        for jnl in self.folder.glob("*.jnl"):
            jnl.unlink()
        self.records, self.serial = list(records), serial
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


@contextmanager
def primary(kind: type[Primary], zone: str, records: list[str], **options):
    """A started primary in a folder of its own; stopped and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f"ccxdp-{kind.kind}-"))
    server = kind(folder, zone, records, **options)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


class CutProxy:
    """A TCP proxy on loopback to a primary. With ``cut`` set, the answer stops after that
    many bytes and the connection is closed: the transfer ends midway."""

    def __init__(self, target_port: int):
        self.target = (LOOPBACK, target_port)
        self.cut: int | None = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.cuts = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            self._forward(client, self.cut)
        except OSError:  # the primary is gone: the client sees its connection close
            pass
        finally:
            client.close()

    def _forward(self, client: socket.socket, cut: int | None) -> None:
        with socket.create_connection(self.target, timeout=10) as server:
            server.sendall(client.recv(65535))  # the query
            sent = 0
            while True:
                data = server.recv(65535)
                if not data:
                    return
                if cut is not None and sent + len(data) >= cut:
                    client.sendall(data[:cut - sent])
                    self.cuts += 1
                    return
                client.sendall(data)
                sent += len(data)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
