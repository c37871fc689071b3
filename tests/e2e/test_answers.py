"""Answers from XDP, end to end: a real unbound behind the filter, real dig, kdig and
dnspython in the client namespace. Every client accepts the answers without a warning, none
of the blocked queries reaches unbound, and the counts are exact."""

from __future__ import annotations

import ipaddress
import re

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from ccxdp.datapath.loader import Datapath
from ccxdp.datapath.settings import Settings

pytestmark = [pytest.mark.root, pytest.mark.netns]

SINK4, SINK6 = "198.18.9.9", "fd00:9::9"
SETTINGS = Settings(default_action="nxdomain", sinkhole_v4=SINK4, sinkhole_v6=SINK6,
                    answer_ttl=60, negative_ttl=30)
# name -> (action, subtree)
ENTRIES = {
    "sink.c2.test": ("sinkhole", False),
    "nx.c2.test": ("nxdomain", False),
    "nd.c2.test": ("nodata", False),
    "ref.c2.test": ("refused", False),
    "dflt.c2.test": ("default", False),  # the configured default: nxdomain
    "evil.test": ("tc", False),  # unbound has evil.test: a TCP retry gets its real answer
    "bad.test": ("monitor", True),  # passes to unbound, counted
}


def exempt(lab) -> tuple[str, str]:
    """The exempt sources: client 1's second addresses (its first ones stay judged)."""
    return lab.cli_v4_addrs[1], lab.cli_v6_addrs[1]


def kdig(lab, name, rdtype="A", *args, family=4):
    server = lab.res_v4 if family == 4 else lab.res_v6
    cp = lab.run("cli", ["kdig", f"-{family}", f"@{server}", name, rdtype, "+time=1",
                         "+retry=0", *args])
    return cp


def kdig_status(cp) -> str:
    m = re.search(r"status: (\w+)", cp.stdout)
    assert m, cp.stdout + cp.stderr
    return m.group(1)


def no_client_warning(text: str) -> None:
    assert ";; WARNING" not in text and "malformed" not in text.lower(), text
    assert "warning" not in text.lower(), text


@pytest.fixture(params=["generic", "native"])
def answering(request, ccxdp, lab):
    """ccxdp attached to the resolver's veth in generic or native mode. Native XDP_TX on a
    veth needs an XDP program on the peer too (any, even one that passes everything): the
    lab puts one on the switch port facing the resolver, as a real NIC would not need."""
    if request.param == "native":
        lab.native_tx_peer()
    ccxdp.json("attach", lab.res_if, *lab.res_netns_opt, "--mode", request.param,
               "--action", "nxdomain", "--sinkhole-v4", SINK4, "--sinkhole-v6", SINK6)
    ccxdp.run("config", "set", "answer_ttl", "60")
    ccxdp.run("config", "set", "negative_ttl", "30")
    for name, (action, subtree) in ENTRIES.items():
        args = ["block", "add", name, "--category", "emotet"]
        args += ["--subtree"] if subtree else []
        args += [] if action == "default" else ["--action", action]
        ccxdp.run(*args)
    ccxdp.run("exempt", "add", *exempt(lab))
    return Datapath(ccxdp.pin_dir, ccxdp.state_dir)


def test_dig_kdig_and_dnspython_accept_every_answer(answering, lab, ccxdp):
    # Sinkhole: A and AAAA get the configured addresses; MX and TXT get NODATA.
    r = lab.dig("sink.c2.test")
    assert (r.status, r.rdata("A")) == ("NOERROR", [SINK4])
    assert r.answers[0].ttl == 60
    no_client_warning(r.output)
    r = lab.dig("SiNk.C2.tEsT", "AAAA", family=6)
    assert (r.status, r.rdata("AAAA")) == ("NOERROR", [SINK6])
    assert "SiNk.C2.tEsT." in r.output, "the question comes back as asked (0x20)"
    no_client_warning(r.output)
    for rdtype in ("MX", "TXT"):
        r = lab.dig("sink.c2.test", rdtype)
        assert (r.status, r.answers) == ("NOERROR", [])
        assert "SOA" in r.output
        no_client_warning(r.output)
    # Negative answers and REFUSED, with and without EDNS, with a cookie.
    for extra in ((), ("+noedns",), ("+edns=0",), ("+cookie",)):
        r = lab.dig("nx.c2.test", extra_args=extra)
        assert r.status == "NXDOMAIN", (extra, r.output)
        no_client_warning(r.output)
        assert ("OPT PSEUDOSECTION" in r.output) == (extra != ("+noedns",))
    assert lab.dig("nd.c2.test").status == "NOERROR"
    assert lab.dig("ref.c2.test").status == "REFUSED"
    assert lab.dig("dflt.c2.test").status == "NXDOMAIN"
    for name, status in (("nx.c2.test", "NXDOMAIN"), ("ref.c2.test", "REFUSED"),
                         ("sink.c2.test", "NOERROR")):
        cp = kdig(lab, name)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert kdig_status(cp) == status
        no_client_warning(cp.stdout + cp.stderr)
    cp = kdig(lab, "sink.c2.test", "AAAA", "+cookie", family=6)
    assert kdig_status(cp) == "NOERROR" and SINK6 in cp.stdout
    no_client_warning(cp.stdout + cp.stderr)
    # kdig and dnspython also accept NODATA (with its SOA) and a TC answer.
    cp = kdig(lab, "sink.c2.test", "MX")
    assert kdig_status(cp) == "NOERROR" and "SOA" in cp.stdout
    no_client_warning(cp.stdout + cp.stderr)
    for rdtype in ("MX", "TXT"):
        a = lab.query("sInK.c2.TEST", rdtype, family=6)
        assert a is not None and a.rcode() == dns.rcode.NOERROR and not a.answer
        assert [r.rdtype for r in a.authority] == [dns.rdatatype.SOA]
        assert str(a.question[0].name) == "sInK.c2.TEST."
    cp = kdig(lab, "evil.test", "A", "+ignore")  # +ignore: show the TC answer, no TCP retry
    m = re.search(r"[Ff]lags: ([a-z ]+);", cp.stdout)
    assert m and "tc" in m.group(1).split(), cp.stdout
    no_client_warning(cp.stdout + cp.stderr)
    # dnspython, strictly: ID, question and flags match, over both families.
    for family in (4, 6):
        q = dns.message.make_query("Nx.C2.test", "A", use_edns=0)
        a = lab.exchange(q, family=family)
        assert a is not None and a.id == q.id and a.question == q.question
        assert a.rcode() == dns.rcode.NXDOMAIN
        assert a.flags & dns.flags.QR and a.flags & dns.flags.RA and a.flags & dns.flags.RD
        assert not a.flags & dns.flags.AA
    # None of these reached unbound.
    for name in ("sink.c2.test", "nx.c2.test", "nd.c2.test", "ref.c2.test", "dflt.c2.test"):
        assert lab.unbound_queries_for(name) == 0, name


