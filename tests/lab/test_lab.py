"""`ccxdp lab` through the real console script, the lab's sinkhole recorder, the end-to-end
topology switch (CCXDP_E2E_TOPOLOGY=hosts) exercised in namespaces, and what can be checked of
the Vagrant harness on a machine where no VM boots.

Every test that builds something checks that the machine is left exactly as before: no
namespace, link, pin, process or lab file of its own remains, even after a failure in the
middle of `lab up` or a `lab up` killed midway."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from ccxdp.errors import LabError
from ccxdp.lab.netns import list_netns
from ccxdp.lab.sinkhole import parse_contact
from ccxdp.lab.topology import Lab, LabSpec, check_lab_name
from tests.conftest import one_line_error
from tests.harness.hosts import HostsLab, HostsSpec, from_env

REPO = Path(__file__).resolve().parents[2]
SINK = {"198.18.0.53", "fd00:cc::53"}
netns = [pytest.mark.root, pytest.mark.netns]


# ---- no root needed: the recorder's parser, specs, names, the topology switch's parsing -------


def unbound_pids_in(ns: str) -> list[int]:
    """unbound processes inside network namespace ns (pgrep alone would see every unbound of
    the machine: network namespaces do not separate process ids)."""
    want = os.stat(f"/run/netns/{ns}").st_ino
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and (proc / "comm").read_text().strip() == "unbound"
                    and os.stat(proc / "ns" / "net").st_ino == want):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _eth(payload) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:53") / payload)


def test_parse_contact_records_attempts_datagrams_and_pings() -> None:
    t = 1795800000.25
    syn = parse_contact(_eth(IP(src="198.18.0.2", dst="198.18.0.53") / TCP(sport=40000, dport=443,
                                                                          flags="S")), SINK, t)
    assert syn == {"time": "2026-11-27T17:20:00.250Z", "proto": "tcp", "source": "198.18.0.2",
                   "source_port": 40000, "destination": "198.18.0.53", "destination_port": 443}
    udp = parse_contact(_eth(IPv6(src="fd00:cc::2", dst="fd00:cc::53") / UDP(sport=5000,
                                                                             dport=53)), SINK, t)
    assert udp is not None and (udp["proto"], udp["source"], udp["destination_port"]) == (
        "udp", "fd00:cc::2", 53)
    ping = parse_contact(_eth(IP(src="198.18.0.4", dst="198.18.0.53") / ICMP()), SINK, t)
    assert ping is not None and (ping["proto"], ping["source_port"]) == ("icmp", None)
    ping6 = parse_contact(_eth(IPv6(src="fd00:cc::4", dst="fd00:cc::53") / ICMPv6EchoRequest()),
                          SINK, t)
    assert ping6 is not None and ping6["proto"] == "icmp"
    tagged = _eth(Dot1Q(vlan=7) / IP(src="198.18.0.2", dst="198.18.0.53") / TCP(flags="S"))
    assert parse_contact(tagged, SINK, t)["proto"] == "tcp"


def test_parse_contact_ignores_everything_else() -> None:
    others = [
        IP(src="198.18.0.2", dst="198.18.0.53") / TCP(flags="SA"),  # not an attempt
        IP(src="198.18.0.2", dst="198.18.0.53") / TCP(flags="A"),
        IP(src="198.18.0.2", dst="198.18.0.1") / TCP(flags="S"),  # not to the sinkhole
        IP(src="198.18.0.2", dst="198.18.0.53", frag=100) / UDP(),  # a later fragment
        IP(src="198.18.0.2", dst="198.18.0.53") / ICMP(type=0),  # an echo reply
        IPv6(src="fd00:cc::2", dst="fd00:cc::53") / ICMPv6EchoReply(),
        ARP(psrc="198.18.0.2", pdst="198.18.0.53"),
    ]
    assert [parse_contact(_eth(p), SINK) for p in others] == [None] * len(others)
    assert parse_contact(b"\x00" * 10, SINK) is None


def test_spec_keeps_every_host_on_the_resolvers_networks() -> None:
    with pytest.raises(ValueError, match="not in the resolver's network"):
        LabSpec(sinkhole_v4="198.18.7.53/24")
    with pytest.raises(ValueError, match="outside the lab"):
        LabSpec(sinkhole_v6="2001:db8::53/64")
    with pytest.raises(ValueError, match="given twice"):
        LabSpec(cl2_v4="198.18.0.2/24")
    assert LabSpec(second_client=False, cl2_v4="198.18.9.9/24").v4_addresses() == [
        "198.18.0.1/24", "198.18.0.2/24", "198.18.0.3/24", "198.18.0.53/24"]
    spec = LabSpec(unbound_extra=("verbosity: 2",), sinkhole_tcp_ports=(443,))
    assert LabSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_lab_names() -> None:
    assert check_lab_name("cxlab") == "cxlab"
    for bad in ("", "Lab", "1lab", "a-b", "elevenchars", "cx1a2b3c"):
        with pytest.raises(LabError):
            check_lab_name(bad)


HOSTS_ENV = {
    "CCXDP_E2E_TOPOLOGY": "hosts",
    "CCXDP_E2E_RESOLVER": "198.18.0.10 fd00:cc::10",
    "CCXDP_E2E_RESOLVER_IF": "eth1",
    "CCXDP_E2E_CLIENT": "198.18.0.20,198.18.0.21, fd00:cc::20 fd00:cc::21",
    "CCXDP_E2E_CLIENT_IF": "eth1",
    "CCXDP_E2E_CLIENT_EXEC": "ssh -i /root/.ssh/ccxdp-e2e vagrant@198.18.0.20",
}


def test_topology_comes_from_the_environment() -> None:
    assert isinstance(from_env({}), Lab)
    assert isinstance(from_env({"CCXDP_E2E_TOPOLOGY": "netns"}), Lab)
    hosts = from_env(HOSTS_ENV)
    assert isinstance(hosts, HostsLab)
    assert (hosts.res_if, hosts.res_ns, hosts.res_netns_opt) == ("eth1", None, ())
    assert (hosts.res_v4, hosts.res_v6) == ("198.18.0.10", "fd00:cc::10")
    assert hosts.cli_v4_addrs == ("198.18.0.20", "198.18.0.21")
    assert (hosts.cli_v4, hosts.cli_v6) == ("198.18.0.20", "fd00:cc::20")
    assert hosts._argv("cli", ["dig", "@198.18.0.10", "a b"]) == [
        "ssh", "-i", "/root/.ssh/ccxdp-e2e", "vagrant@198.18.0.20", "dig @198.18.0.10 'a b'"]
    assert hosts._argv("res", ["ip", "link"]) == ["ip", "link"]
    with pytest.raises(LabError, match="CCXDP_E2E_TOPOLOGY='vm'"):
        from_env({"CCXDP_E2E_TOPOLOGY": "vm"})
    with pytest.raises(LabError, match="needs CCXDP_E2E_RESOLVER_IF"):
        from_env({**HOSTS_ENV, "CCXDP_E2E_RESOLVER_IF": ""})
    with pytest.raises(LabError, match="outside the lab"):  # never traffic to other addresses
        from_env({**HOSTS_ENV, "CCXDP_E2E_CLIENT": "192.0.2.1 fd00:cc::20"})
    with pytest.raises(LabError, match="one IPv4 and one IPv6"):
        from_env({**HOSTS_ENV, "CCXDP_E2E_RESOLVER": "198.18.0.10"})
    assert HostsSpec.from_env(HOSTS_ENV).resolver_netns is None


# ---- the Vagrant harness, as far as this machine allows ----------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must check the Vagrant harness, but {name} is missing (setup.sh)")
        pytest.skip(f"needs {name} (scripts/setup.sh installs it)")
    return path


def test_vagrantfile_is_valid_ruby() -> None:
    cp = subprocess.run([_tool("ruby"), "-c", REPO / "vagrant" / "Vagrantfile"],
                        capture_output=True, text=True)
    assert cp.returncode == 0 and "Syntax OK" in cp.stdout, cp.stderr


@pytest.mark.parametrize("os_name", ["debian12", "ubuntu2404"])
def test_vagrantfile_validates_without_a_provider(os_name: str, tmp_path: Path) -> None:
    env = {**os.environ, "CCXDP_VAGRANT_OS": os_name, "VAGRANT_HOME": str(tmp_path / "home"),
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    cp = subprocess.run([_tool("vagrant"), "validate", "--ignore-provider"], cwd=REPO / "vagrant",
                        env=env, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "Vagrantfile validated successfully" in cp.stdout
    cp = subprocess.run([_tool("vagrant"), "validate", "--ignore-provider"], cwd=REPO / "vagrant",
                        env={**env, "CCXDP_VAGRANT_OS": "windows"}, capture_output=True,
                        text=True, timeout=120)
    assert cp.returncode != 0 and "choose one of debian12, ubuntu2404" in cp.stderr


def test_vagrant_addresses_are_lab_addresses() -> None:
    """network.env feeds both the Vagrantfile and e2e.sh: every address is one HostsSpec takes."""
    values = {}
    for line in (REPO / "vagrant" / "network.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key] = value.strip('"')
    spec = HostsSpec.from_env({
        **HOSTS_ENV,
        "CCXDP_E2E_RESOLVER": f"{values['RESOLVER_V4']} {values['RESOLVER_V6']}",
        "CCXDP_E2E_CLIENT": f"{values['CLIENT_V4']} {values['CLIENT_V6']}",
    })
    assert len(spec.client_v4) >= 2 and len(spec.client_v6) >= 2  # the tests send from two


# ---- ccxdp lab, for real ------------------------------------------------------------------------


def _lab_name() -> str:
    return f"tl{secrets.token_hex(2)}"  # never a test lab's id (letters + 6 hex)


def machine(name: str, ccxdp) -> dict:
    """Everything of lab `name` and of this ccxdp that exists now, outside its catalog."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    procs = []
    marks = (str(ccxdp.state_dir), f"{name}-")
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            continue
        if proc.name.isdigit() and any(m in cmd for m in marks):
            procs.append(cmd)
    lab_dir = ccxdp.state_dir / "lab"
    return {
        "namespaces": [n for n in list_netns() if n.startswith(f"{name}-")],
        "links": [line for line in links.stdout.splitlines() if f"{name}-" in line],
        "pins": sorted(os.listdir(ccxdp.pin_dir)) if ccxdp.pin_dir.exists() else None,
        "processes": procs,
        "lab files": sorted(str(p) for p in lab_dir.rglob("*")) if lab_dir.exists() else None,
    }


