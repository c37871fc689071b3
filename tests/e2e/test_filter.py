"""End to end: a client namespace and a resolver namespace with a real unbound, ccxdp attached
to the resolver's veth through the real CLI, real dig and dnspython queries. What the client
sees, what unbound's own log says reached it, and ccxdp's exact counters."""

from __future__ import annotations

import ipaddress

import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns]


def attach(ccxdp, lab, *extra: str) -> dict:
    return ccxdp.json("attach", lab.res_if, *lab.res_netns_opt, *extra)


def test_outside_the_address_plan_blocked_but_counted_only_globally(ccxdp, lab):
    """The plan holds client A's addresses only: client B's queries (another address of the
    same client host) are blocked all the same, but counted only in outside_plan."""
    client_a, client_b = lab.cli_v4_addrs[:2]
    attach(ccxdp, lab)
    ccxdp.run("block", "add", "evil.test")
    ccxdp.run("plan", "add", f"{client_a}/32", f"{lab.cli_v6}/128")
    assert lab.dig("evil.test", source=client_a).timed_out
    assert lab.dig("evil.test", family=6).timed_out
    for _ in range(2):
        assert lab.query("evil.test", source=client_b) is None
    assert lab.unbound_queries_for("evil.test") == 0
    stats = ccxdp.json("stats")
    assert stats["outcomes"]["blocked"] == 4
    assert stats["events"] == {"source_lost": 0, "answer_failed": 0, "outside_plan": 2,
                               "fragment_dropped": 0, "unparsed_dropped": 0, "tcp_closed": 0,
                               "not_unicast": 0}
    hits = {s["address"]: s["hits"] for s in stats["sources"]}
    assert hits == {client_a: 1, str(ipaddress.ip_network((lab.cli_v6, 64), strict=False)): 1}
    assert ccxdp.json("status")["plan"]["prefixes"] == [f"{client_a}/32", f"{lab.cli_v6}/128"]


def test_block_add_drops_queries_before_the_resolver(ccxdp, lab):
    (client_a, client_b), client_a6 = lab.cli_v4_addrs[:2], lab.cli_v6
    client_a6 = str(ipaddress.ip_network((client_a6, 64), strict=False))  # IPv6 per /64
    assert lab.dig("evil.test").rdata("A") == ["198.18.2.1"]
    assert lab.dig("www.bad.test").rdata("A") == ["198.18.3.2"]

    a = attach(ccxdp, lab)
    assert a["attached"] is True and a["interface"] == lab.res_if
    assert a["mode"] == "native"
    ccxdp.run("block", "add", "evil.test")
    ccxdp.run("block", "add", "bad.test", "--subtree")
    seen_before = {n: lab.unbound_queries_for(n) for n in ("evil.test", "www.bad.test",
                                                           "a.b.c.www.bad.test", "x.y.evil.test")}
    # The two answered queries before attaching reached unbound, once each.
    assert seen_before == {"evil.test": 1, "www.bad.test": 1, "a.b.c.www.bad.test": 0,
                           "x.y.evil.test": 0}

    # Blocked names: no answer, over IPv4 and IPv6, from dig and from dnspython.
    assert lab.dig("evil.test").timed_out
    assert lab.dig("EvIl.TeSt").timed_out  # DNS 0x20 case does not matter
    assert lab.dig("www.bad.test").timed_out
    assert lab.dig("evil.test", family=6).timed_out
    assert lab.query("a.b.c.www.bad.test", source=client_b) is None
    assert lab.query("evil.test", "AAAA", family=6) is None
    assert lab.dig("a.b.c.www.bad.test", family=6).timed_out
    assert lab.query("www.bad.test", family=6) is None
    # Names not covered: an exact entry does not cover what is below it; other zones resolve.
    assert lab.dig("x.y.evil.test").rdata("A") == ["198.18.2.2"]
    assert lab.dig("www.lab.example", "AAAA", family=6).rdata("AAAA") == ["fd00:cc:1::10"]
    answer = lab.query("mail.lab.example", source=client_b)
    assert answer is not None and [str(r) for r in answer.answer[0]] == ["198.18.1.11"]

    # None of the blocked queries reached unbound; the allowed one did, exactly once.
    assert lab.unbound_queries_for("evil.test") == 1
    assert lab.unbound_queries_for("www.bad.test") == 1
    assert lab.unbound_queries_for("a.b.c.www.bad.test") == 0
    assert lab.unbound_queries_for("x.y.evil.test") == 1

    stats = ccxdp.json("stats")
    assert stats["outcomes"]["blocked"] == 8
    assert stats["outcomes"]["passed"] == 3
    assert stats["outcomes"]["malformed"] == 0
    assert stats["judged"] == 11
    assert stats["names"] == 2
    assert stats["events"] == {"source_lost": 0, "answer_failed": 0, "outside_plan": 0,
                               "fragment_dropped": 0, "unparsed_dropped": 0, "tcp_closed": 0,
                               "not_unicast": 0}
    assert stats["actions"]["drop"] == 8
    hits = {(s["address"], s["category"]): s["hits"] for s in stats["sources"]}
    assert hits == {(client_a, 0): 3, (client_b, 0): 1, (client_a6, 0): 4}

    # Removing the entry restores resolution; the subtree entry still blocks.
    ccxdp.run("block", "remove", "evil.test")
    assert lab.dig("evil.test").rdata("A") == ["198.18.2.1"]
    assert lab.dig("www.bad.test").timed_out
    assert [e["name"] for e in ccxdp.json("block", "list")] == ["bad.test"]

    # Detach restores everything; the maps and their counters stay until purged.
    ccxdp.run("detach", lab.res_if, *lab.res_netns_opt)
    assert lab.dig("www.bad.test").rdata("A") == ["198.18.3.2"]
    status = ccxdp.json("status")
    assert status["loaded"] is True
    assert status["attachments"] == []
    assert ccxdp.json("stats")["outcomes"]["blocked"] == 9
    ccxdp.run("detach", "--purge")
    assert not ccxdp.pin_dir.exists()


