# SPDX-License-Identifier: GPL-2.0
"""A client's view of the lab's resolver: dig, kdig and dnspython queries from a chosen source
address, and their results. `Resolver` is the test API every topology offers."""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from ccxdp.errors import LabError
from ccxdp.lab.addressing import check_lab_addr, fqdn
from ccxdp.lab.unbound import QUERY_LOG, Zone


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


class Resolver:
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
        server = check_lab_addr(server or (self.res_v4 if family == 4 else self.res_v6), family)
        argv = ["dig", f"-{family}", f"@{server}", name, rdtype]
        argv += [f"+time={max(1, math.ceil(timeout))}", f"+tries={tries}"]
        if source is not None:
            argv += ["-b", check_lab_addr(source, family)]
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
        server = check_lab_addr(server or (self.res_v4 if family == 4 else self.res_v6), family)
        if source is not None:
            source = check_lab_addr(source, family)
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
                m = QUERY_LOG.match(line.rstrip("\n"))
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
        want = fqdn(name)
        return sum(
            1
            for src, qname, qtype, _ in self.unbound_queries()
            if fqdn(qname) == want
            and (rdtype is None or qtype == rdtype.upper())
            and (source is None or ipaddress.ip_address(src) == ipaddress.ip_address(source))
        )
