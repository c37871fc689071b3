# SPDX-License-Identifier: GPL-2.0
"""Tests of the namespace lab (ccxdp/lab/) itself: the topology, the test API, cleanup."""

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import dns.rcode
import dns.rdatatype
import pytest

from ccxdp.errors import LabError
from ccxdp.lab.client import DigResult
from ccxdp.lab.netns import cleanup_stale, delete_netns, list_netns
from ccxdp.lab.topology import Lab, LabSpec
from tests.harness.hosts import lab_fixture


def _netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root: the lab creates network namespaces and veth pairs"
    if shutil.which("ip") is None:
        return "ip netns unavailable: iproute2's ip is not installed"
    cp = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if cp.returncode != 0:
        return f"ip netns unavailable: {cp.stderr.strip()}"
    return None


F = TypeVar("F", bound=Callable[..., object])
_skip_reason = _netns_unavailable()
lab_test = [
    pytest.mark.root,
    pytest.mark.netns,
    pytest.mark.skipif(_skip_reason is not None, reason=_skip_reason or ""),
]


def mark_lab(fn: F) -> F:
    """Mark a test as a lab test: root + netns markers, skipped where namespaces are unavailable."""
    for mark in lab_test:
        fn = mark(fn)
    return fn


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if _skip_reason is not None:
        pytest.skip(_skip_reason)
    yield from lab_fixture()


