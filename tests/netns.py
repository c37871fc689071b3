# SPDX-License-Identifier: GPL-2.0
"""Network-namespace lab for ccxdp's end-to-end tests.

A Lab is two fresh namespaces joined by one veth pair, and a real unbound in the resolver one:

    <id>-cli  [if <id>-cli] ======= veth ======= [if <id>-res]  <id>-res
    client    198.18.0.2/24 (+ .3)                resolver 198.18.0.1/24, unbound :53
              fd00:cc::2/64 (+ ::3)                        fd00:cc::1/64, control 127.0.0.1:8953

<id> is the prefix ("cx") plus 6 random hex digits, so concurrent runs never collide and
cleanup_stale() can recognise leftovers of crashed runs by name alone.

Nothing can leave the lab: every address is checked to lie in 198.18.0.0/15 or fd00::/8, the
namespaces have no route but their connected /24 and /64, and unbound never recurses: it answers
from its local zones and REFUSES every other name (`local-zone: "." refuse`).

Cleanup is by construction: each resource is recorded the moment it exists, and close() undoes
exactly what was recorded (processes, then namespaces, which take their veth ends with them, then
the temp dir), so a failure half-way through __enter__ leaves nothing behind.
"""

import contextlib
import ctypes
import errno
import ipaddress
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

NETNS_RUN_DIR = Path("/run/netns")  # where `ip netns add` bind-mounts named namespaces
LAB_NET_V4 = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range
LAB_NET_V6 = ipaddress.ip_network("fd00::/8")  # unique local addresses
UNBOUND_CONTROL_PORT = 8953  # fixed: each resolver namespace has its own isolated loopback
CLONE_NEWNET = 0x40000000
STOP_TIMEOUT = 5.0  # seconds a process gets after SIGTERM before SIGKILL

# The only errors cleanup may swallow: the thing it wanted to remove is already gone.
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH})

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


class LabError(RuntimeError):
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
    zones: tuple[Zone, ...] = DEFAULT_ZONES
    # Zone type for "." i.e. for every name outside `zones`: refuse gives REFUSED, which a
    # filter test can tell apart from an NXDOMAIN and which never makes unbound recurse.
    root_zone_type: str = "refuse"
    # Raw lines appended to unbound's server: clause (tests inject broken config through it).
    unbound_extra: tuple[str, ...] = ()
    start_timeout: float = 10.0  # seconds unbound gets to answer its first query
    ip_timeout: float = 30.0  # seconds any one `ip`/`unbound-control` command may take
    env: dict[str, str] = field(default_factory=dict)  # extra environment for run()/popen()

    def __post_init__(self) -> None:
        # id = prefix + 6 hex; "<id>-res" must fit IFNAMSIZ-1 = 15 characters as an interface name.
        if not re.fullmatch(r"[a-z]{1,5}", self.prefix):
            raise ValueError(f"prefix must be 1-5 lowercase letters, got {self.prefix!r}")
        for addr in (self.res_v4, self.cli_v4, *self.cli_v4_extra):
            _check_lab_addr(addr.split("/")[0], version=4)
        for addr in (self.res_v6, self.cli_v6, *self.cli_v6_extra):
            _check_lab_addr(addr.split("/")[0], version=6)
        if not self.zones:
            raise ValueError("a lab needs at least one zone (its first zone is the probe name)")


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
    def parse(cls, output: str, returncode: int) -> "DigResult":
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
    """Refuse any address outside the lab ranges: tests must never send traffic elsewhere."""
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
    """Remove what crashed runs left: namespaces `<prefix><6 hex>-res|-cli` and their temp dirs.

    Only labs whose owner process is gone are touched, so a lab of a concurrent run survives.
    Returns what was removed (namespace names and temp dir paths).
    """
    root = Path(tmp_root or tempfile.gettempdir())
    lab_id = rf"{re.escape(prefix)}[0-9a-f]{{6}}"
    removed: list[str] = []
    for ns in list_netns():
        m = re.fullmatch(rf"({lab_id})-(res|cli)", ns)
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


