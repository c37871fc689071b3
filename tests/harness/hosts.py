"""The end-to-end tests' hosts, from one place: a namespace lab by default, or two real hosts
(this one as the resolver, a client reached through a command) with CCXDP_E2E_TOPOLOGY=hosts,
as vagrant/e2e.sh sets it. The product's lab is ccxdp.lab; this is test harness only."""

from __future__ import annotations

import binascii
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccxdp.errors import LabError
from ccxdp.lab.addressing import check_lab_addr
from ccxdp.lab.client import Resolver
from ccxdp.lab.netns import stop_process
from ccxdp.lab.topology import Lab, LabSpec
from ccxdp.lab.unbound import DEFAULT_ZONES, Zone, unbound_config


def lab_fixture(spec: LabSpec | None = None) -> Iterator[Lab]:
    """Generator for a conftest to wrap, e.g.

    @pytest.fixture(scope="module")
    def lab():
        yield from lab_fixture()
    """
    with Lab(spec) as lab:
        yield lab


# ---- two real hosts: the Vagrant topology -----------------------------------------------------

# Runs on the client with only Python's standard library: sends one DNS message (hex in
# argv[1]) and prints the reply in hex, or "timeout". Over UDP it waits for a datagram from the
# server's address and port carrying the query's ID, as dnspython's ignore_unexpected does.
_REMOTE_EXCHANGE = r"""
import socket, sys, time
wire = bytes.fromhex(sys.argv[1]); server = sys.argv[2]; port = int(sys.argv[3])
family = socket.AF_INET6 if sys.argv[4] == "6" else socket.AF_INET; source = sys.argv[5]
timeout = float(sys.argv[6]); tcp = sys.argv[7] == "tcp"
deadline = time.monotonic() + timeout
s = socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
if source:
    s.bind((source, 0))
def left():
    return max(deadline - time.monotonic(), 0.001)
def recv_exact(n):
    b = b""
    while len(b) < n:
        s.settimeout(left())
        chunk = s.recv(n - len(b))
        if not chunk:
            raise TimeoutError
        b += chunk
    return b
try:
    if tcp:
        s.settimeout(left())
        s.connect((server, port))
        s.sendall(len(wire).to_bytes(2, "big") + wire)
        print(recv_exact(int.from_bytes(recv_exact(2), "big")).hex())
    else:
        s.sendto(wire, (server, port))
        want = socket.inet_pton(family, server)
        while True:
            s.settimeout(left())
            data, peer = s.recvfrom(65535)
            same = socket.inet_pton(family, peer[0]) == want and peer[1] == port
            if same and data[:2] == wire[:2]:
                print(data.hex())
                break
except (TimeoutError, ConnectionError):
    print("timeout")
"""


