# SPDX-License-Identifier: GPL-2.0
"""A lab of network namespaces: a resolver, clients and a sinkhole on one switch.

The end-to-end tests, the demo and `ccxdp lab up` all build it. Each host is a network
namespace with one veth to a switch namespace; <id> names them all:

    <id>-cli  client 1  198.18.0.2 (+ .3)   fd00:cc::2 (+ ::3)   the demo's infected client
    <id>-cl2  client 2  198.18.0.4          fd00:cc::4           the demo's clean client
    <id>-snk  sinkhole  198.18.0.53         fd00:cc::53          records every contact
    <id>-res  resolver  198.18.0.1          fd00:cc::1           unbound :53, ccxdp here
                |
    <id>-sw   switch: bridge <id>-br, one port <id>-s<host> per host; no address, no IPv6

Why a switch namespace rather than a bridge inside the resolver's namespace: the resolver then
has one plain NIC facing its clients, as a real resolver does. Every client's query arrives on
that one veth, so ccxdp attached there sees them all, in native mode as on a real NIC, and its
XDP_TX answers leave the same way and reach whichever client asked (the bridge forwards them
by MAC). A bridge in the resolver's namespace would put the resolver's address on the bridge
device, which has only generic XDP, or would need ccxdp on every client's port. The resolver
and client namespaces hold only `lo` and their own veth: what a test sees there is what a host
would see. One caveat veth has and a NIC has not: native XDP_TX frames are dropped unless the
peer (here the switch port) runs an XDP program too; `native_tx_peer()` puts a pass-everything
one there.

Nothing can leave the lab: every address is checked to lie in 198.18.0.0/15 or fd00::/8, and
all hosts share one /24 and one /64, so no host has a route beyond its connected networks.
unbound never recurses: it answers from its local zones and REFUSES every other name
(`local-zone: "." refuse`). The sinkhole host accepts TCP connections on a few ports and records
every TCP connection attempt (SYN), UDP datagram and ping sent to the sinkhole addresses, from a
packet socket, whatever the port: that is how an ISP confirms an infection after a sinkhole
answer.

Cleanup is by construction: each namespace is recorded the moment before it is made, each
process the moment after it starts (it runs inside a recorded namespace, which takes it along
in any case), and close() undoes exactly what was recorded: processes, then the namespaces
(their veth ends and anything still running inside go with them), then the work folder. A
failure half-way through building leaves nothing behind. Veths are created directly inside
their namespaces, so the root namespace never holds any of them.

Two lifetimes:
- `with Lab() as lab:` (tests): a random id (prefix + 6 hex digits), a temp work folder whose
  owner file lets cleanup_stale() remove what crashed runs left.
- `Lab(spec, name=..., workdir=...).build()` (`ccxdp lab up`): a chosen name, a work folder
  in ccxdp's state folder whose lab.json records every resource, so that `ccxdp lab down` can
  remove exactly those later, from another process, even after `up` was killed midway.

The tests' harness (tests/harness/hosts.py) offers the same API on two real hosts, and picks
one of the two from CCXDP_E2E_* variables.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from ccxdp.errors import CcxdpError

NETNS_RUN_DIR = Path("/run/netns")  # where `ip netns add` bind-mounts named namespaces
LAB_NET_V4 = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range
LAB_NET_V6 = ipaddress.ip_network("fd00::/8")  # unique local addresses
UNBOUND_CONTROL_PORT = 8953  # fixed: each resolver namespace has its own isolated loopback
CLONE_NEWNET = 0x40000000
STOP_TIMEOUT = 5.0  # seconds a process gets after SIGTERM before SIGKILL
RECORD_FILE = "lab.json"  # a lab's record of what it made, in its work folder
RECORD_VERSION = 1
# The roles of a lab's namespaces: the suffixes after "<id>-".
HOST_ROLES = ("res", "cli", "cl2", "snk")
SWITCH_ROLE = "sw"
ROLES = (*HOST_ROLES, SWITCH_ROLE)

# The only errors cleanup may swallow: the thing it wanted to remove is already gone.
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH})

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


class LabError(CcxdpError):
    """The lab could not be built, or a lab command failed."""


@dataclass(frozen=True)
class Zone:
    """One unbound local-zone and its local-data records (unbound's record syntax)."""

    name: str
    records: tuple[str, ...] = ()
    type: str = "static"  # static: names in the zone without data get NXDOMAIN/NODATA


DEFAULT_ZONES: tuple[Zone, ...] = (
    Zone(
        "lab.example.",
        (
            "www.lab.example. A 198.18.1.10",
            "www.lab.example. AAAA fd00:cc:1::10",
            "mail.lab.example. A 198.18.1.11",
            "a.b.c.d.lab.example. A 198.18.1.12",
            "a.b.c.d.lab.example. AAAA fd00:cc:1::12",
            # Names the demo's clean client looks up.
            "news.lab.example. A 198.18.1.13",
            "news.lab.example. AAAA fd00:cc:1::13",
            "shop.lab.example. A 198.18.1.14",
        ),
    ),
    # Names the filter tests block: a zone apex, a deep name under it, and a sibling zone.
    Zone("evil.test.", ("evil.test. A 198.18.2.1", "x.y.evil.test. A 198.18.2.2")),
    Zone("bad.test.", ("bad.test. A 198.18.3.1", "www.bad.test. A 198.18.3.2")),
)


@dataclass(frozen=True)
class LabSpec:
    """What a Lab builds. Addresses are interface addresses (with prefix length)."""

    prefix: str = "cx"
    res_v4: str = "198.18.0.1/24"
    res_v6: str = "fd00:cc::1/64"
    cli_v4: str = "198.18.0.2/24"
    cli_v6: str = "fd00:cc::2/64"
    # Extra client addresses, so tests can send from several sources (per-source counting).
    cli_v4_extra: tuple[str, ...] = ("198.18.0.3/24",)
    cli_v6_extra: tuple[str, ...] = ("fd00:cc::3/64",)
    # A second client (the demo's clean one); False leaves it out.
    second_client: bool = True
    cl2_v4: str = "198.18.0.4/24"
    cl2_v6: str = "fd00:cc::4/64"
    # The sinkhole host, its addresses, and the TCP ports where it completes handshakes (it
    # records attempts on every port); False leaves it out.
    sinkhole: bool = True
    sinkhole_v4: str = "198.18.0.53/24"
    sinkhole_v6: str = "fd00:cc::53/64"
    sinkhole_tcp_ports: tuple[int, ...] = (80, 443, 8080)
    # False: the network only, no unbound (a test that brings its own resolver side).
    unbound: bool = True
    zones: tuple[Zone, ...] = DEFAULT_ZONES
    # Zone type for "." i.e. for every name outside `zones`: refuse gives REFUSED, which a
    # filter test can tell apart from an NXDOMAIN and which never makes unbound recurse.
    root_zone_type: str = "refuse"
    # Raw lines appended to unbound's server: clause (tests inject broken config through it).
    unbound_extra: tuple[str, ...] = ()
    start_timeout: float = 10.0  # seconds unbound and the sinkhole get to become ready
    ip_timeout: float = 30.0  # seconds any one `ip`/`unbound-control` command may take
    env: dict[str, str] = field(default_factory=dict)  # extra environment for run()/popen()

    def __post_init__(self) -> None:
        # id = prefix + 6 hex; "<id>-sres" must fit IFNAMSIZ-1 = 15 characters.
        if not re.fullmatch(r"[a-z]{1,4}", self.prefix):
            raise ValueError(f"prefix must be 1-4 lowercase letters, got {self.prefix!r}")
        net4 = ipaddress.ip_interface(self.res_v4).network
        net6 = ipaddress.ip_interface(self.res_v6).network
        seen: set[str] = set()
        for version, net, addrs in ((4, net4, self.v4_addresses()), (6, net6, self.v6_addresses())):
            for addr in addrs:
                ip = _check_lab_addr(addr.split("/")[0], version=version)
                if ipaddress.ip_interface(addr).network != net:
                    raise ValueError(
                        f"{addr} is not in the resolver's network {net}: the lab is one "
                        f"switch and nothing is routed, so every host shares it"
                    )
                if ip in seen:
                    raise ValueError(f"{ip} is given twice")
                seen.add(ip)
        for port in self.sinkhole_tcp_ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"sinkhole TCP port {port} is not in 1-65535")
        if not self.zones:
            raise ValueError("a lab needs at least one zone (its first zone is the probe name)")

    def v4_addresses(self) -> list[str]:
        out = [self.res_v4, self.cli_v4, *self.cli_v4_extra]
        out += [self.cl2_v4] if self.second_client else []
        return out + ([self.sinkhole_v4] if self.sinkhole else [])

    def v6_addresses(self) -> list[str]:
        out = [self.res_v6, self.cli_v6, *self.cli_v6_extra]
        out += [self.cl2_v6] if self.second_client else []
        return out + ([self.sinkhole_v6] if self.sinkhole else [])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabSpec:
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                continue
            if key == "zones":
                value = tuple(Zone(z["name"], tuple(z["records"]), z["type"]) for z in value)
            elif isinstance(value, list):
                value = tuple(value)
            kw[key] = value
        return cls(**kw)