NOTHING = {"namespaces": [], "links": [], "pins": None, "processes": [], "lab files": None}


@pytest.mark.parametrize("mode", ["native", "generic"])
@pytest.mark.root
@pytest.mark.netns
def test_lab_up_status_log_down(ccxdp, mode: str) -> None:
    name = _lab_name()
    assert machine(name, ccxdp) == NOTHING
    up = ccxdp.json("lab", "up", "--name", name, "--mode", mode)
    assert (up["state"], up["created"], up["problems"]) == ("up", True, [])
    assert up["ccxdp"] == {"interface": f"{name}-res", "netns": f"{name}-res", "mode": mode,
                           "prog_id": up["ccxdp"]["prog_id"], "attached": True}
    assert [(h["role"], h["namespace"], h["exists"]) for h in up["hosts"]] == [
        (r, f"{name}-{r}", True) for r in ("res", "cli", "cl2", "snk", "sw")]
    assert {h["role"]: h["addresses"] for h in up["hosts"]}["snk"] == ["198.18.0.53",
                                                                      "fd00:cc::53"]
    assert [s["running"] for s in up["services"]] == [True, True]
    config = ccxdp.json("config", "show")["settings"]
    assert (config["sinkhole_v4"], config["sinkhole_v6"]) == ("198.18.0.53", "fd00:cc::53")

    # A sinkholed name: the infected client gets the sinkhole's address and connects there;
    # the clean client resolves the local zone, unblocked.
    ccxdp.run("block", "add", "panel.emotet.test", "--action", "sinkhole", "--category", "emotet")

    def sh(host: str, script: str) -> str:
        cp = subprocess.run(["ip", "netns", "exec", f"{name}-{host}", "bash", "-c", script],
                            capture_output=True, text=True, timeout=30)
        return cp.stdout.strip()

    dig = "HOME=/nonexistent dig +short +time=1 +tries=1"
    assert sh("cli", f"{dig} @198.18.0.1 panel.emotet.test") == "198.18.0.53"
    assert sh("cli", f"{dig} @fd00:cc::1 panel.emotet.test AAAA") == "fd00:cc::53"
    assert sh("cli", "exec 3<>/dev/tcp/198.18.0.53/443 && echo open") == "open"
    assert sh("cli", "exec 3<>/dev/tcp/fd00:cc::53/8443 || echo refused") == "refused"
    assert sh("cl2", f"{dig} @198.18.0.1 news.lab.example") == "198.18.1.13"
    log = ccxdp.json("lab", "sinkhole-log", "--name", name)
    assert [(c["proto"], c["source"], c["destination"], c["destination_port"]) for c in log] == [
        ("tcp", "198.18.0.2", "198.18.0.53", 443), ("tcp", "fd00:cc::2", "fd00:cc::53", 8443)]
    text = ccxdp.run("lab", "sinkhole-log", "--name", name).stdout
    assert "[fd00:cc::53]:8443" in text and "198.18.0.53:443" in text
    hits = {(s["address"], s["category_name"]): s["hits"] for s in ccxdp.json("stats")["sources"]}
    assert hits == {("198.18.0.2", "emotet"): 1, ("fd00:cc::/64", "emotet"): 1}  # IPv6 per /64

    # Up again: nothing changes, not even the processes.
    again = ccxdp.json("lab", "up", "--name", name, "--mode", mode)
    assert again["created"] is False
    assert (again["ccxdp"], again["services"]) == (up["ccxdp"], up["services"])
    status = ccxdp.run("lab", "status", "--name", name).stdout
    assert f"lab {name}: up" in status and f"{name}-snk" in status

    down = ccxdp.json("lab", "down", "--name", name)
    assert down["removed"] == [f"{name}-{r}" for r in ("sw", "res", "cli", "cl2", "snk")]
    assert down["detached"] and down["settings_restored"] and down["purged"]
    assert machine(name, ccxdp) == NOTHING
    config = ccxdp.json("config", "show")["settings"]
    assert (config["sinkhole_v4"], config["sinkhole_v6"]) == ("0.0.0.0", "::")
    assert ccxdp.json("lab", "status", "--name", name)["state"] == "absent"
    assert ccxdp.json("lab", "down", "--name", name)["removed"] == []  # twice is fine