def test_state_outlives_the_process_that_made_it(ccxdp, lab):
    first = attach(ccxdp, lab, "--max-names", "4096", "--max-sources", "1024")
    ccxdp.run("block", "add", "evil.test")
    # Every ccxdp call is a new process: this one finds the pinned program and its entries.
    again = attach(ccxdp, lab)
    assert again["prog_id"] == first["prog_id"]
    status = ccxdp.json("status")
    assert status["names"] == 1
    assert status["dns_ports"] == [53]
    assert [(x["interface"], x["netns"], x["prog_id"], x["attached"]) for x in
            status["attachments"]] == [(lab.res_if, lab.res_ns, first["prog_id"], True)]
    assert lab.dig("evil.test").timed_out
    assert ccxdp.json("stats")["sources"][0]["hits"] == 1


def test_second_interface_shares_the_maps(ccxdp, lab):
    first = attach(ccxdp, lab)
    # lo has no native XDP: auto mode falls back to generic and says so.
    second = ccxdp.json("attach", "lo", *lab.res_netns_opt)
    assert second["mode"] == "generic"
    assert second["prog_id"] == first["prog_id"]
    attached = {(x["interface"], x["mode"]) for x in ccxdp.json("status")["attachments"]}
    assert attached == {(lab.res_if, "native"), ("lo", "generic")}
    refused = ccxdp.run("detach", "--purge", check=False)
    assert refused.returncode == 1
    assert "still attached" in refused.stderr
    ccxdp.run("detach", "lo", *lab.res_netns_opt)
    ccxdp.run("detach", lab.res_if, *lab.res_netns_opt, "--purge")
    assert not ccxdp.pin_dir.exists()


def test_pins_purged_then_attached_again_get_the_catalog_back(ccxdp, lab):
    attach(ccxdp, lab)
    ccxdp.run("block", "add", "evil.test", "bad.test")
    ccxdp.run("detach", lab.res_if, *lab.res_netns_opt, "--purge")
    assert lab.dig("evil.test").rdata("A") == ["198.18.2.1"]
    attach(ccxdp, lab)
    assert ccxdp.json("status")["names"] == 2
    assert lab.dig("evil.test").timed_out
    assert lab.dig("bad.test").timed_out