class Lab:
    """Client and resolver namespaces, a veth between them, unbound in the resolver one.

    Use as a context manager; all names and addresses are known as soon as it is constructed:
        ids:        id, res_ns, cli_ns, res_if, cli_if
        addresses:  res_v4, res_v6, cli_v4, cli_v6 (first client addresses, no prefix length),
                    cli_v4_addrs, cli_v6_addrs (all client addresses)
        unbound:    unbound_pid (after __enter__), unbound_conf, unbound_log, tmpdir
    """

    def __init__(self, spec: LabSpec | None = None) -> None:
        self.spec = spec or LabSpec()
        while True:  # a name already in use would make `ip netns add` fail, so pick another
            self.id = f"{self.spec.prefix}{secrets.token_hex(3)}"
            if not any(n.startswith(self.id) for n in list_netns()):
                break
        self.res_ns = f"{self.id}-res"
        self.cli_ns = f"{self.id}-cli"
        # Interface names equal their namespace names: unique, easy to find, 12 chars <= 15.
        self.res_if = self.res_ns
        self.cli_if = self.cli_ns
        s = self.spec
        self.res_v4 = s.res_v4.split("/")[0]
        self.res_v6 = s.res_v6.split("/")[0]
        self.cli_v4_addrs = tuple(a.split("/")[0] for a in (s.cli_v4, *s.cli_v4_extra))
        self.cli_v6_addrs = tuple(a.split("/")[0] for a in (s.cli_v6, *s.cli_v6_extra))
        self.cli_v4 = self.cli_v4_addrs[0]
        self.cli_v6 = self.cli_v6_addrs[0]
        self.tmpdir: Path | None = None
        self.unbound_pid: int | None = None
        # What exists right now, recorded as soon as it exists: close() undoes exactly this.
        self._made_ns: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._unbound: subprocess.Popen[Any] | None = None
        self._entered = False

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> "Lab":
        if self._entered:
            raise LabError("a Lab can be entered only once")
        self._entered = True
        try:
            self._make_tmpdir()
            self._make_namespaces()
            self._start_unbound()
            self._wait_ready()
        except BaseException as exc:
            try:
                self.close()
            except Exception as cleanup_exc:
                exc.add_note(f"and cleaning up the half-built lab failed too: {cleanup_exc!r}")
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the processes, delete the namespaces, remove the temp dir. Safe to call again.

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

        # Processes first: unbound's pidfile and log live in the temp dir, and a process inside
        # a namespace would keep it alive after its name is deleted.
        for proc in [*self._procs, *([self._unbound] if self._unbound else [])]:
            if attempt(_stop_process, proc):
                if proc is self._unbound:
                    self._unbound = None
                else:
                    self._procs.remove(proc)
        for ns in list(self._made_ns):
            if attempt(delete_netns, ns):
                self._made_ns.remove(ns)
        # The temp dir goes last and only once the namespaces are gone: its owner file is what
        # tells cleanup_stale() whose namespaces they are.
        if self.tmpdir is not None and not self._made_ns and attempt(shutil.rmtree, self.tmpdir):
            self.tmpdir = None
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup(f"closing lab {self.id} failed", errors)

    def _make_tmpdir(self) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{self.id}-"))
        # Written before any namespace exists: cleanup_stale() reads it to spare live labs.
        pid = os.getpid()
        (self.tmpdir / "owner").write_text(f"{pid} {_proc_start_time(pid)}\n")

    def _make_namespaces(self) -> None:
        t = self.spec.ip_timeout
        for ns in (self.res_ns, self.cli_ns):
            _ip("netns", "add", ns, timeout=t)
            self._made_ns.append(ns)
        # Both ends are created directly inside their namespaces: the root namespace never
        # sees them, so there is nothing to clean up outside the namespaces.
        _ip("link", "add", "name", self.res_if, "netns", self.res_ns, "type", "veth",
            "peer", "name", self.cli_if, "netns", self.cli_ns, timeout=t)  # fmt: skip
        s = self.spec
        for ns, ifname, v4, v6 in (
            (self.res_ns, self.res_if, [s.res_v4], [s.res_v6]),
            (self.cli_ns, self.cli_if, [s.cli_v4, *s.cli_v4_extra], [s.cli_v6, *s.cli_v6_extra]),
        ):
            _ip("-n", ns, "link", "set", "lo", "up", timeout=t)
            for addr in v4:
                _ip("-n", ns, "addr", "add", addr, "dev", ifname, timeout=t)
            for i, addr in enumerate(v6):
                # nodad: usable at once, instead of "tentative" (unbindable) for about a second.
                extra = ["preferred_lft", "0"] if i else []
                # The extra addresses are deprecated (preferred_lft 0): still bindable, but source
                # selection skips them, so an unbound socket sends from the first address, as
                # it does over IPv4 (where the extras are secondaries). Without this the kernel
                # picks the newest of equal addresses, i.e. the last extra one.
                _ip("-n", ns, "addr", "add", addr, "dev", ifname, "nodad", *extra, timeout=t)
            _ip("-n", ns, "link", "set", ifname, "up", timeout=t)

    @property
    def unbound_conf(self) -> Path:
        assert self.tmpdir is not None, "the lab is not up"
        return self.tmpdir / "unbound.conf"

    @property
    def unbound_log(self) -> Path:
        assert self.tmpdir is not None, "the lab is not up"
        return self.tmpdir / "unbound.log"

    def unbound_config(self) -> str:
        """The unbound.conf text this lab runs with."""
        assert self.tmpdir is not None, "the lab is not up"
        d = self.tmpdir
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
            f"    interface: {self.res_v4}",
            f"    interface: {self.res_v6}",
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
            f'    local-zone: "." {self.spec.root_zone_type}',
        ]
        for zone in self.spec.zones:
            lines.append(f'    local-zone: "{zone.name}" {zone.type}')
            for record in zone.records:
                quote = "'" if '"' in record else '"'
                lines.append(f"    local-data: {quote}{record}{quote}")
        lines += [f"    {line}" for line in self.spec.unbound_extra]
        lines += [
            "remote-control:",
            "    control-enable: yes",
            "    control-interface: 127.0.0.1",
            f"    control-port: {UNBOUND_CONTROL_PORT}",
            "    control-use-cert: no",
        ]
        return "\n".join(lines) + "\n"

    def _start_unbound(self) -> None:
        assert self.tmpdir is not None
        self.unbound_conf.write_text(self.unbound_config())
        # unbound writes its startup errors to stderr before it opens its logfile.
        with open(self.tmpdir / "unbound.stderr", "wb") as err:
            # `ip netns exec` execs the command, so the child's pid is unbound's own pid.
            # start_new_session: a Ctrl-C at the terminal reaches pytest only, and close()
            # then stops unbound in order.
            self._unbound = subprocess.Popen(
                ["ip", "netns", "exec", self.res_ns, "unbound", "-d", "-c", str(self.unbound_conf)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.unbound_pid = self._unbound.pid

    def _unbound_failure(self, what: str) -> LabError:
        assert self.tmpdir is not None
        texts = []
        for f in ("unbound.stderr", "unbound.log"):
            with contextlib.suppress(FileNotFoundError):
                texts.append(f"--- {f}:\n" + (self.tmpdir / f).read_text()[-2000:])
        return LabError(f"unbound in {self.res_ns} {what}\n" + "\n".join(texts))

    def _wait_ready(self) -> None:
        """Return once unbound answers over IPv4 and over IPv6, from the client namespace.

        The probes (SOA of the first zone) are counted by unbound like any query, so tests
        measure deltas. They are sent v4 first then v6, each until answered: unbound runs one
        thread and answers each socket's queries in order, so once the last probe is answered
        no earlier probe is still pending and counts are stable when __enter__ returns.
        """
        assert self._unbound is not None
        probe = dns.message.make_query(self.spec.zones[0].name, "SOA")
        deadline = time.monotonic() + self.spec.start_timeout
        for server in (self.res_v4, self.res_v6):
            while self.exchange(probe, server=server, timeout=0.2) is None:
                if self._unbound.poll() is not None:
                    raise self._unbound_failure(f"exited with status {self._unbound.returncode}")
                if time.monotonic() > deadline:
                    raise self._unbound_failure(
                        f"did not answer on {server} within {self.spec.start_timeout}s"
                    )

    # ---- running things ----------------------------------------------------------------------

    def _ns(self, ns: str) -> str:
        """Accept "res"/"cli" as short names for this lab's namespaces."""
        return {"res": self.res_ns, "cli": self.cli_ns}.get(ns, ns)

    def _cmd_kw(self, kw: dict[str, Any]) -> dict[str, Any]:
        if self.spec.env and "env" not in kw:
            kw["env"] = {**os.environ, **self.spec.env}
        return kw

    def run(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run(argv) inside namespace `ns` ("res", "cli" or a full name).

        Defaults: text output captured, timeout 60 s, check=False; any keyword overrides them.
        """
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(["ip", "netns", "exec", self._ns(ns), *argv], **self._cmd_kw(kw))

    def popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen(argv) inside namespace `ns`; close() stops it (SIGTERM, SIGKILL)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self._ns(ns), *argv], **self._cmd_kw(kw))
        self._procs.append(proc)
        return proc

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
    ) -> DigResult:
        """dig from the client namespace (to the resolver by default); parsed, never raises on
        a DNS-level failure or a timeout (DigResult.timed_out), only if dig itself fails.
        `server` decides the family when given; else `family` picks the resolver's address."""
        if server is not None:
            family = ipaddress.ip_address(server).version
        server = _check_lab_addr(server or (self.res_v4 if family == 4 else self.res_v6), family)
        argv = ["dig", f"-{family}", f"@{server}", name, rdtype]
        argv += [f"+time={max(1, math.ceil(timeout))}", f"+tries={tries}"]
        if source is not None:
            argv += ["-b", _check_lab_addr(source, family)]
        argv += list(extra_args)
        # HOME points at the lab's temp dir so that no ~/.digrc can change dig's output.
        env = {**os.environ, **self.spec.env, "HOME": str(self.tmpdir)}
        cp = self.run(self.cli_ns, argv, env=env, timeout=(timeout + 1) * tries + 10)
        if cp.returncode not in (0, 9):  # 9: no reply from any server
            raise LabError(f"{' '.join(argv)} exited {cp.returncode}: {cp.stderr}{cp.stdout}")
        return DigResult.parse(cp.stdout, cp.returncode)

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
    ) -> dns.message.Message | None:
        """Send a prepared query from the client namespace; the response, or None on timeout.

        `server` decides the family when given; else `family` picks the resolver's address.
        """
        if server is not None:
            family = ipaddress.ip_address(server).version
        server = _check_lab_addr(server or (self.res_v4 if family == 4 else self.res_v6), family)
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        with netns_socket(self.cli_ns, af, kind) as sock:
            if source is not None:
                sock.bind((_check_lab_addr(source, family), 0))
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

    def query(
        self,
        name: str,
        rdtype: str = "A",
        family: int = 4,
        source: str | None = None,
        timeout: float = 1.0,
        server: str | None = None,
        tcp: bool = False,
    ) -> dns.message.Message | None:
        """A query for name/rdtype with dnspython, from inside the client namespace."""
        q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
        return self.exchange(
            q, server=server, family=family, source=source, timeout=timeout, tcp=tcp
        )

    # ---- what unbound saw --------------------------------------------------------------------

    def unbound_stats(self) -> dict[str, int]:
        """Integer counters of `unbound-control stats_noreset` (run in the resolver namespace).

        Keys as unbound prints them ("total.num.queries", "num.query.type.A", ...), plus each
        "total.X" also as "X" (so "num.queries"). Non-integer values (time.*, averages) are
        left out. statistics-cumulative makes every counter monotonic for the lab's lifetime.
        """
        cp = self.run(
            self.res_ns,
            ["unbound-control", "-c", str(self.unbound_conf), "stats_noreset"],
            timeout=self.spec.ip_timeout,
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


def lab_fixture(spec: LabSpec | None = None) -> Iterator[Lab]:
    """Generator for a conftest to wrap, e.g.

    @pytest.fixture(scope="module")
    def lab():
        yield from lab_fixture()
    """
    with Lab(spec) as lab:
        yield lab