@pytest.mark.root
@pytest.mark.netns
def test_lab_down_keeps_pins_it_did_not_make(ccxdp, bare_netns) -> None:
    """ccxdp was attached elsewhere before the lab: down detaches the lab and keeps the rest."""
    ccxdp.json("attach", "lo", "--netns", bare_netns)
    name = _lab_name()
    ccxdp.json("lab", "up", "--name", name, "--mode", "generic")
    down = ccxdp.json("lab", "down", "--name", name)
    assert down["detached"] and down["purged"] == []
    attached = [(a["interface"], a["attached"]) for a in ccxdp.json("status")["attachments"]]
    assert attached == [("lo", True)]
    assert [n for n in list_netns() if n.startswith(f"{name}-")] == []


@pytest.mark.root
@pytest.mark.netns
def test_failed_up_leaves_nothing(ccxdp) -> None:
    """A real failure in the middle of up: unbound refuses its configuration after the network
    and the sinkhole exist."""
    name = _lab_name()
    cp = ccxdp.run("lab", "up", "--name", name, "--unbound-option", "no-such-option: yes",
                   check=False)
    one_line_error(cp, 1, f"unbound in {name}-res exited", "unknown keyword 'no-such-option'")
    assert machine(name, ccxdp) == NOTHING


@pytest.mark.root
@pytest.mark.netns
def test_up_refuses_a_name_taken_by_someone_else(ccxdp) -> None:
    name = _lab_name()
    theirs = f"{name}-snk"
    subprocess.run(["ip", "netns", "add", theirs], check=True)
    try:
        cp = ccxdp.run("lab", "up", "--name", name, check=False)
        one_line_error(cp, 1, theirs, "already exists and is not this lab's")
        assert list_netns().count(theirs) == 1  # left alone
        assert machine(name, ccxdp) == {**NOTHING, "namespaces": [theirs]}
        assert ccxdp.json("lab", "down", "--name", name)["removed"] == []
        assert theirs in list_netns()
    finally:
        subprocess.run(["ip", "netns", "delete", theirs], check=False)