def test_dns_port_option_judges_only_those_ports(ccxdp, lab):
    attach(ccxdp, lab, "--dns-port", "5353")
    ccxdp.run("block", "add", "evil.test")
    # Port 53 is no longer judged: the query reaches unbound and is answered.
    assert lab.dig("evil.test").rdata("A") == ["198.18.2.1"]
    assert ccxdp.json("status")["dns_ports"] == [5353]
    stats = ccxdp.json("stats")
    assert stats["judged"] == 0


def test_foreign_xdp_program_is_never_replaced(ccxdp, lab):
    lab.run("res", ["ip", "link", "set", "dev", lab.res_if, "xdpgeneric", "off"])
    from ccxdp.datapath import libbpf

    insns = libbpf.pack_insn(0xB7, dst=0, imm=2) + libbpf.pack_insn(0x95)
    fd = libbpf.prog_load(6, insns, name="someone_else")
    try:
        from pyroute2 import IPRoute

        with IPRoute(netns=lab.res_ns) as ipr:
            idx = ipr.link_lookup(ifname=lab.res_if)[0]
            ipr.link("set", index=idx, IFLA_XDP={"attrs": [("IFLA_XDP_FD", fd),
                                                           ("IFLA_XDP_FLAGS", 2)]})
        cp = ccxdp.run("attach", lab.res_if, *lab.res_netns_opt, check=False)
        assert cp.returncode == 1
        assert "already has XDP program 'someone_else'" in cp.stderr
        assert "Traceback" not in cp.stderr
        cp = ccxdp.run("detach", lab.res_if, *lab.res_netns_opt, check=False)
        assert cp.returncode == 1
        assert "which is not this ccxdp's" in cp.stderr and "leaves it alone" in cp.stderr
        with IPRoute(netns=lab.res_ns) as ipr:
            xdp = ipr.get_links(idx)[0].get_attr("IFLA_XDP")
            assert xdp.get_attr("IFLA_XDP_PROG_ID") == libbpf.prog_info(fd).id
    finally:
        libbpf.close(fd)


def test_another_installation_is_foreign(ccxdp, lab, tmp_path):
    """A ccxdp with other pins (say, a test run on a production host) neither replaces nor
    detaches this one's program."""
    from tests.conftest import Ccxdp, make_pin_dir, remove_pins

    first = attach(ccxdp, lab)
    other = Ccxdp(make_pin_dir(), tmp_path / "other-state")
    try:
        cp = other.run("attach", lab.res_if, *lab.res_netns_opt, check=False)
        assert cp.returncode == 1
        assert "already has XDP program 'ccxdp_xdp'" in cp.stderr
        assert "which is not this ccxdp's" in cp.stderr
        cp = other.run("detach", lab.res_if, *lab.res_netns_opt, check=False)
        assert cp.returncode == 1 and "which is not this ccxdp's" in cp.stderr
        assert not other.pin_dir.exists()
    finally:
        remove_pins(other.pin_dir)
    status = ccxdp.json("status")["attachments"]
    assert [(a["prog_id"], a["attached"]) for a in status] == [(first["prog_id"], True)]


def test_mode_change_that_fails_puts_the_old_program_back(ccxdp, lab):
    """lo has no native XDP: asking for native where generic runs fails, and the generic
    program must be back, still filtering."""
    first = ccxdp.json("attach", "lo", *lab.res_netns_opt, "--mode", "generic")
    cp = ccxdp.run("attach", "lo", *lab.res_netns_opt, "--mode", "native", check=False)
    assert cp.returncode == 1
    assert "is back" in cp.stderr and "Traceback" not in cp.stderr
    now = ccxdp.json("status")["attachments"]
    assert [(a["interface"], a["mode"], a["prog_id"]) for a in now] == [
        ("lo", "generic", first["prog_id"])
    ]


def test_failed_attach_after_compiling_leaves_nothing(ccxdp, lab):
    """The compile succeeds, the attach fails (no native XDP on lo): no pins remain."""
    cp = ccxdp.run("attach", "lo", *lab.res_netns_opt, "--mode", "native", check=False)
    assert cp.returncode == 1
    assert "cannot attach to lo" in cp.stderr and "native" in cp.stderr
    assert [line for line in cp.stderr.splitlines() if line.strip()] == [
        cp.stderr.strip().splitlines()[-1]
    ], "one line, no compiler output"
    assert not ccxdp.pin_dir.exists()