@dataclass(frozen=True)
class Host:
    """One host of a lab: its namespace, its veth, the switch port facing it, its addresses."""

    role: str  # "res", "cli", "cl2", "snk"
    title: str  # what it is, for people
    ns: str
    ifname: str
    port: str  # the switch's port facing this host
    v4: tuple[str, ...]  # with prefix length
    v6: tuple[str, ...]

    def addresses(self) -> list[str]:
        return [a.split("/")[0] for a in (*self.v4, *self.v6)]


@dataclass(frozen=True)
class DigRecord:
    name: str
    ttl: int
    rdclass: str
    rdtype: str
    rdata: str


@dataclass(frozen=True)
class DigResult:
    """dig's answer, parsed from its default text output."""

    status: str | None  # NOERROR, NXDOMAIN, REFUSED, ...; None when no reply came
    answers: list[DigRecord]
    flags: frozenset[str]
    timed_out: bool
    returncode: int
    output: str

    def rdata(self, rdtype: str | None = None) -> list[str]:
        """The answer rdata strings, optionally only those of one type, in dig's order."""
        return [r.rdata for r in self.answers if rdtype is None or r.rdtype == rdtype.upper()]

    @classmethod
    def parse(cls, output: str, returncode: int) -> DigResult:
        status_m = re.search(r"^;; ->>HEADER<<- opcode: \S+, status: (\w+),", output, re.M)
        flags_m = re.search(r"^;; flags:([^;]*);", output, re.M)
        answers: list[DigRecord] = []
        in_answer = False
        for line in output.splitlines():
            if line.startswith(";; ANSWER SECTION:"):
                in_answer = True
            elif in_answer and (not line.strip() or line.startswith(";")):
                in_answer = False
            elif in_answer:
                name, ttl, rdclass, rdtype, rdata = line.split(None, 4)
                answers.append(DigRecord(name, int(ttl), rdclass, rdtype, rdata))
        status = status_m[1] if status_m else None
        return cls(
            status=status,
            answers=answers,
            flags=frozenset(flags_m[1].split()) if flags_m else frozenset(),
            # dig 9.18 says "communications error to ...: timed out" then exits 9.
            timed_out=status is None and "timed out" in output,
            returncode=returncode,
            output=output,
        )


def _check_lab_addr(addr: str, version: int | None = None) -> str:
    """Refuse any address outside the lab ranges: the lab must never send traffic elsewhere."""
    ip = ipaddress.ip_address(addr)
    if version is not None and ip.version != version:
        raise ValueError(f"{addr} is not an IPv{version} address")
    if ip not in (LAB_NET_V4 if ip.version == 4 else LAB_NET_V6):
        raise ValueError(f"{addr} is outside the lab ranges {LAB_NET_V4} and {LAB_NET_V6}")
    return str(ip)


def _fqdn(name: str) -> str:
    return name.lower() if name.endswith(".") else name.lower() + "."


def _ip(*args: str, timeout: float = 30.0) -> str:
    """Run `ip ARGS` in the root namespace; raise LabError with ip's message on failure."""
    cp = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if cp.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {cp.stderr.strip() or f'exit {cp.returncode}'}")
    return cp.stdout


def list_netns() -> list[str]:
    """Named network namespaces (what `ip netns list` shows), read from /run/netns."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def netns_pids(ns: str) -> list[int]:
    """Processes living in the named namespace (`ip netns pids`); [] if it does not exist."""
    if not (NETNS_RUN_DIR / ns).exists():
        return []
    return [int(p) for p in _ip("netns", "pids", ns).split()]


def delete_netns(ns: str) -> None:
    """Kill every process in the namespace, then delete it (its veth ends go with it).

    The kill comes first because a namespace whose name is deleted lives on, invisible, for
    as long as a process is inside it.
    """
    pids = netns_pids(ns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(pids, STOP_TIMEOUT)
    if (NETNS_RUN_DIR / ns).exists():
        _ip("netns", "delete", ns)


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state first), or None if pid is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _wait_gone(pids: Sequence[int], timeout: float) -> None:
    """Wait until the pids have exited (a zombie counts: it holds no namespace any more)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            stat = _proc_stat(pid)
            if stat is None or stat[0] in ("Z", "X"):
                break
            time.sleep(0.01)


