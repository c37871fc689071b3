"""The subscriber address plan through the real CLI: plan add / remove / list, status, the
kernel trie it writes, and the verdicts and counts of the pinned program on crafted frames
(BPF_PROG_TEST_RUN). Each test attaches a private installation to lo of an empty namespace."""

from __future__ import annotations

import ipaddress

import dns.rcode
import pytest

from ccxdp.datapath import shared
from ccxdp.hits.stats import read_stats
from tests.cli.test_policy import Policy
from tests.conftest import one_line_error
from tests.harness.frames import CLIENT4, CLIENT6

pytestmark = pytest.mark.root


@pytest.fixture
def policy(ccxdp, bare_netns) -> Policy:
    p = Policy(ccxdp, bare_netns)
    p.attach()
    p.cli.run("block", "add", "evil.test", "--action", "nxdomain")
    return p


def plan_trie(policy) -> dict[tuple[int, str], int]:
    with policy.dp.open_map(shared.MAP_PLAN) as m:
        return {(k.prefixlen, str(ipaddress.IPv6Address(bytes(k.addr)))): m.lookup(k).value
                for k in m.keys()}


def test_plan_add_list_remove_and_what_it_counts(policy):
    cli = policy.cli
    status = cli.json("status")["plan"]
    assert status == {"declared": False, "prefixes": [], "source_prefix_v6": 64}
    assert "address plan: none, every source counted per source (IPv6 per /64)" in \
        cli.run("status").stdout
    assert cli.json("plan", "list") == []
    assert cli.run("plan", "list").stdout.strip() == \
        "no address plan: every source is counted per source"

    out = cli.json("plan", "add", "198.18.0.0/24", "FD00:CC::/32", "198.18.0.0/24")
    assert out == [{"prefix": "198.18.0.0/24", "status": "added"},
                   {"prefix": "fd00:cc::/32", "status": "added"}]
    assert plan_trie(policy) == {(0, "::"): 0, (120, "::ffff:c612:0"): 1, (32, "fd00:cc::"): 1}
    assert [(e["prefix"], e["family"]) for e in cli.json("plan", "list")] == [
        ("198.18.0.0/24", 4), ("fd00:cc::/32", 6)]
    assert cli.json("status")["plan"] == {
        "declared": True, "prefixes": ["198.18.0.0/24", "fd00:cc::/32"], "source_prefix_v6": 64}
    assert "address plan: 2 prefixes, other sources only in outside_plan (IPv6 per /64)" in \
        cli.run("status").stdout

    inside = [CLIENT4, CLIENT6, "fd00:cc::77"]
    outside = ["198.18.1.2", "fd00:dd::2", "198.19.0.2"]
    before = read_stats(policy.dp)
    for src in inside + outside:
        assert policy.judge("evil.test", src).rcode == dns.rcode.NXDOMAIN, src
    after = read_stats(policy.dp)
    assert after.events["outside_plan"] - before.events["outside_plan"] == 3
    assert policy.sources() == {f"{CLIENT4}#0": 1, "fd00:cc::/64#0": 2}
    stats = cli.json("stats")
    assert stats["events"]["outside_plan"] == 3 and stats["events"]["source_lost"] == 0

    cp = cli.run("plan", "remove", "198.18.0.0/24", "198.18.9.0/24", "--json", check=False)
    one_line_error(cp, 1, "not in the plan: 198.18.9.0/24")
    assert plan_trie(policy) == {(0, "::"): 0, (32, "fd00:cc::"): 1}
    assert cli.json("plan", "remove", "fd00:cc::/32") == [
        {"prefix": "fd00:cc::/32", "status": "removed"}]
    assert plan_trie(policy) == {}
    assert cli.json("status")["plan"]["declared"] is False
    policy.judge("evil.test", "198.19.0.2")
    assert policy.sources()["198.19.0.2#0"] == 1


def test_the_plan_comes_back_after_a_purge(policy):
    cli = policy.cli
    cli.run("plan", "add", "198.18.0.0/15", "fd00::/8")
    cli.run("config", "set", "source_prefix_v6", "56")
    trie = plan_trie(policy)
    cli.run("detach", "lo", "--netns", policy.netns, "--purge")
    policy.attach()
    assert plan_trie(policy) == trie
    assert cli.json("status")["plan"]["source_prefix_v6"] == 56
    policy.judge("evil.test", "fd00:cc:0:12::5")
    assert policy.sources() == {"fd00:cc::/56#0": 1}


@pytest.mark.parametrize("args, message", [
    (["plan", "add", "0.0.0.0/0"], "0.0.0.0/0 covers every source: that is no plan"),
    (["plan", "add", "::/0"], "would also cover every IPv4 source"),
    (["plan", "add", "198.18.0.1/24"], "198.18.0.1/24 has host bits set"),
    (["plan", "remove", "nope"], "'nope' is not an IPv4 or IPv6 prefix"),
    (["config", "set", "source_prefix_v6", "16"], "source_prefix_v6: 16 is outside 32..128"),
])
def test_plan_usage_errors(ccxdp, args, message):
    cp = ccxdp.run(*args, check=False)
    one_line_error(cp, 2, "Invalid value for", message)
    assert not ccxdp.state_dir.exists(), "refused before anything was written"