def test_tc_makes_dig_retry_over_tcp_and_get_the_real_answer(answering, lab):
    before = lab.unbound_queries_for("evil.test")
    r = lab.dig("evil.test")
    assert "Truncated, retrying in TCP mode" in r.output
    assert (r.status, r.rdata("A")) == ("NOERROR", ["198.18.2.1"])
    # The UDP query was answered by XDP; only the TCP retry reached unbound.
    assert lab.unbound_queries_for("evil.test") == before + 1
    q = lab.query("evil.test")
    assert q is not None and q.flags & dns.flags.TC and not q.answer


def test_exempt_source_and_monitor_get_unbounds_answer(answering, lab, ccxdp):
    exempt4, exempt6 = exempt(lab)
    before = ccxdp.json("stats")
    # From the exempt address, a sinkholed name goes to unbound, whose built-in test. zone
    # answers NXDOMAIN (the filter would have answered the sinkhole address), and nothing is
    # counted for that source.
    a = lab.query("sink.c2.test", source=exempt4)
    assert a is not None and a.rcode() == dns.rcode.NXDOMAIN and not a.answer
    a = lab.query("sink.c2.test", "AAAA", family=6, source=exempt6)
    assert a is not None and a.rcode() == dns.rcode.NXDOMAIN and not a.answer
    assert lab.unbound_queries_for("sink.c2.test") == 2
    # Monitor: unbound answers, and the hit is counted.
    r = lab.dig("www.bad.test")
    assert r.rdata("A") == ["198.18.3.2"]
    after = ccxdp.json("stats")
    assert after["outcomes"]["exempt"] - before["outcomes"]["exempt"] == 2
    assert after["outcomes"]["monitored"] - before["outcomes"]["monitored"] == 1
    assert after["actions"]["monitor"] - before["actions"]["monitor"] == 1
    sources = {(s["address"], s["category_name"]): s["hits"] for s in after["sources"]}
    assert not {exempt4, exempt6} & {a for a, _ in sources}
    assert sources[(lab.cli_v4, "emotet")] == 1


def test_exact_counts_per_action(answering, lab, ccxdp):
    for _ in range(3):
        assert lab.dig("nx.c2.test").status == "NXDOMAIN"
    assert lab.dig("sink.c2.test", "AAAA").rdata("AAAA") == [SINK6]
    assert lab.dig("ref.c2.test", family=6).status == "REFUSED"
    stats = ccxdp.json("stats")
    assert stats["actions"]["nxdomain"] == 3
    assert stats["actions"]["sinkhole"] == 1
    assert stats["actions"]["refused"] == 1
    assert stats["outcomes"]["blocked"] == 5
    assert stats["events"]["answer_failed"] == 0
    hits = {(s["address"], s["category_name"]): s["hits"] for s in stats["sources"]}
    v6_line = str(ipaddress.ip_network((lab.cli_v6, 64), strict=False))  # IPv6 per /64
    assert hits == {(lab.cli_v4, "emotet"): 4, (v6_line, "emotet"): 1}
    for name in ("nx.c2.test", "sink.c2.test", "ref.c2.test"):
        assert lab.unbound_queries_for(name) == 0, name


def test_allow_listed_name_gets_unbounds_answer_and_no_count(answering, lab, ccxdp):
    """Block the subtree lab.example (sinkhole), allow mail.lab.example: the allowed name gets
    unbound's real answer and nothing is counted for it; its siblings are sinkholed."""
    ccxdp.run("block", "add", "lab.example", "--subtree", "--action", "sinkhole",
              "--category", "qakbot")
    ccxdp.run("allow", "add", "mail.lab.example")
    before = ccxdp.json("stats")
    assert lab.dig("mail.lab.example").rdata("A") == ["198.18.1.11"]
    assert lab.unbound_queries_for("mail.lab.example") == 1
    assert lab.dig("www.lab.example").rdata("A") == [SINK4]
    assert lab.unbound_queries_for("www.lab.example") == 0
    after = ccxdp.json("stats")
    assert after["outcomes"]["allowed"] - before["outcomes"]["allowed"] == 1
    assert after["actions"]["allow"] - before["actions"]["allow"] == 1
    assert after["actions"]["sinkhole"] - before["actions"]["sinkhole"] == 1
    hits = {(s["address"], s["category_name"]): s["hits"] for s in after["sources"]}
    assert hits == {(lab.cli_v4, "qakbot"): 1}