def _proc_start_time(pid: int) -> str | None:
    """Start time (field 22 of /proc/PID/stat) of a running, non-zombie process, else None.

    With the pid it identifies a process despite pid reuse.
    """
    stat = _proc_stat(pid)
    return None if stat is None or stat[0] in ("Z", "X") else stat[19]


def _stop_pid(pid: int, start: str | None) -> None:
    """SIGTERM the process if it is still the one that started at `start`; SIGKILL after
    STOP_TIMEOUT. A process that is gone, or another one reusing the pid, is left alone."""
    if start is None or _proc_start_time(pid) != start:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    _wait_gone([pid], STOP_TIMEOUT)
    if _proc_start_time(pid) == start:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone([pid], STOP_TIMEOUT)


def netns_socket(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside the named namespace, usable from any thread.

    A socket belongs to the namespace it was created in for its whole life, so only the
    creation needs to happen in there. setns() changes the namespace of the calling thread
    only, so it runs in a throw-away thread: the caller's threads never leave their namespace,
    and nothing has to be switched back even if something fails half-way.
    """
    box: list[socket.socket | BaseException] = []

    def create() -> None:
        try:
            fd = os.open(NETNS_RUN_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box.append(socket.socket(family, kind, proto))
        except BaseException as exc:  # handed to the caller's thread below
            box.append(exc)

    thread = threading.Thread(target=create, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _owner_alive(lab_id: str, tmp_root: Path) -> bool:
    """Whether the process that made lab `lab_id` still runs (its temp dir names it).

    The temp dir, with its owner file, is made before the namespaces and removed after them,
    so namespaces without any temp dir are certainly orphans. A temp dir whose owner file is
    not written yet is being set up right now: count that as alive.
    """
    for d in tmp_root.glob(f"{lab_id}-*"):
        try:
            pid, start = (d / "owner").read_text().split()
        except FileNotFoundError:
            return True
        except ValueError:
            continue  # torn owner file: its writer died while writing it
        if _proc_start_time(int(pid)) == start:
            return True
    return False


def cleanup_stale(prefix: str = "cx", tmp_root: str | None = None) -> list[str]:
    """Remove what crashed test runs left: namespaces `<prefix><6 hex>-<role>` and temp dirs.

    Only labs whose owner process is gone are touched, so a lab of a concurrent run survives.
    Persistent labs (`ccxdp lab up`) have names that never match, and their own record.
    Returns what was removed (namespace names and temp dir paths).
    """
    root = Path(tmp_root or tempfile.gettempdir())
    lab_id = rf"{re.escape(prefix)}[0-9a-f]{{6}}"
    removed: list[str] = []
    for ns in list_netns():
        m = re.fullmatch(rf"({lab_id})-({'|'.join(ROLES)})", ns)
        if m and not _owner_alive(m[1], root):
            delete_netns(ns)
            removed.append(ns)
    for d in root.iterdir():
        m = re.match(rf"({lab_id})-", d.name)
        if m and d.is_dir() and (d / "owner").exists() and not _owner_alive(m[1], root):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(d)
            removed.append(str(d))
    return removed


def check_lab_name(name: str) -> str:
    """A persistent lab's name: it prefixes namespace and interface names ("<name>-sres" must
    fit in 15 bytes), and must not look like a test lab's id, which cleanup_stale() removes."""
    if not re.fullmatch(r"[a-z][a-z0-9]{0,9}", name):
        raise LabError(
            f"lab name {name!r}: use 1-10 lowercase letters and digits, starting with a letter"
        )
    if re.fullmatch(r"[a-z]{1,4}[0-9a-f]{6}", name):
        raise LabError(f"lab name {name!r} looks like a test lab's id: choose another")
    return name


def _stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; always reaps it and closes its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


_QUERY_LOG = re.compile(
    r"^\[\d+\] unbound\[\d+:\d+\] info: (?P<src>\S+) (?P<name>\S+) (?P<type>\S+) (?P<cls>\S+)$"
)


def unbound_config(
    workdir: Path,
    addresses: Sequence[str],
    zones: Sequence[Zone],
    root_zone_type: str = "refuse",
    extra: Sequence[str] = (),
    control: str = "127.0.0.1",
) -> str:
    """The unbound.conf of a lab resolver: local zones only, every query logged, exact
    cumulative statistics, remote control on `control` (an address, or a unix socket path)."""
    d = workdir
    lines = [
        "server:",
        f'    directory: "{d}"',
        '    username: ""',
        '    chroot: ""',
        f'    pidfile: "{d}/unbound.pid"',
        "    use-syslog: no",
        f'    logfile: "{d}/unbound.log"',
        "    verbosity: 1",
        # Each query is logged (and flushed) before it is answered: unbound_queries_for().
        "    log-queries: yes",
        "    extended-statistics: yes",
        "    statistics-cumulative: yes",
        "    statistics-interval: 0",
        # One thread: queries are handled in arrival order, and counts are never split.
        "    num-threads: 1",
        "    so-reuseport: no",
        "    port: 53",
        *(f"    interface: {a}" for a in addresses),
        "    do-ip4: yes",
        "    do-ip6: yes",
        "    do-udp: yes",
        "    do-tcp: yes",
        f"    access-control: {LAB_NET_V4} allow",
        f"    access-control: {LAB_NET_V6} allow",
        # No validator (so no trust anchor to fetch), no forwarders, no prefetch.
        '    module-config: "iterator"',
        "    do-not-query-localhost: yes",
        "    prefetch: no",
        f'    local-zone: "." {root_zone_type}',
    ]
    for zone in zones:
        lines.append(f'    local-zone: "{zone.name}" {zone.type}')
        for record in zone.records:
            quote = "'" if '"' in record else '"'
            lines.append(f"    local-data: {quote}{record}{quote}")
    lines += [f"    {line}" for line in extra]
    lines += [
        "remote-control:",
        "    control-enable: yes",
        f"    control-interface: {control}",
        *([] if control.startswith("/") else [f"    control-port: {UNBOUND_CONTROL_PORT}"]),
        "    control-use-cert: no",
    ]
    return "\n".join(lines) + "\n"