def _leftovers(lab_id: str) -> list[str]:
    """Everything of lab `lab_id` that still exists: namespaces, links, temp dirs, processes."""
    found = [f"netns {n}" for n in list_netns() if n.startswith(lab_id)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    found += [f"link {line}" for line in links.stdout.splitlines() if lab_id in line]
    found += [f"dir {d}" for d in Path(tempfile.gettempdir()).glob(f"{lab_id}-*")]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if lab_id in cmdline:
            found.append(f"process {proc.name}: {cmdline}")
    return found


def _ip_json(ns: str, *args: str) -> list[dict[str, object]]:
    cp = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(cp.stdout)


# ---- the lab as built -------------------------------------------------------------------------


@mark_lab
def test_lab_comes_up(lab: Lab) -> None:
    roles = ("sw", "res", "cli", "cl2", "snk")
    assert lab.namespaces() == [f"{lab.id}-{r}" for r in roles]
    assert set(lab.namespaces()) <= set(list_netns())
    assert lab.res_ns == f"{lab.id}-res" and lab.cli_ns == f"{lab.id}-cli"
    assert len(lab.res_if) <= 15 and len(lab.cli_if) <= 15
    for ns, ifname, v4, v6 in (
        (lab.res_ns, lab.res_if, {"198.18.0.1"}, {"fd00:cc::1"}),
        (lab.cli_ns, lab.cli_if, {"198.18.0.2", "198.18.0.3"}, {"fd00:cc::2", "fd00:cc::3"}),
        (lab.cl2_ns, lab.cl2_if, {"198.18.0.4"}, {"fd00:cc::4"}),
        (lab.snk_ns, lab.snk_if, {"198.18.0.53"}, {"fd00:cc::53"}),
    ):
        links = {link["ifname"]: link for link in _ip_json(ns, "link")}
        assert set(links) == {"lo", ifname}
        assert "UP" in links["lo"]["flags"] and "UP" in links[ifname]["flags"]
        (addrs,) = _ip_json(ns, "addr", "show", "dev", ifname)
        got = {(a["family"], a["local"]) for a in addrs["addr_info"] if a["scope"] == "global"}
        assert got == {("inet", a) for a in v4} | {("inet6", a) for a in v6}
        # Only the connected networks: no route leads out of the lab.
        routes = _ip_json(ns, "route") + _ip_json(ns, "-6", "route")
        assert {r["dst"] for r in routes} <= {"198.18.0.0/24", "fd00:cc::/64", "fe80::/64"}
    # The switch: every host's port on one bridge, and no address of its own, not even IPv6.
    ports = {link["ifname"]: link for link in _ip_json(lab.sw_ns, "link")}
    assert set(ports) == {"lo", lab.bridge, *(f"{lab.id}-s{r}" for r in roles[1:])}
    for port in set(ports) - {"lo", lab.bridge}:
        assert ports[port]["master"] == lab.bridge and "UP" in ports[port]["flags"]
    assert all(not a["addr_info"] for a in _ip_json(lab.sw_ns, "addr", "show", "dev", lab.bridge))
    # The veth ends exist only inside the namespaces.
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert lab.id not in root_links.stdout
    # unbound runs, and in the resolver namespace.
    assert lab.unbound_pid is not None
    ns_inode = os.stat(f"/run/netns/{lab.res_ns}").st_ino
    assert os.stat(f"/proc/{lab.unbound_pid}/ns/net").st_ino == ns_inode
    assert Path(f"/proc/{lab.unbound_pid}/comm").read_text().strip() == "unbound"
    assert lab.tmpdir is not None and lab.unbound_conf.exists()


@mark_lab
def test_dig_v4_gets_exact_local_records(lab: Lab) -> None:
    cases = {
        ("www.lab.example", "A"): ["198.18.1.10"],
        ("www.lab.example", "AAAA"): ["fd00:cc:1::10"],
        ("mail.lab.example", "A"): ["198.18.1.11"],
        ("a.b.c.d.lab.example", "A"): ["198.18.1.12"],
        ("evil.test", "A"): ["198.18.2.1"],
        ("x.y.evil.test", "A"): ["198.18.2.2"],
        ("bad.test", "A"): ["198.18.3.1"],
        ("www.bad.test", "A"): ["198.18.3.2"],
    }
    for (name, rdtype), rdata in cases.items():
        r = lab.dig(name, rdtype)
        assert (r.status, r.timed_out, r.rdata()) == ("NOERROR", False, rdata), r.output
        assert r.answers[0].name == name + "." and r.answers[0].rdtype == rdtype
        assert "aa" in r.flags  # answered from unbound's local zone, not from a cache


@mark_lab
def test_dig_v6_gets_exact_local_records(lab: Lab) -> None:
    r = lab.dig("www.lab.example", "AAAA", family=6)
    assert (r.status, r.rdata()) == ("NOERROR", ["fd00:cc:1::10"]), r.output
    assert "SERVER: fd00:cc::1#53" in r.output
    r = lab.dig("a.b.c.d.lab.example", "A", family=6, source="fd00:cc::3")
    assert (r.status, r.rdata()) == ("NOERROR", ["198.18.1.12"]), r.output


@mark_lab
def test_names_outside_the_zones(lab: Lab) -> None:
    # `local-zone: "." refuse`: every name outside all zones is REFUSED, immediately and
    # without unbound trying any upstream (it has none and the lab has no route out).
    for family in (4, 6):
        r = lab.dig("www.example.com", family=family)
        assert (r.status, r.answers, r.timed_out) == ("REFUSED", [], False), r.output
    # A name inside a static zone but without data: NXDOMAIN, as static zones do.
    assert lab.dig("nothing.lab.example").status == "NXDOMAIN"
    assert lab.dig("z.evil.test").status == "NXDOMAIN"
    # The name exists but not this type: NOERROR with no answer (NODATA).
    r = lab.dig("mail.lab.example", "AAAA")
    assert (r.status, r.answers) == ("NOERROR", [])
    # Under test. but outside our zones: unbound's built-in static "test." zone answers
    # NXDOMAIN (RFC 6761 default zone), which is more specific than our "." refuse.
    assert lab.dig("other.test").status == "NXDOMAIN"


@mark_lab
def test_dnspython_query_from_chosen_source(lab: Lab) -> None:
    before = lab.unbound_queries_for("mail.lab.example", source="198.18.0.3")
    r = lab.query("mail.lab.example", "A", source="198.18.0.3")
    assert r is not None and r.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["198.18.1.11"]
    assert lab.unbound_queries_for("mail.lab.example", source="198.18.0.3") == before + 1
    # Same over IPv6, and over TCP.
    r = lab.query("www.lab.example", "AAAA", family=6, source="fd00:cc::3", tcp=True)
    assert r is not None
    assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["fd00:cc:1::10"]


@mark_lab
def test_default_sources_are_the_first_client_addresses(lab: Lab) -> None:
    before = {s: lab.unbound_queries_for("bad.test", source=s) for s in lab.cli_v4_addrs}
    before |= {s: lab.unbound_queries_for("bad.test", source=s) for s in lab.cli_v6_addrs}
    lab.query("bad.test")
    lab.query("bad.test", family=6)
    lab.dig("bad.test")
    lab.dig("bad.test", family=6)
    after = {s: lab.unbound_queries_for("bad.test", source=s) for s in before}
    assert {s: after[s] - before[s] for s in before} == {
        "198.18.0.2": 2,
        "198.18.0.3": 0,
        "fd00:cc::2": 2,
        "fd00:cc::3": 0,
    }


@mark_lab
def test_query_counts_are_exact(lab: Lab) -> None:
    name = "a.b.c.d.lab.example"
    stats0 = lab.unbound_stats()
    log0 = lab.unbound_queries_for(name)
    log0_aaaa = lab.unbound_queries_for(name, rdtype="AAAA")
    # Reading the counters is not a query: they do not move on their own.
    assert lab.unbound_stats()["num.queries"] == stats0["num.queries"]
    assert stats0["num.queries"] == stats0["total.num.queries"]

    assert lab.dig(name).status == "NOERROR"
    assert lab.dig(name, "AAAA", family=6).status == "NOERROR"
    assert lab.query(name) is not None
    assert lab.query(name, "AAAA", family=6, source="fd00:cc::3") is not None
    assert lab.query(name, tcp=True) is not None
    assert lab.dig("www.example.com").status == "REFUSED"  # refused ones count too

    stats1 = lab.unbound_stats()
    assert stats1["num.queries"] - stats0["num.queries"] == 6
    assert lab.unbound_queries_for(name) - log0 == 5
    assert lab.unbound_queries_for(name, rdtype="AAAA") - log0_aaaa == 2
    delta = {k: stats1[k] - stats0.get(k, 0) for k in stats1 if k.startswith("num.answer.rcode.")}
    assert delta["num.answer.rcode.NOERROR"] == 5 and delta["num.answer.rcode.REFUSED"] == 1
    assert stats1["num.query.tcp"] - stats0["num.query.tcp"] == 1
    assert stats1["num.query.ipv6"] - stats0["num.query.ipv6"] == 2


@mark_lab
def test_unanswered_queries_time_out(lab: Lab) -> None:
    # 198.18.0.99 is inside the lab's /24 but nobody has it: ARP fails, nothing leaves the lab.
    r = lab.dig("www.lab.example", server="198.18.0.99")
    assert (r.status, r.timed_out, r.returncode, r.answers) == (None, True, 9, [])
    assert lab.query("www.lab.example", server="198.18.0.99", timeout=0.3) is None


@mark_lab
def test_addresses_outside_the_lab_are_refused(lab: Lab) -> None:
    with pytest.raises(ValueError, match="outside the lab"):
        lab.dig("www.lab.example", server="192.0.2.1")
    with pytest.raises(ValueError, match="outside the lab"):
        lab.query("www.lab.example", server="2001:db8::1")


@mark_lab
def test_second_client_resolves_from_its_own_address(lab: Lab) -> None:
    before = lab.unbound_queries_for("news.lab.example", source="198.18.0.4")
    assert lab.dig("news.lab.example", client="cl2").rdata() == ["198.18.1.13"]
    r = lab.query("news.lab.example", "AAAA", family=6, client="cl2")
    assert r is not None and [rr.to_text() for rrset in r.answer for rr in rrset] == [
        "fd00:cc:1::13"
    ]
    assert lab.unbound_queries_for("news.lab.example", source="198.18.0.4") == before + 1
    assert lab.unbound_queries_for("news.lab.example", source="fd00:cc::4") >= 1


@mark_lab
def test_sinkhole_records_every_contact(lab: Lab) -> None:
    before = len(lab.sinkhole_contacts())
    # A port it listens on: the connection completes. Another: refused, but recorded too.
    ok = lab.run("cli", ["bash", "-c", "exec 3<>/dev/tcp/198.18.0.53/80"])
    assert ok.returncode == 0, ok.stderr
    refused = lab.run("cl2", ["bash", "-c", "exec 3<>/dev/tcp/fd00:cc::53/9"])
    assert refused.returncode != 0 and "refused" in refused.stderr
    # A UDP datagram (a DNS query nobody answers there).
    assert lab.query("x.test", server="198.18.0.53", source="198.18.0.3", timeout=0.2) is None
    deadline = time.monotonic() + 5
    while len(lab.sinkhole_contacts()) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    got = [(c["proto"], c["source"], c["destination"], c["destination_port"])
           for c in lab.sinkhole_contacts()[before:]]  # fmt: skip
    assert got == [
        ("tcp", "198.18.0.2", "198.18.0.53", 80),
        ("tcp", "fd00:cc::4", "fd00:cc::53", 9),
        ("udp", "198.18.0.3", "198.18.0.53", 53),
    ]
    assert all(c["time"].endswith("Z") for c in lab.sinkhole_contacts())


@mark_lab
def test_named_lab_is_found_and_removed_through_its_record(tmp_path: Path) -> None:
    """A named lab (ccxdp lab up) outlives the call that built it: its processes are not that
    process's children, and another process removes exactly what its record lists."""
    workdir = tmp_path / "lab" / "tn"
    lab = Lab(name=f"tn{os.urandom(2).hex()}", workdir=workdir).build()
    try:
        assert lab.dig("www.lab.example").rdata() == ["198.18.1.10"]
        for key in ("unbound", "sinkhole"):
            pid = lab.service_pid(key)
            assert pid is not None
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            assert ppid != os.getpid()
        found = Lab.from_record(workdir)
        assert found is not None and found.problems() == []
        assert found.namespaces() == lab.namespaces() == found.made_namespaces
        assert found.unbound_pid == lab.unbound_pid
        assert found.sinkhole_log == lab.sinkhole_log
        found.close()
        assert _leftovers(lab.id) == [] and not workdir.exists()
        assert Lab.from_record(workdir) is None
    finally:
        lab.close()  # nothing left to do: safe
    assert _leftovers(lab.id) == []


# ---- cleanup -------------------------------------------------------------------------------------


@mark_lab
def test_exit_leaves_nothing_and_close_is_idempotent() -> None:
    with Lab() as lab:
        assert lab.dig("www.lab.example").rdata() == ["198.18.1.10"]
        sleeper = lab.popen("cli", ["sleep", "600"])  # a test's own process: stopped too
        pid, tmpdir = lab.unbound_pid, lab.tmpdir
        assert pid is not None and tmpdir is not None
        assert _leftovers(lab.id)
    assert _leftovers(lab.id) == []
    assert not Path(f"/proc/{pid}").exists() and not tmpdir.exists()
    assert sleeper.returncode is not None
    lab.close()
    lab.close()


@mark_lab
def test_bad_unbound_config_leaves_nothing() -> None:
    lab = Lab(LabSpec(unbound_extra=("no-such-option: yes",)))
    with pytest.raises(LabError, match=r"unbound in cx[0-9a-f]{6}-res exited") as info:
        with lab:
            pytest.fail("the lab came up with a broken unbound config")
    assert "no-such-option" in str(info.value)  # unbound's own message is in the error
    assert _leftovers(lab.id) == []


@mark_lab
@pytest.mark.parametrize(
    "step", ["_make_namespaces", "_start_unbound", "_start_sinkhole", "_wait_ready"]
)
def test_failure_inside_enter_leaves_nothing(step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = getattr(Lab, step)

    def fail_after(self: Lab) -> None:
        real(self)  # the step completes, so its resources exist, then the next one "fails"
        raise RuntimeError(f"injected after {step}")

    monkeypatch.setattr(Lab, step, fail_after)
    lab = Lab()
    with pytest.raises(RuntimeError, match=f"injected after {step}"):
        with lab:
            pass
    assert _leftovers(lab.id) == []
    lab.close()


@mark_lab
def test_cleanup_stale_removes_only_orphans(lab: Lab) -> None:
    orphan = "cx" + os.urandom(3).hex()
    stale = [f"{orphan}-res", f"{orphan}-cli"]
    unrelated = f"{orphan}-xyz"  # right prefix, wrong pattern: not the harness's
    for ns in [*stale, unrelated]:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    stale_dir = Path(tempfile.mkdtemp(prefix=f"{orphan}-"))
    (stale_dir / "owner").write_text("999999999 0\n")  # above any pid_max: a dead owner
    sleeper = subprocess.Popen(["ip", "netns", "exec", stale[0], "sleep", "600"])
    try:
        removed = cleanup_stale()
        assert set(stale) | {str(stale_dir)} <= set(removed)
        assert not set(stale) & set(list_netns()) and not stale_dir.exists()
        assert sleeper.wait(5) == -9  # the orphan's process was killed with its namespace
        assert unrelated in list_netns()
        # The live lab is untouched and still answers.
        assert {lab.res_ns, lab.cli_ns} <= set(list_netns())
        assert lab.dig("www.lab.example").rdata() == ["198.18.1.10"]
    finally:
        sleeper.kill()
        sleeper.wait()
        for ns in [*stale, unrelated]:
            delete_netns(ns)
        shutil.rmtree(stale_dir, ignore_errors=True)


# ---- no root needed --------------------------------------------------------------------------


def test_spec_rejects_addresses_outside_the_lab_and_long_prefixes() -> None:
    with pytest.raises(ValueError, match="outside the lab"):
        LabSpec(cli_v4_extra=("10.0.0.3/24",))
    with pytest.raises(ValueError, match="outside the lab"):
        LabSpec(res_v6="2001:db8::1/64")
    with pytest.raises(ValueError, match="not an IPv4"):
        LabSpec(res_v4="fd00:cc::1/64")
    with pytest.raises(ValueError, match="prefix"):
        LabSpec(prefix="toolong")


def test_dig_result_parse() -> None:
    out = (
        ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n"
        ";; flags: qr aa rd ra; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 1\n\n"
        ";; ANSWER SECTION:\n"
        "x.lab.example.\t3600\tIN\tA\t198.18.1.1\n"
        'x.lab.example.\t3600\tIN\tTXT\t"a b"\n\n'
        ";; Query time: 0 msec\n"
    )
    r = DigResult.parse(out, 0)
    assert (r.status, r.flags, r.timed_out) == ("NOERROR", {"qr", "aa", "rd", "ra"}, False)
    assert r.rdata() == ["198.18.1.1", '"a b"'] and r.rdata("a") == ["198.18.1.1"]
    assert dns.rdatatype.from_text(r.answers[1].rdtype) == dns.rdatatype.TXT
    timeout = DigResult.parse(";; communications error to 198.18.0.99#53: timed out\n", 9)
    assert (timeout.status, timeout.timed_out, timeout.answers) == (None, True, [])