@dataclass(frozen=True)
class HostsSpec:
    """Two real hosts: this one is the resolver, the client is reached through a command.

    client_exec runs one shell command line, given as its last argument, on the client:
    `ssh -i KEY root@198.18.0.20` on Vagrant, `ip netns exec NS sh -c` for a namespace.
    """

    resolver_if: str
    resolver_v4: str
    resolver_v6: str
    client_exec: tuple[str, ...]
    client_v4: tuple[str, ...]  # the first one is the default source
    client_v6: tuple[str, ...]
    client_if: str = ""
    resolver_netns: str | None = None  # the resolver's interface lives in this namespace
    zones: tuple[Zone, ...] = DEFAULT_ZONES
    start_timeout: float = 20.0

    def __post_init__(self) -> None:
        check_lab_addr(self.resolver_v4, 4)
        check_lab_addr(self.resolver_v6, 6)
        for a in self.client_v4:
            check_lab_addr(a, 4)
        for a in self.client_v6:
            check_lab_addr(a, 6)
        if not self.client_v4 or not self.client_v6:
            raise ValueError("the client needs at least one IPv4 and one IPv6 address")
        if not self.client_exec:
            raise ValueError("no command to run things on the client")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HostsSpec:
        def need(key: str) -> str:
            value = env.get(key, "").strip()
            if not value:
                raise LabError(f"CCXDP_E2E_TOPOLOGY=hosts needs {key} (see vagrant/README.md)")
            return value

        def addrs(key: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
            try:
                return [ipaddress.ip_address(a) for a in re.split(r"[\s,]+", need(key))]
            except ValueError as e:
                raise LabError(f"{key}: {e}") from e

        res = addrs("CCXDP_E2E_RESOLVER")
        cli = addrs("CCXDP_E2E_CLIENT")
        res4 = [str(a) for a in res if a.version == 4]
        res6 = [str(a) for a in res if a.version == 6]
        if len(res4) != 1 or len(res6) != 1:
            raise LabError("CCXDP_E2E_RESOLVER: give one IPv4 and one IPv6 address")
        try:
            return cls(
                resolver_if=need("CCXDP_E2E_RESOLVER_IF"),
                resolver_v4=res4[0],
                resolver_v6=res6[0],
                client_exec=tuple(shlex.split(need("CCXDP_E2E_CLIENT_EXEC"))),
                client_v4=tuple(str(a) for a in cli if a.version == 4),
                client_v6=tuple(str(a) for a in cli if a.version == 6),
                client_if=env.get("CCXDP_E2E_CLIENT_IF", ""),
                resolver_netns=env.get("CCXDP_E2E_RESOLVER_NETNS") or None,
            )
        except ValueError as e:
            raise LabError(f"CCXDP_E2E_*: {e}") from e


class HostsLab(Resolver):
    """The test API of Lab on two real hosts (the Vagrant VMs): this host is the resolver and
    runs the lab's unbound on its interface, with the same zones and query log; the client's
    commands and DNS messages go through HostsSpec.client_exec.

    The resolver's interface (and lo) must run no XDP program when the lab starts, and any
    program a test leaves there is removed when it closes: the machine is left as found.
    """

    def __init__(self, spec: HostsSpec) -> None:
        self.spec = spec
        self.id = f"cxh{secrets.token_hex(3)}"
        self.zones = spec.zones
        self.start_timeout = spec.start_timeout
        self.res_ns = spec.resolver_netns
        self.res_if = spec.resolver_if
        self.cli_ns = None
        self.cli_if = spec.client_if
        self.res_v4 = spec.resolver_v4
        self.res_v6 = spec.resolver_v6
        self.cli_v4_addrs = spec.client_v4
        self.cli_v6_addrs = spec.client_v6
        self.tmpdir: Path | None = None
        self._unbound: subprocess.Popen[Any] | None = None
        self._procs: list[subprocess.Popen[Any]] = []
        self._restore_xdp: list[str] = []

    @property
    def unbound_pid(self) -> int | None:
        return self._unbound.pid if self._unbound else None

    def __enter__(self) -> HostsLab:
        try:
            self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{self.id}-"))
            self._check_resolver()
            self.unbound_conf.write_text(
                unbound_config(
                    self.tmpdir, [self.res_v4, self.res_v6], self.zones,
                    control=str(self.tmpdir / "unbound.ctl"),
                )  # fmt: skip
            )
            with open(self.tmpdir / "unbound.stderr", "wb") as err:
                self._unbound = subprocess.Popen(
                    self._argv("res", ["unbound", "-d", "-c", str(self.unbound_conf)]),
                    stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            unbound = self._unbound

            def ended() -> str | None:
                rc = unbound.poll()
                return None if rc is None else f"exited with status {rc}"

            self._probe_unbound(ended)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _xdp_ids(self, ifname: str) -> list[int]:
        from pyroute2 import IPRoute

        with IPRoute(netns=self.res_ns) as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                where = f" in {self.res_ns}" if self.res_ns else ""
                raise LabError(f"no interface {ifname}{where} (CCXDP_E2E_RESOLVER_IF)")
            xdp = ipr.get_links(found[0])[0].get_attr("IFLA_XDP")
            prog = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
            return [prog] if prog else []

    def _check_resolver(self) -> None:
        for ifname in (self.res_if, "lo"):
            if self._xdp_ids(ifname):
                raise LabError(
                    f"{ifname} already runs XDP program {self._xdp_ids(ifname)[0]}: the "
                    f"end-to-end tests need it free (and remove whatever they leave there)"
                )
            self._restore_xdp.append(ifname)
        out = self.run("res", ["ip", "-j", "addr", "show", "dev", self.res_if]).stdout
        have = {a["local"] for link in json.loads(out or "[]") for a in link["addr_info"]}
        missing = {self.res_v4, self.res_v6} - have
        if missing:
            raise LabError(f"{self.res_if} lacks {', '.join(sorted(missing))}")

    def close(self) -> None:
        for proc in [*self._procs, *([self._unbound] if self._unbound else [])]:
            stop_process(proc)
        self._procs.clear()
        self._unbound = None
        for ifname in self._restore_xdp:  # no XDP there when we started: none when we leave
            for mode in ("xdpgeneric", "xdpdrv"):
                self.run("res", ["ip", "link", "set", "dev", ifname, mode, "off"], check=True)
        self._restore_xdp.clear()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def native_tx_peer(self) -> None:
        """Nothing to do: a (virtual) NIC sends XDP_TX frames without help from its peer."""

    def _argv(self, host: str, argv: Sequence[str]) -> list[str]:
        if host in ("res", self.res_ns):
            return (["ip", "netns", "exec", self.res_ns] if self.res_ns else []) + list(argv)
        if host != "cli":
            raise LabError(f"no host {host!r} here: only 'res' and 'cli'")
        return [*self.spec.client_exec, shlex.join(argv)]

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(self._argv(host, argv), **kw)
        self._procs.append(proc)
        return proc

    def _exchange_wire(
        self, wire: bytes, server: str, port: int, family: int, source: str | None,
        timeout: float, tcp: bool, client: str,
    ) -> bytes | None:  # fmt: skip
        argv = ["python3", "-c", _REMOTE_EXCHANGE, wire.hex(), server, str(port), str(family),
                source or "", str(timeout), "tcp" if tcp else "udp"]  # fmt: skip
        cp = self.run(client, argv, timeout=timeout + 30)
        out = cp.stdout.strip()
        if cp.returncode != 0 or not out:
            raise LabError(f"the DNS exchange on the client failed: {cp.stderr.strip()}")
        return None if out == "timeout" else binascii.unhexlify(out)


def from_env(env: Mapping[str, str] | None = None) -> Lab | HostsLab:
    """The end-to-end tests' topology, not yet entered: CCXDP_E2E_TOPOLOGY=netns (the default)
    builds a namespace Lab; CCXDP_E2E_TOPOLOGY=hosts uses two real hosts described by
    CCXDP_E2E_RESOLVER, CCXDP_E2E_RESOLVER_IF, [CCXDP_E2E_RESOLVER_NETNS], CCXDP_E2E_CLIENT,
    CCXDP_E2E_CLIENT_IF and CCXDP_E2E_CLIENT_EXEC (see vagrant/README.md)."""
    env = os.environ if env is None else env
    topology = env.get("CCXDP_E2E_TOPOLOGY", "netns") or "netns"
    if topology == "netns":
        return Lab()
    if topology == "hosts":
        return HostsLab(HostsSpec.from_env(env))
    raise LabError(f"CCXDP_E2E_TOPOLOGY={topology!r}: use 'netns' or 'hosts'")