class _Resolver:
    """What both topologies share: an unbound run by the lab (its config, readiness, counters
    and query log), and the client side of the test API (dig, dnspython) built on run() and
    exchange(), which each topology implements its own way.

    Attributes a topology sets: res_ns (None: this namespace), res_if, cli_ns, cli_if, res_v4,
    res_v6, cli_v4, cli_v6, cli_v4_addrs, cli_v6_addrs, tmpdir, zones.
    """

    res_ns: str | None
    res_if: str
    res_v4: str
    res_v6: str
    cli_v4_addrs: tuple[str, ...]
    cli_v6_addrs: tuple[str, ...]
    tmpdir: Path | None
    zones: tuple[Zone, ...]
    start_timeout: float = 10.0
    cmd_timeout: float = 30.0

    # ---- the resolver's namespace, for ccxdp -----------------------------------------------

    @property
    def res_netns_opt(self) -> tuple[str, ...]:
        """ccxdp's option naming the resolver's namespace: ("--netns", ns), or () when the
        resolver's interface is in this namespace."""
        return ("--netns", self.res_ns) if self.res_ns else ()

    @property
    def cli_v4(self) -> str:
        return self.cli_v4_addrs[0]

    @property
    def cli_v6(self) -> str:
        return self.cli_v6_addrs[0]

    # ---- running things ----------------------------------------------------------------------

    def _argv(self, host: str, argv: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def _cmd_kw(self, kw: dict[str, Any]) -> dict[str, Any]:
        return kw

    def run(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run(argv) on a host ("res", "cli", ...).

        Defaults: text output captured, timeout 60 s, check=False; any keyword overrides them.
        """
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(self._argv(host, argv), **self._cmd_kw(kw))

    def dig(
        self,
        name: str,
        rdtype: str = "A",
        server: str | None = None,
        family: int = 4,
        extra_args: Sequence[str] = (),
        timeout: float = 1,
        tries: int = 1,
        source: str | None = None,
        client: str = "cli",
    ) -> DigResult:
        """dig from a client (client 1 by default) to the resolver by default; parsed, never
        raises on a DNS-level failure or a timeout (DigResult.timed_out), only if dig itself
        fails. `server` decides the family when given; else `family` picks the resolver's
        address."""
        if server is not None:
            family = ipaddress.ip_address(server).version
        server = _check_lab_addr(server or (self.res_v4 if family == 4 else self.res_v6), family)
        argv = ["dig", f"-{family}", f"@{server}", name, rdtype]
        argv += [f"+time={max(1, math.ceil(timeout))}", f"+tries={tries}"]
        if source is not None:
            argv += ["-b", _check_lab_addr(source, family)]
        argv += list(extra_args)
        # HOME points at a folder without a ~/.digrc, which could change dig's output.
        argv = ["env", f"HOME={self.tmpdir}", *argv]
        cp = self.run(client, argv, timeout=(timeout + 1) * tries + 10)
        if cp.returncode not in (0, 9):  # 9: no reply from any server
            raise LabError(f"{' '.join(argv)} exited {cp.returncode}: {cp.stderr}{cp.stdout}")
        return DigResult.parse(cp.stdout, cp.returncode)

    def _exchange_wire(
        self, wire: bytes, server: str, port: int, family: int, source: str | None,
        timeout: float, tcp: bool, client: str,
    ) -> bytes | None:  # fmt: skip
        raise NotImplementedError

    def exchange(
        self,
        q: dns.message.Message,
        *,
        server: str | None = None,
        family: int = 4,
        source: str | None = None,
        timeout: float = 1.0,
        tcp: bool = False,
        port: int = 53,
        client: str = "cli",
    ) -> dns.message.Message | None:
        """Send a prepared query from a client; the response, or None on timeout.

        `server` decides the family when given; else `family` picks the resolver's address.
        """
        if server is not None:
            family = ipaddress.ip_address(server).version
        server = _check_lab_addr(server or (self.res_v4 if family == 4 else self.res_v6), family)
        if source is not None:
            source = _check_lab_addr(source, family)
        return self._exchange(q, server, port, family, source, timeout, tcp, client)

    def _exchange(
        self, q: dns.message.Message, server: str, port: int, family: int, source: str | None,
        timeout: float, tcp: bool, client: str,
    ) -> dns.message.Message | None:  # fmt: skip
        start = time.monotonic()
        wire = self._exchange_wire(q.to_wire(), server, port, family, source, timeout, tcp, client)
        if wire is None:
            return None
        r = dns.message.from_wire(wire)
        r.time = time.monotonic() - start
        if not q.is_response(r):
            raise dns.query.BadResponse
        return r

    def query(
        self,
        name: str,
        rdtype: str = "A",
        family: int = 4,
        source: str | None = None,
        timeout: float = 1.0,
        server: str | None = None,
        tcp: bool = False,
        client: str = "cli",
    ) -> dns.message.Message | None:
        """A query for name/rdtype with dnspython, from a client (client 1 by default)."""
        q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
        return self.exchange(
            q, server=server, family=family, source=source, timeout=timeout, tcp=tcp,
            client=client,
        )  # fmt: skip

    # ---- unbound -------------------------------------------------------------------------------

    @property
    def unbound_conf(self) -> Path:
        assert self.tmpdir is not None, "the lab is not up"
        return self.tmpdir / "unbound.conf"

    @property
    def unbound_log(self) -> Path:
        assert self.tmpdir is not None, "the lab is not up"
        return self.tmpdir / "unbound.log"

    def _unbound_failure(self, what: str) -> LabError:
        """One line: what went wrong, and unbound's own error lines."""
        assert self.tmpdir is not None
        said: list[str] = []
        for f in ("unbound.stderr", "unbound.log"):
            with contextlib.suppress(FileNotFoundError):
                text = (self.tmpdir / f).read_text(errors="replace")
                said += [ln.strip() for ln in text.splitlines() if "error" in ln.lower()]
        where = self.res_ns or "this namespace"
        return LabError(f"unbound in {where} {what}" + (": " + "; ".join(said) if said else ""))

    def _probe_unbound(self, alive: Any) -> None:
        """Return once unbound answers over IPv4 and over IPv6, from client 1.

        The probes (SOA of the first zone) are counted by unbound like any query, so tests
        measure deltas. They are sent v4 first then v6, each until answered: unbound runs one
        thread and answers each socket's queries in order, so once the last probe is answered
        no earlier probe is still pending and counts are stable when the lab is up.
        `alive()` returns None while unbound runs, else how it ended.
        """
        probe = dns.message.make_query(self.zones[0].name, "SOA")
        deadline = time.monotonic() + self.start_timeout
        for server in (self.res_v4, self.res_v6):
            while self.exchange(probe, server=server, timeout=0.2) is None:
                ended = alive()
                if ended is not None:
                    raise self._unbound_failure(ended)
                if time.monotonic() > deadline:
                    raise self._unbound_failure(
                        f"did not answer on {server} within {self.start_timeout}s"
                    )

    def unbound_stats(self) -> dict[str, int]:
        """Integer counters of `unbound-control stats_noreset` (run on the resolver).

        Keys as unbound prints them ("total.num.queries", "num.query.type.A", ...), plus each
        "total.X" also as "X" (so "num.queries"). Non-integer values (time.*, averages) are
        left out. statistics-cumulative makes every counter monotonic for the lab's lifetime.
        """
        cp = self.run(
            "res",
            ["unbound-control", "-c", str(self.unbound_conf), "stats_noreset"],
            timeout=self.cmd_timeout,
        )
        if cp.returncode != 0:
            raise LabError(f"unbound-control stats_noreset: {cp.stderr}{cp.stdout}")
        stats: dict[str, int] = {}
        for line in cp.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep and re.fullmatch(r"-?\d+", value):
                stats[key] = int(value)
        for key, value in list(stats.items()):
            if key.startswith("total."):
                stats.setdefault(key.removeprefix("total."), value)
        return stats

    def unbound_queries(self) -> Iterator[tuple[str, str, str, str]]:
        """Every query unbound received, in order, as (source, qname, qtype, qclass).

        From unbound's log-queries lines: unbound writes and flushes the line for a query
        before it answers it, so every answered query is already in the log when its answer
        arrives. Queries rejected by access-control are neither logged nor answered.
        """
        with open(self.unbound_log, encoding="utf-8", errors="replace") as log:
            for line in log:
                m = _QUERY_LOG.match(line.rstrip("\n"))
                if m is None:
                    continue
                try:
                    ipaddress.ip_address(m["src"])  # other 4-word info lines are not queries
                except ValueError:
                    continue
                yield m["src"], m["name"], m["type"], m["cls"]

    def unbound_queries_for(
        self, name: str, rdtype: str | None = None, source: str | None = None
    ) -> int:
        """How many queries for `name` (case-insensitive; optionally of one type and from
        one source address) reached unbound, counted from its query log (see unbound_queries).

        Exact, not estimated: one log line per received query, none for a query dropped
        before unbound (e.g. by XDP); the readiness probes are for the first zone's SOA.
        """
        want = _fqdn(name)
        return sum(
            1
            for src, qname, qtype, _ in self.unbound_queries()
            if _fqdn(qname) == want
            and (rdtype is None or qtype == rdtype.upper())
            and (source is None or ipaddress.ip_address(src) == ipaddress.ip_address(source))
        )


class Lab(_Resolver):
    """The namespace lab (see the module docstring). All names and addresses are known as soon
    as it is constructed:

        ids:        id, res_ns, cli_ns, cl2_ns, snk_ns, sw_ns, res_if, cli_if, cl2_if, snk_if,
                    bridge, res_port (the switch port facing the resolver), hosts
        addresses:  res_v4, res_v6, cli_v4, cli_v6 (client 1's first addresses, no prefix
                    length), cli_v4_addrs, cli_v6_addrs (all of client 1's), cl2_v4, cl2_v6,
                    sinkhole_v4, sinkhole_v6
        processes:  unbound_pid, sinkhole_pid (once up); unbound_conf, unbound_log,
                    sinkhole_log, tmpdir (the work folder)
    """

    def __init__(
        self, spec: LabSpec | None = None, *, name: str | None = None,
        workdir: Path | None = None,
    ) -> None:  # fmt: skip
        self.spec = spec or LabSpec()
        self.persistent = name is not None
        if name is not None:
            if workdir is None:
                raise ValueError("a named (persistent) lab needs a work folder")
            self.id = check_lab_name(name)
        else:
            while True:  # a name already in use would make `ip netns add` fail: pick another
                self.id = f"{self.spec.prefix}{secrets.token_hex(3)}"
                if not any(n.startswith(self.id) for n in list_netns()):
                    break
        self.workdir = workdir
        s = self.spec
        self.zones = s.zones
        self.start_timeout = s.start_timeout
        self.cmd_timeout = s.ip_timeout
        self.sw_ns = f"{self.id}-{SWITCH_ROLE}"
        self.bridge = f"{self.id}-br"

        def host(role: str, title: str, v4: Sequence[str], v6: Sequence[str]) -> Host:
            # Interface names equal their namespace names: unique, easy to find, <= 15 bytes.
            ns = f"{self.id}-{role}"
            return Host(role, title, ns, ns, f"{self.id}-s{role}", tuple(v4), tuple(v6))

        hosts = [
            host("res", "resolver", [s.res_v4], [s.res_v6]),
            host("cli", "client 1", [s.cli_v4, *s.cli_v4_extra], [s.cli_v6, *s.cli_v6_extra]),
        ]
        if s.second_client:
            hosts.append(host("cl2", "client 2", [s.cl2_v4], [s.cl2_v6]))
        if s.sinkhole:
            hosts.append(host("snk", "sinkhole", [s.sinkhole_v4], [s.sinkhole_v6]))
        self.hosts: tuple[Host, ...] = tuple(hosts)
        self._by_role = {h.role: h for h in self.hosts}
        self.res_ns = self.res_if = f"{self.id}-res"
        self.cli_ns = self.cli_if = f"{self.id}-cli"
        self.cl2_ns = self.cl2_if = f"{self.id}-cl2"
        self.snk_ns = self.snk_if = f"{self.id}-snk"
        self.res_port = f"{self.id}-sres"
        self.res_v4 = s.res_v4.split("/")[0]
        self.res_v6 = s.res_v6.split("/")[0]
        self.cli_v4_addrs = tuple(a.split("/")[0] for a in (s.cli_v4, *s.cli_v4_extra))
        self.cli_v6_addrs = tuple(a.split("/")[0] for a in (s.cli_v6, *s.cli_v6_extra))
        self.cl2_v4 = s.cl2_v4.split("/")[0]
        self.cl2_v6 = s.cl2_v6.split("/")[0]
        self.sinkhole_v4 = s.sinkhole_v4.split("/")[0]
        self.sinkhole_v6 = s.sinkhole_v6.split("/")[0]
        self.tmpdir: Path | None = None
        # What exists right now, recorded as soon as it exists: close() undoes exactly this.
        self._made_ns: list[str] = []
        self._pids: dict[str, tuple[int, str | None]] = {}  # service -> (pid, start time)
        self._services: dict[str, subprocess.Popen[Any]] = {}  # children (temporary labs)
        self._procs: list[subprocess.Popen[Any]] = []
        self._entered = False
        self.complete = False
        # Anything a caller wants kept in the record with the lab (the CLI's attach facts).
        self.extra: dict[str, Any] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self.build()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def build(self) -> Lab:
        """Build everything; on any failure, remove what was made and raise."""
        if self._entered:
            raise LabError("a Lab can be built only once")
        self._entered = True
        try:
            self._make_tmpdir()
            self._make_namespaces()
            if self.spec.unbound:
                self._start_unbound()
            if self.spec.sinkhole:
                self._start_sinkhole()
            self._wait_ready()
            self.complete = True
            self._save_record()
        except BaseException as exc:
            try:
                self.close()
            except Exception as cleanup_exc:
                exc.add_note(f"and cleaning up the half-built lab failed too: {cleanup_exc!r}")
            raise
        return self

    def close(self) -> None:
        """Stop the processes, delete the namespaces, remove the work folder. Safe to call
        again, and from another process than the one that built the lab (from_record()).

        Every step is attempted even if an earlier one failed; what failed stays recorded (so
        a second close() retries it) and is raised at the end. Only "already gone" is ignored.
        """
        errors: list[BaseException] = []

        def attempt(step: Any, *args: Any) -> bool:
            try:
                step(*args)
            except OSError as exc:
                if exc.errno not in _GONE_ERRNOS:
                    errors.append(exc)
                    return False
            except Exception as exc:
                errors.append(exc)
                return False
            return True

        # Processes first, gently (unbound's pidfile and log live in the work folder); a
        # process left inside a namespace would keep it alive after its name is deleted.
        for proc in list(self._procs):
            if attempt(_stop_process, proc):
                self._procs.remove(proc)
        for key in list(self._pids):
            proc = self._services.get(key)
            if attempt(_stop_process, proc) if proc else attempt(_stop_pid, *self._pids[key]):
                self._services.pop(key, None)
                del self._pids[key]
        for ns in list(self._made_ns):
            if attempt(delete_netns, ns):
                self._made_ns.remove(ns)
                if self.tmpdir is not None:
                    attempt(self._save_record)
        # The work folder goes last and only once the namespaces are gone: its owner file
        # (temporary labs) or its record (named labs) says whose namespaces they are.
        if self.tmpdir is not None and not self._made_ns and attempt(shutil.rmtree, self.tmpdir):
            self.tmpdir = None
        self.complete = False
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup(f"closing lab {self.id} failed", errors)

    # ---- the record: what exists, for another process ----------------------------------------

    def _save_record(self) -> None:
        assert self.tmpdir is not None
        data = {
            "version": RECORD_VERSION,
            "name": self.id,
            "spec": self.spec.to_json(),
            "namespaces": self._made_ns,
            "services": {k: list(v) for k, v in self._pids.items()},
            "complete": self.complete,
            "extra": self.extra,
        }
        tmp = self.tmpdir / f".{RECORD_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.tmpdir / RECORD_FILE)

    def save(self) -> None:
        """Write the record now (after a caller changed `extra`)."""
        self._save_record()

    @classmethod
    def from_record(cls, workdir: Path) -> Lab | None:
        """The named lab whose work folder this is, as its record says, or None if there is
        no record. close() on it removes what the record lists."""
        try:
            data = json.loads((workdir / RECORD_FILE).read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise LabError(f"{workdir / RECORD_FILE}: unreadable ({e})") from e
        if data.get("version") != RECORD_VERSION:
            raise LabError(f"{workdir / RECORD_FILE}: record version {data.get('version')}")
        lab = cls(LabSpec.from_json(data["spec"]), name=data["name"], workdir=workdir)
        lab.tmpdir = workdir
        lab._entered = True
        lab._made_ns = list(data["namespaces"])
        lab._pids = {k: (int(v[0]), v[1]) for k, v in data["services"].items()}
        lab.complete = bool(data["complete"])
        lab.extra = dict(data.get("extra") or {})
        return lab

    def problems(self) -> list[str]:
        """What is wrong with a lab that should be up: missing namespaces, dead processes."""
        out = [f"namespace {ns} is missing" for ns in self.namespaces() if ns not in list_netns()]
        for key, (pid, _) in self._pids.items():
            if not self.service_running(key):
                out.append(f"{key} (pid {pid}) is not running")
        if not self.complete:
            out.insert(0, "it was never completely built")
        return out

    def namespaces(self) -> list[str]:
        """Every namespace this lab has when complete: the switch, then the hosts."""
        return [self.sw_ns, *(h.ns for h in self.hosts)]

    @property
    def made_namespaces(self) -> list[str]:
        """The namespaces this lab made and has not removed yet."""
        return list(self._made_ns)

    def service_pid(self, key: str) -> int | None:
        return self._pids[key][0] if key in self._pids else None

    def service_running(self, key: str) -> bool:
        return key in self._pids and self._ended(key) is None

    @property
    def unbound_pid(self) -> int | None:
        return self.service_pid("unbound")

    @property
    def sinkhole_pid(self) -> int | None:
        return self.service_pid("sinkhole")

    # ---- building ------------------------------------------------------------------------------

    def _make_tmpdir(self) -> None:
        if self.persistent:
            assert self.workdir is not None
            self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.tmpdir = self.workdir
        else:
            self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{self.id}-"))
            # Written before any namespace exists: cleanup_stale() reads it to spare live labs.
            pid = os.getpid()
            (self.tmpdir / "owner").write_text(f"{pid} {_proc_start_time(pid)}\n")
        self._save_record()

    def _add_netns(self, ns: str) -> None:
        """Record, then make: a crash between the two leaves a record of a namespace that
        does not exist, which close() skips; never a namespace nobody knows about."""
        self._made_ns.append(ns)
        self._save_record()
        try:
            _ip("netns", "add", ns, timeout=self.spec.ip_timeout)
        except LabError as e:
            if "File exists" in str(e):  # someone else's, made just now: not ours to delete
                self._made_ns.remove(ns)
                self._save_record()
            raise

    def _make_namespaces(self) -> None:
        t = self.spec.ip_timeout
        taken = sorted(set(self.namespaces()) & set(list_netns()))
        if taken:
            raise LabError(
                f"network namespace {', '.join(taken)} already exists and is not this lab's: "
                f"choose another lab name (or remove it with 'ip netns delete' if it is a "
                f"leftover)"
            )
        # The switch: no address and no IPv6 of its own, so nothing on the wire comes from it.
        self._add_netns(self.sw_ns)
        self._run_ns(self.sw_ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                                  "net.ipv6.conf.default.disable_ipv6=1"])  # fmt: skip
        _ip("-n", self.sw_ns, "link", "add", "name", self.bridge, "type", "bridge",
            "stp_state", "0", "mcast_snooping", "0", timeout=t)  # fmt: skip
        _ip("-n", self.sw_ns, "link", "set", self.bridge, "up", timeout=t)
        for h in self.hosts:
            self._add_netns(h.ns)
            # Both ends are created directly inside their namespaces: the root namespace never
            # sees them, so there is nothing to clean up outside the namespaces.
            _ip("link", "add", "name", h.ifname, "netns", h.ns, "type", "veth",
                "peer", "name", h.port, "netns", self.sw_ns, timeout=t)  # fmt: skip
            _ip("-n", self.sw_ns, "link", "set", h.port, "master", self.bridge, timeout=t)
            _ip("-n", self.sw_ns, "link", "set", h.port, "up", timeout=t)
            _ip("-n", h.ns, "link", "set", "lo", "up", timeout=t)
            for addr in h.v4:
                _ip("-n", h.ns, "addr", "add", addr, "dev", h.ifname, timeout=t)
            for i, addr in enumerate(h.v6):
                # nodad: usable at once, instead of "tentative" (unbindable) for about a second.
                extra = ["preferred_lft", "0"] if i else []
                # Extra addresses are deprecated (preferred_lft 0): still bindable, but source
                # selection skips them, so an unbound socket sends from the first address, as
                # it does over IPv4 (where the extras are secondaries). Without this the kernel
                # picks the newest of equal addresses, i.e. the last extra one.
                _ip("-n", h.ns, "addr", "add", addr, "dev", h.ifname, "nodad", *extra,
                    timeout=t)  # fmt: skip
            _ip("-n", h.ns, "link", "set", h.ifname, "up", timeout=t)

    def _run_ns(self, ns: str, argv: Sequence[str]) -> str:
        cp = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                            timeout=self.spec.ip_timeout)  # fmt: skip
        if cp.returncode != 0:
            raise LabError(f"{' '.join(argv)} in {ns}: {cp.stderr.strip() or cp.returncode}")
        return cp.stdout

    def _spawn(self, key: str, ns: str, argv: Sequence[str]) -> None:
        """Start a service inside a namespace, its output in <key>.stderr.

        A temporary lab's services are its children (start_new_session: a Ctrl-C at the
        terminal reaches pytest only, and close() then stops them in order). A named lab's
        outlive the command that built it: `setsid -f` detaches them, and a small shell
        writes the pid it then becomes before exec'ing the service.
        """
        assert self.tmpdir is not None
        stderr = self.tmpdir / f"{key}.stderr"
        if not self.persistent:
            with open(stderr, "wb") as err:
                # `ip netns exec` execs the command, so the child's pid is the service's own.
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", ns, *argv],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            self._services[key] = proc
            self._pids[key] = (proc.pid, _proc_start_time(proc.pid))
            self._save_record()
            return
        pidfile = self.tmpdir / f"{key}.service-pid"
        pidfile.unlink(missing_ok=True)
        script = 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec "$@"'
        with open(stderr, "wb") as err:
            subprocess.run(
                ["ip", "netns", "exec", ns, "setsid", "-f", "sh", "-c", script, str(pidfile),
                 *argv],
                stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT, check=True,
                timeout=self.spec.ip_timeout,
            )  # fmt: skip
        deadline = time.monotonic() + self.spec.start_timeout
        while not pidfile.exists():
            if time.monotonic() > deadline:
                raise LabError(f"{key} in {ns} did not start within {self.spec.start_timeout}s")
            time.sleep(0.01)
        pid = int(pidfile.read_text())
        self._pids[key] = (pid, _proc_start_time(pid))
        self._save_record()

    def _ended(self, key: str) -> str | None:
        """None while the service runs, else how it ended."""
        proc = self._services.get(key)
        if proc is not None:
            rc = proc.poll()
            return None if rc is None else f"exited with status {rc}"
        pid, start = self._pids[key]
        return None if start is not None and _proc_start_time(pid) == start else "exited"

    def unbound_config(self) -> str:
        """The unbound.conf text this lab runs with."""
        assert self.tmpdir is not None, "the lab is not up"
        return unbound_config(
            self.tmpdir, [self.res_v4, self.res_v6], self.spec.zones, self.spec.root_zone_type,
            self.spec.unbound_extra,
        )  # fmt: skip

    def _start_unbound(self) -> None:
        assert self.tmpdir is not None
        self.unbound_conf.write_text(self.unbound_config())
        # unbound writes its startup errors to stderr before it opens its logfile.
        self._spawn("unbound", self.res_ns, ["unbound", "-d", "-c", str(self.unbound_conf)])

    @property
    def sinkhole_log(self) -> Path:
        assert self.tmpdir is not None, "the lab is not up"
        return self.tmpdir / "sinkhole.jsonl"

    def _start_sinkhole(self) -> None:
        argv = [sys.executable, "-m", "ccxdp.lab.core", "sinkhole", "--iface", self.snk_if,
                "--log", str(self.sinkhole_log), "--ready", str(self.tmpdir / "sinkhole.ready"),
                "--addr", self.sinkhole_v4, "--addr", self.sinkhole_v6]  # fmt: skip
        for port in self.spec.sinkhole_tcp_ports:
            argv += ["--tcp-port", str(port)]
        self._spawn("sinkhole", self.snk_ns, argv)

    def _wait_ready(self) -> None:
        if self.spec.unbound:
            self._probe_unbound(lambda: self._ended("unbound"))
        if self.spec.sinkhole:
            assert self.tmpdir is not None
            deadline = time.monotonic() + self.spec.start_timeout
            while not (self.tmpdir / "sinkhole.ready").exists():
                ended = self._ended("sinkhole")
                if ended is not None or time.monotonic() > deadline:
                    said = (self.tmpdir / "sinkhole.stderr").read_text(errors="replace")
                    said = "; ".join(ln for ln in said.strip().splitlines()[-3:])
                    raise LabError(
                        f"the sinkhole in {self.snk_ns} "
                        f"{ended or f'was not ready within {self.spec.start_timeout}s'}"
                        + (f": {said}" if said else "")
                    )
                time.sleep(0.01)

    def native_tx_peer(self) -> None:
        """Put a pass-everything XDP program on the switch port facing the resolver: a veth in
        native mode drops its XDP_TX frames unless its peer runs an XDP program too. A real
        NIC needs nothing of the kind. The program goes away with the switch namespace."""
        from pyroute2 import IPRoute

        from ccxdp.datapath import libbpf

        insns = libbpf.pack_insn(0xB7, dst=0, imm=2) + libbpf.pack_insn(0x95)  # r0 = PASS
        fd = libbpf.prog_load(6, insns, name="lab_peer_pass")  # 6: BPF_PROG_TYPE_XDP
        try:
            with IPRoute(netns=self.sw_ns) as ipr:
                idx = ipr.link_lookup(ifname=self.res_port)[0]
                ipr.link("set", index=idx, IFLA_XDP={"attrs": [("IFLA_XDP_FD", fd),
                                                               ("IFLA_XDP_FLAGS", 4)]})
        finally:
            libbpf.close(fd)

    # ---- running things ----------------------------------------------------------------------

    def _ns(self, host: str) -> str:
        """Accept a role ("res", "cli", "cl2", "snk", "sw") as short for this lab's namespace."""
        if host == SWITCH_ROLE:
            return self.sw_ns
        return self._by_role[host].ns if host in self._by_role else host

    def _argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self._ns(host), *argv]

    def _cmd_kw(self, kw: dict[str, Any]) -> dict[str, Any]:
        if self.spec.env and "env" not in kw:
            kw["env"] = {**os.environ, **self.spec.env}
        return kw

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen(argv) on a host; close() stops it (SIGTERM, then SIGKILL)."""
        proc = subprocess.Popen(self._argv(host, argv), **self._cmd_kw(kw))
        self._procs.append(proc)
        return proc

    def _exchange(
        self, q: dns.message.Message, server: str, port: int, family: int, source: str | None,
        timeout: float, tcp: bool, client: str,
    ) -> dns.message.Message | None:  # fmt: skip
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        with netns_socket(self._ns(client), af, kind) as sock:
            if source is not None:
                sock.bind((source, 0))
            try:
                if tcp:
                    sock.settimeout(timeout)
                    sock.connect((server, port))
                    sock.setblocking(False)  # dnspython wants a non-blocking connected socket
                    return dns.query.tcp(q, server, timeout=timeout, port=port, sock=sock)
                sock.setblocking(False)
                return dns.query.udp(
                    q, server, timeout=timeout, port=port, sock=sock, ignore_unexpected=True
                )
            except (dns.exception.Timeout, TimeoutError):
                return None

    # ---- what the sinkhole saw -----------------------------------------------------------------

    def sinkhole_contacts(self) -> list[dict[str, Any]]:
        """Every contact the sinkhole recorded, oldest first (see read_contacts)."""
        return read_contacts(self.sinkhole_log)


def read_contacts(path: Path) -> list[dict[str, Any]]:
    """The sinkhole's records: {"time", "proto": "tcp"|"udp"|"icmp", "source", "source_port",
    "destination", "destination_port"} (ports null for icmp). A line being written is skipped."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