def _kill_up_midway(ccxdp, name: str) -> None:
    """Start `lab up` with an unbound that never answers client 1 (access-control deny), so up
    waits for it with the namespaces and both processes made; kill -9 it there."""
    argv = [str(ccxdp.exe), "--pin-dir", str(ccxdp.pin_dir), "--state-dir", str(ccxdp.state_dir),
            "lab", "up", "--name", name, "--unbound-option", "access-control: 198.18.0.2/32 deny"]
    record = ccxdp.state_dir / "lab" / name / "lab.json"
    up = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert up.poll() is None and time.monotonic() < deadline, "up ended before the kill"
            try:
                data = json.loads(record.read_text())
            except (FileNotFoundError, ValueError):
                data = {}
            if set(data.get("services", {})) == {"unbound", "sinkhole"}:
                break
            time.sleep(0.01)
    finally:
        up.send_signal(signal.SIGKILL)
        up.wait()
    assert len(machine(name, ccxdp)["namespaces"]) == 5


@pytest.mark.root
@pytest.mark.netns
def test_down_after_up_was_killed_midway(ccxdp) -> None:
    name = _lab_name()
    _kill_up_midway(ccxdp, name)
    status = ccxdp.json("lab", "status", "--name", name)
    assert status["state"] == "broken"
    assert status["problems"][0] == "it was never completely built"
    assert [s["running"] for s in status["services"]] == [True, True]  # left running by the kill
    down = ccxdp.json("lab", "down", "--name", name)
    assert sorted(down["removed"]) == sorted(f"{name}-{r}" for r in ("sw", "res", "cli", "cl2",
                                                                    "snk"))
    assert machine(name, ccxdp) == NOTHING


