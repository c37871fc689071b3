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

import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from ccxdp.errors import LabError
from ccxdp.lab.addressing import SWITCH_ROLE, check_lab_addr
from ccxdp.lab.client import Resolver
from ccxdp.lab.netns import (
    GONE_ERRNOS,
    delete_netns,
    list_netns,
    netns_socket,
    proc_start_time,
    run_ip,
    stop_pid,
    stop_process,
)
from ccxdp.lab.sinkhole import read_contacts
from ccxdp.lab.unbound import DEFAULT_ZONES, Zone, unbound_config

RECORD_FILE = "lab.json"  # a lab's record of what it made, in its work folder
RECORD_VERSION = 1


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
                ip = check_lab_addr(addr.split("/")[0], version=version)
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


class Lab(Resolver):
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
                if exc.errno not in GONE_ERRNOS:
                    errors.append(exc)
                    return False
            except Exception as exc:
                errors.append(exc)
                return False
            return True

        # Processes first, gently (unbound's pidfile and log live in the work folder); a
        # process left inside a namespace would keep it alive after its name is deleted.
        for proc in list(self._procs):
            if attempt(stop_process, proc):
                self._procs.remove(proc)
        for key in list(self._pids):
            proc = self._services.get(key)
            if attempt(stop_process, proc) if proc else attempt(stop_pid, *self._pids[key]):
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
            (self.tmpdir / "owner").write_text(f"{pid} {proc_start_time(pid)}\n")
        self._save_record()

    def _add_netns(self, ns: str) -> None:
        """Record, then make: a crash between the two leaves a record of a namespace that
        does not exist, which close() skips; never a namespace nobody knows about."""
        self._made_ns.append(ns)
        self._save_record()
        try:
            run_ip("netns", "add", ns, timeout=self.spec.ip_timeout)
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
        run_ip("-n", self.sw_ns, "link", "add", "name", self.bridge, "type", "bridge",
            "stp_state", "0", "mcast_snooping", "0", timeout=t)  # fmt: skip
        run_ip("-n", self.sw_ns, "link", "set", self.bridge, "up", timeout=t)
        for h in self.hosts:
            self._add_netns(h.ns)
            # Both ends are created directly inside their namespaces: the root namespace never
            # sees them, so there is nothing to clean up outside the namespaces.
            run_ip("link", "add", "name", h.ifname, "netns", h.ns, "type", "veth",
                "peer", "name", h.port, "netns", self.sw_ns, timeout=t)  # fmt: skip
            run_ip("-n", self.sw_ns, "link", "set", h.port, "master", self.bridge, timeout=t)
            run_ip("-n", self.sw_ns, "link", "set", h.port, "up", timeout=t)
            run_ip("-n", h.ns, "link", "set", "lo", "up", timeout=t)
            for addr in h.v4:
                run_ip("-n", h.ns, "addr", "add", addr, "dev", h.ifname, timeout=t)
            for i, addr in enumerate(h.v6):
                # nodad: usable at once, instead of "tentative" (unbindable) for about a second.
                extra = ["preferred_lft", "0"] if i else []
                # Extra addresses are deprecated (preferred_lft 0): still bindable, but source
                # selection skips them, so an unbound socket sends from the first address, as
                # it does over IPv4 (where the extras are secondaries). Without this the kernel
                # picks the newest of equal addresses, i.e. the last extra one.
                run_ip("-n", h.ns, "addr", "add", addr, "dev", h.ifname, "nodad", *extra,
                    timeout=t)  # fmt: skip
            run_ip("-n", h.ns, "link", "set", h.ifname, "up", timeout=t)

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
            self._pids[key] = (proc.pid, proc_start_time(proc.pid))
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
        self._pids[key] = (pid, proc_start_time(pid))
        self._save_record()

    def _ended(self, key: str) -> str | None:
        """None while the service runs, else how it ended."""
        proc = self._services.get(key)
        if proc is not None:
            rc = proc.poll()
            return None if rc is None else f"exited with status {rc}"
        pid, start = self._pids[key]
        return None if start is not None and proc_start_time(pid) == start else "exited"

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
        argv = [sys.executable, "-m", "ccxdp.lab.sinkhole", "sinkhole", "--iface", self.snk_if,
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