# ---- the sinkhole's recorder (runs inside the sinkhole namespace) ------------------------------

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def parse_contact(
    frame: bytes, addresses: set[str], now: float | None = None
) -> dict[str, Any] | None:
    """The record of a frame that contacts one of `addresses`: a TCP SYN (a connection
    attempt), a UDP datagram or an ICMP echo request; None for anything else (ARP, neighbour
    discovery, replies, non-first fragments)."""
    off = 12
    ethertype = int.from_bytes(frame[off : off + 2], "big")
    while ethertype in (0x8100, 0x88A8):  # VLAN tags
        off += 4
        ethertype = int.from_bytes(frame[off : off + 2], "big")
    ip = frame[off + 2 :]
    if ethertype == 0x0800 and len(ip) >= 20:
        ihl = (ip[0] & 0x0F) * 4
        if int.from_bytes(ip[6:8], "big") & 0x1FFF:
            return None  # a later fragment: its first one was judged
        proto, src, dst, l4 = ip[9], ip[12:16], ip[16:20], ip[ihl:]
        icmp_echo = (1, 8)
    elif ethertype == 0x86DD and len(ip) >= 40:
        proto, src, dst, l4 = ip[6], ip[8:24], ip[24:40], ip[40:]
        icmp_echo = (58, 128)
    else:
        return None
    dst_ip = str(ipaddress.ip_address(dst))
    if dst_ip not in addresses:
        return None
    rec: dict[str, Any] = {"proto": None, "source": str(ipaddress.ip_address(src)),
                           "source_port": None, "destination": dst_ip, "destination_port": None}
    if proto == 6 and len(l4) >= 14 and l4[13] & 0x12 == 0x02:  # SYN without ACK
        rec["proto"] = "tcp"
    elif proto == 17 and len(l4) >= 8:
        rec["proto"] = "udp"
    elif (proto, l4[:1]) == (icmp_echo[0], bytes([icmp_echo[1]])):
        rec["proto"] = "icmp"
    else:
        return None
    if rec["proto"] != "icmp":
        rec["source_port"] = int.from_bytes(l4[0:2], "big")
        rec["destination_port"] = int.from_bytes(l4[2:4], "big")
    t = time.time() if now is None else now
    stamp = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
    return {"time": stamp.replace("+00:00", "Z"), **rec}