@pytest.mark.root
@pytest.mark.netns
def test_up_after_up_was_killed_midway_builds_it_again(ccxdp) -> None:
    name = _lab_name()
    _kill_up_midway(ccxdp, name)
    cp = ccxdp.run("lab", "up", "--name", name, "--mode", "generic")
    assert f"removed a half-built lab {name} first" in cp.stdout
    status = ccxdp.json("lab", "status", "--name", name)
    assert status["state"] == "up" and status["ccxdp"]["attached"]
    ccxdp.run("lab", "down", "--name", name)
    assert machine(name, ccxdp) == NOTHING


@pytest.mark.root
@pytest.mark.netns
def test_lab_commands_need_a_lab_and_valid_names(ccxdp) -> None:
    cp = ccxdp.run("lab", "sinkhole-log", "--name", "nolab", check=False)
    one_line_error(cp, 1, "no lab named nolab")
    cp = ccxdp.run("lab", "up", "--name", "cx1a2b3c", check=False)
    one_line_error(cp, 2, "looks like a test lab's id")
    cp = ccxdp.run("lab", "up", "--name", "x", "--sinkhole-v4", "198.18.5.5", check=False)
    one_line_error(cp, 2, "not in the resolver's network 198.18.0.0/24")
    assert not ccxdp.pin_dir.exists() and not (ccxdp.state_dir / "lab").exists()


# ---- the topology switch, exercised in namespaces ----------------------------------------------

SWITCHED = [
    "tests/e2e/test_filter.py::test_block_add_drops_queries_before_the_resolver",
    "tests/e2e/test_filter.py::test_foreign_xdp_program_is_never_replaced",
    "tests/e2e/test_answers.py::test_dig_kdig_and_dnspython_accept_every_answer",
]


def _rx_packets(net: Lab) -> int:
    cp = subprocess.run(["ip", "-n", net.res_ns, "-j", "-s", "link", "show", net.res_if],
                        capture_output=True, text=True, check=True)
    return json.loads(cp.stdout)[0]["stats64"]["rx"]["packets"]


@pytest.mark.root
@pytest.mark.netns
def test_e2e_tests_run_through_the_hosts_topology() -> None:
    """The end-to-end tests, unchanged, with CCXDP_E2E_TOPOLOGY=hosts pointing at namespaces
    this test built: the resolver's interface in one (no unbound: the tests start their own),
    the client reached through `ip netns exec NS sh -c` where Vagrant uses ssh."""
    spec = LabSpec(unbound=False, second_client=False, sinkhole=False)
    with Lab(spec) as net:
        net.native_tx_peer()  # what a VM's NIC would not need; HostsLab does not do it
        env = {
            **os.environ,
            "CCXDP_E2E_TOPOLOGY": "hosts",
            "CCXDP_E2E_RESOLVER": f"{net.res_v4} {net.res_v6}",
            "CCXDP_E2E_RESOLVER_IF": net.res_if,
            "CCXDP_E2E_RESOLVER_NETNS": net.res_ns,
            "CCXDP_E2E_CLIENT": " ".join([*net.cli_v4_addrs, *net.cli_v6_addrs]),
            "CCXDP_E2E_CLIENT_IF": net.cli_if,
            "CCXDP_E2E_CLIENT_EXEC": f"ip netns exec {net.cli_ns} sh -c",
        }
        before = _rx_packets(net)
        cp = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                             "-o", "addopts=", *SWITCHED], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
        assert cp.returncode == 0, cp.stdout[-4000:] + cp.stderr[-2000:]
        assert "4 passed" in cp.stdout, cp.stdout[-2000:]
        # The tests' queries crossed this lab's resolver interface, not a lab of their own.
        assert _rx_packets(net) - before > 40
        # HostsLab left the resolver's interface as it found it: no XDP program, and the
        # queries it saw went to its own unbound, now gone.
        link = subprocess.run(["ip", "-n", net.res_ns, "-j", "link", "show", net.res_if],
                              capture_output=True, text=True, check=True)
        assert "xdp" not in json.loads(link.stdout)[0]
        assert unbound_pids_in(net.res_ns) == []