def _sinkhole_main(argv: Sequence[str]) -> int:
    """Record every contact with the sinkhole addresses; complete TCP handshakes on a few
    ports, so that a client's connect() succeeds there as it would with a real sinkhole."""
    import argparse
    import select

    p = argparse.ArgumentParser(prog="python -m ccxdp.lab.core sinkhole")
    p.add_argument("--iface", required=True)
    p.add_argument("--log", required=True, type=Path)
    p.add_argument("--ready", required=True, type=Path)
    p.add_argument("--addr", action="append", required=True)
    p.add_argument("--tcp-port", action="append", type=int, default=[])
    args = p.parse_args(argv)
    addresses = {str(ipaddress.ip_address(a)) for a in args.addr}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    capture.bind((args.iface, 0))
    listeners = []
    for addr in sorted(addresses):
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        for port in args.tcp_port:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(64)
            s.setblocking(False)
            listeners.append(s)
    with open(args.log, "a", encoding="utf-8") as log:
        args.ready.write_text(f"{os.getpid()}\n")
        while True:
            readable, _, _ = select.select([capture, *listeners], [], [])
            for s in readable:
                if s is capture:
                    frame, meta = capture.recvfrom(65535)
                    if meta[2] == PACKET_OUTGOING:
                        continue
                    rec = parse_contact(frame, addresses)
                    if rec is not None:
                        log.write(json.dumps(rec, sort_keys=True) + "\n")
                        log.flush()
                else:
                    with contextlib.suppress(BlockingIOError, ConnectionError):
                        conn, _ = s.accept()
                        conn.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["sinkhole"]:
        sys.exit(_sinkhole_main(sys.argv[2:]))
    sys.exit("usage: python -m ccxdp.lab.core sinkhole"
             " --iface IF --log FILE --ready FILE --addr A...")
