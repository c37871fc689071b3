"""Policy through the real CLI: actions and categories of block entries, allow entries, exempt
source prefixes, run-time settings, and the catalog that brings them all back.

Kernel effects are proven twice: the pinned maps are read back through ``Datapath``, and the
pinned program itself judges crafted frames through BPF_PROG_TEST_RUN, so a test sees the
verdict a real query would get. Each test attaches a private installation (``ccxdp`` fixture)
to ``lo`` of an empty network namespace; nothing is left behind.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import re
import sqlite3
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.rcode
import pytest
from scapy.layers.inet import UDP
from scapy.layers.l2 import Ether

from ccxdp.datapath import libbpf, shared
from ccxdp.datapath.hashing import name_hash
from ccxdp.datapath.loader import Datapath
from ccxdp.errors import CcxdpError
from ccxdp.hits.stats import read_stats
from ccxdp.policy import exempt as exempt_lib
from ccxdp.policy.catalog import SCHEMA_VERSION, Catalog, CatalogError, unpack
from ccxdp.policy.exempt import PrefixError, lpm_key, parse_prefix
from tests.conftest import kernel_names, one_line_error, publish_entries
from tests.harness.frames import CLIENT4, CLIENT6, query, udp4, udp6

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3


# -- helpers --------------------------------------------------------------------------------


@dataclass
class Verdict:
    retval: int
    rcode: int | None = None  # of the answer, when the program answered (XDP_TX)
    answer: dns.message.Message | None = None


class Policy:
    """The CLI, the datapath it drives, and the pinned program as a judge of frames."""

    def __init__(self, cli, netns: str):
        self.cli = cli
        self.netns = netns
        self.dp = Datapath(cli.pin_dir, cli.state_dir)

    def attach(self, *args: str) -> dict:
        return self.cli.json("attach", "lo", "--netns", self.netns, "--mode", "generic", *args)

    def judge(self, name: str, src: str | None = None, rdtype: int = 1) -> Verdict:
        family = 6 if src and ":" in src else 4
        payload = query(name, qid=0x2BAD)
        if rdtype != 1:
            payload = payload[:-4] + rdtype.to_bytes(2, "big") + b"\x00\x01"
        build = udp6 if family == 6 else udp4
        frame = build(payload, src=src or (CLIENT6 if family == 6 else CLIENT4))
        fd = libbpf.obj_get(self.dp.prog_pin)
        try:
            result = libbpf.prog_test_run(fd, frame)
        finally:
            libbpf.close(fd)
        if result.retval != XDP_TX:
            return Verdict(result.retval)
        answer = dns.message.from_wire(bytes(Ether(result.data_out)[UDP].payload))
        assert answer.id == 0x2BAD
        return Verdict(result.retval, answer.rcode(), answer)

    def entry(self, name: str) -> tuple[int, int, int] | None:
        return self.names_map().get(name_hash(name, self.dp.hash_key()))

    def names_map(self) -> dict[int, tuple[int, int, int]]:
        return kernel_names(self.dp)

    def exempt_map(self) -> set[tuple[int, bytes]]:
        with self.dp.open_map(shared.MAP_EXEMPT) as m:
            return {(k.prefixlen, bytes(k.addr)) for k in m.keys()}

    def config_map(self) -> bytes:
        """The live settings (maps.h: two entries, the live one named by a word)."""
        with self.dp.open_map(shared.MAP_CONFIG_ACTIVE) as active:
            live = active.lookup(ct.c_uint32(0)).value & 1
        with self.dp.open_map(shared.MAP_CONFIG) as m:
            return bytes(m.lookup(ct.c_uint32(live)))

    def sources(self) -> dict[str, int]:
        return {f"{s.address}#{s.category}": s.hits for s in read_stats(self.dp).sources}


@pytest.fixture
def policy(ccxdp, bare_netns) -> Policy:
    """A private ccxdp, attached (generic mode) to lo of an empty namespace."""
    p = Policy(ccxdp, bare_netns)
    p.attach()
    return p


def mapped(prefix: str) -> tuple[int, bytes]:
    k = lpm_key(ipaddress.ip_network(prefix))
    return k.prefixlen, bytes(k.addr)


# -- block entries: action and category -------------------------------------------------------


@pytest.mark.root
def test_block_add_writes_action_and_category_to_the_kernel(policy):
    cli = policy.cli
    out = cli.json("block", "add", "sink.c2.test", "--action", "redirect", "--category", "Emotet")
    assert out == [{"name": "sink.c2.test", "status": "added", "subtree": False,
                    "action": "sinkhole", "category": "emotet"}]
    cli.run("block", "add", "nx.c2.test", "--subtree", "--action", "nxdomain", "--category",
            "qakbot")
    cli.run("block", "add", "plain.c2.test", "mon.c2.test")
    cli.run("block", "add", "mon.c2.test", "--action", "monitor", "--category", "emotet")

    A = shared.Action
    assert policy.entry("sink.c2.test") == (A.SINKHOLE, 0, 1)
    assert policy.entry("nx.c2.test") == (A.NXDOMAIN, shared.ENTRY_SUBTREE, 2)
    assert policy.entry("plain.c2.test") == (A.DEFAULT, 0, 0)
    assert policy.entry("mon.c2.test") == (A.MONITOR, 0, 1)  # the category is reused
    listed = {e["name"]: e for e in cli.json("block", "list")}
    assert {n: (e["match"], e["action"], e["category"]) for n, e in listed.items()} == {
        "sink.c2.test": ("exact", "sinkhole", "emotet"),
        "nx.c2.test": ("subtree", "nxdomain", "qakbot"),
        "plain.c2.test": ("exact", "default", None),
        "mon.c2.test": ("exact", "monitor", "emotet"),
    }
    assert set(listed["sink.c2.test"]) == {"name", "match", "action", "category", "added_at"}

    # Re-adding states the whole entry again: no --category means none.
    assert cli.json("block", "add", "mon.c2.test", "--action", "monitor") == [
        {"name": "mon.c2.test", "status": "updated", "subtree": False, "action": "monitor",
         "category": None}]
    assert policy.entry("mon.c2.test") == (A.MONITOR, 0, 0)

    # The program does what the entries say; per-source hits carry the category id.
    assert policy.judge("x.nx.c2.test").rcode == dns.rcode.NXDOMAIN
    assert policy.judge("nx.c2.test").rcode == dns.rcode.NXDOMAIN
    assert policy.judge("plain.c2.test").retval == XDP_DROP  # the default action: drop
    assert policy.judge("mon.c2.test").retval == XDP_PASS
    assert policy.sources() == {f"{CLIENT4}#2": 2, f"{CLIENT4}#0": 2}
    sources = cli.json("stats")["sources"]
    assert sorted((s["category"], s["category_name"], s["hits"]) for s in sources) == [
        (0, None, 2), (2, "qakbot", 2)]


@pytest.mark.root
def test_entries_without_action_follow_the_configured_default(policy):
    cli = policy.cli
    cli.run("block", "add", "a.c2.test", "b.c2.test")
    cli.run("block", "add", "own.c2.test", "--action", "refused")
    assert policy.judge("a.c2.test").retval == XDP_DROP
    before = policy.names_map()

    cli.run("config", "set", "default_action", "nxdomain")

    assert policy.names_map() == before, "no entry was touched"
    assert policy.judge("a.c2.test").rcode == dns.rcode.NXDOMAIN
    assert policy.judge("b.c2.test").rcode == dns.rcode.NXDOMAIN
    assert policy.judge("own.c2.test").rcode == dns.rcode.REFUSED
    cli.run("config", "set", "default_action", "tc")
    v = policy.judge("a.c2.test")
    assert v.retval == XDP_TX and v.answer.flags & dns.flags.TC


@pytest.mark.root
def test_a_settings_change_writes_the_spare_entry_and_switches_to_it(policy):
    """A packet reads the live word once: the entry it may still be reading keeps the whole
    old set, and the new set is complete before the switch (maps.h)."""
    def entries() -> tuple[int, list[shared.Config]]:
        with policy.dp.open_map(shared.MAP_CONFIG_ACTIVE) as active:
            live = active.lookup(ct.c_uint32(0)).value
        with policy.dp.open_map(shared.MAP_CONFIG) as m:
            return live, [m.lookup(ct.c_uint32(i)) for i in (0, 1)]

    live, before = entries()
    old = bytes(before[live])
    policy.cli.run("config", "set", "sinkhole_v6", "fd00:9::53")
    now, after = entries()
    assert now == live ^ 1
    assert bytes(after[live]) == old, "the entry packets may still read is untouched"
    assert bytes(after[now].sinkhole_v6) == bytes.fromhex("fd000009" + "0" * 20 + "0053")
    assert policy.dp.settings().sinkhole_v6 == "fd00:9::53"
    policy.cli.run("config", "set", "answer_ttl", "77")
    assert entries()[0] == live
    assert policy.dp.settings().sinkhole_v6 == "fd00:9::53", "the new entry holds every setting"
    assert policy.dp.settings().answer_ttl == 77


@pytest.mark.root
def test_a_settings_change_that_cannot_wait_for_readers_changes_nothing(policy, monkeypatch):
    """The grace period comes before the write: if it fails, neither the program nor the saved
    copy has changed."""
    import errno

    def fail() -> None:
        raise libbpf.BpfError(errno.EPERM, "membarrier(MEMBARRIER_CMD_GLOBAL) failed")

    before = policy.config_map()
    saved = (policy.dp.state_dir / "settings.json").read_bytes()
    monkeypatch.setattr(libbpf, "wait_for_readers", fail)
    with pytest.raises(libbpf.BpfError, match="membarrier"):
        policy.dp.set_settings(policy.dp.settings().with_value("answer_ttl", "99"))
    assert policy.config_map() == before
    assert (policy.dp.state_dir / "settings.json").read_bytes() == saved
    monkeypatch.undo()
    policy.dp.set_settings(policy.dp.settings().with_value("answer_ttl", "99"))
    assert policy.dp.settings().answer_ttl == 99


# -- allow entries ----------------------------------------------------------------------------


@pytest.mark.root
def test_allow_beats_block_of_the_same_or_a_shorter_suffix(policy):
    cli = policy.cli
    cli.run("block", "add", "evil.test", "--subtree", "--action", "nxdomain")
    assert cli.json("allow", "add", "cdn.evil.test") == [
        {"name": "cdn.evil.test", "status": "added", "subtree": False}]
    cli.run("allow", "add", "static.evil.test", "--subtree")
    cli.run("block", "add", "bad.static.evil.test", "--action", "refused")

    expected = {
        "evil.test": dns.rcode.NXDOMAIN,
        "www.evil.test": dns.rcode.NXDOMAIN,
        "cdn.evil.test": XDP_PASS,  # allowed exactly ...
        "x.cdn.evil.test": dns.rcode.NXDOMAIN,  # ... but not below it
        "static.evil.test": XDP_PASS,  # allowed with --subtree ...
        "a.b.static.evil.test": XDP_PASS,  # ... and everything below it
        "bad.static.evil.test": dns.rcode.REFUSED,  # a longer block entry beats the allow
        "CDN.Evil.TEST": XDP_PASS,  # case-insensitive (0x20)
        "evil.test.example": XDP_PASS,  # not under evil.test
    }
    before = read_stats(policy.dp)
    got = {}
    for name in expected:
        v = policy.judge(name)
        got[name] = v.rcode if v.retval == XDP_TX else v.retval
    assert got == expected
    after = read_stats(policy.dp)
    assert after.outcomes["allowed"] - before.outcomes["allowed"] == 4
    assert after.outcomes["blocked"] - before.outcomes["blocked"] == 4
    assert policy.sources() == {f"{CLIENT4}#0": 4}, "allowed queries are not counted"

    assert [e["name"] for e in cli.json("allow", "list")] == ["cdn.evil.test",
                                                               "static.evil.test"]
    assert [(e["name"], e["match"]) for e in cli.json("allow", "list")] == [
        ("cdn.evil.test", "exact"), ("static.evil.test", "subtree")]
    assert [e["name"] for e in cli.json("block", "list")] == ["bad.static.evil.test",
                                                               "evil.test"]


@pytest.mark.root
def test_same_name_block_and_allow_the_kernel_holds_the_allow(policy):
    cli, A = policy.cli, shared.Action
    cli.run("block", "add", "both.test", "--action", "refused", "--category", "feed-a")
    assert policy.entry("both.test") == (A.REFUSED, 0, 1)

    cli.run("allow", "add", "both.test")
    assert policy.entry("both.test") == (A.ALLOW, 0, 0)
    assert policy.judge("both.test").retval == XDP_PASS
    # Both stay listed, each in its own list.
    assert [e["name"] for e in cli.json("block", "list")] == ["both.test"]
    assert [e["name"] for e in cli.json("allow", "list")] == ["both.test"]
    # Adding the block again tells that the allow entry still decides, and changes nothing.
    cp = cli.run("block", "add", "both.test", "--action", "refused", "--category", "feed-a")
    assert "also allow-listed" in cp.stderr and "both.test" in cp.stderr
    assert policy.entry("both.test") == (A.ALLOW, 0, 0)

    # Removing the allow entry puts the block entry back into the kernel.
    assert cli.json("allow", "remove", "both.test") == [
        {"name": "both.test", "status": "removed", "subtree": False}]
    assert policy.entry("both.test") == (A.REFUSED, 0, 1)
    assert policy.judge("both.test").rcode == dns.rcode.REFUSED

    # The other order: the block entry goes while allowed; the kernel keeps the allow, and
    # removing that leaves nothing.
    cli.run("allow", "add", "both.test", "--subtree")
    assert policy.entry("both.test") == (A.ALLOW, shared.ENTRY_SUBTREE, 0)
    cli.run("block", "remove", "both.test")
    assert policy.entry("both.test") == (A.ALLOW, shared.ENTRY_SUBTREE, 0)
    cli.run("allow", "remove", "both.test")
    assert policy.entry("both.test") is None
    assert policy.names_map() == {}


@pytest.mark.root
def test_an_exact_allow_on_a_blocked_subtree_of_the_same_name(policy):
    """Block sub.test with its subtree, allow sub.test exactly: the name itself passes (allow
    beats a block of equal specificity), the names below stay blocked. One kernel entry says
    both; either order of adding gives it, and removing the allow restores the plain block."""
    cli, A = policy.cli, shared.Action
    both = shared.ENTRY_SUBTREE | shared.ENTRY_ALLOW_NAME
    cli.run("block", "add", "sub.test", "--subtree", "--action", "refused", "--category", "c")
    cli.run("allow", "add", "sub.test")
    assert policy.entry("sub.test") == (A.REFUSED, both, 1)
    assert policy.judge("sub.test").retval == XDP_PASS
    assert policy.judge("x.sub.test").rcode == dns.rcode.REFUSED
    cli.run("allow", "remove", "sub.test")
    assert policy.entry("sub.test") == (A.REFUSED, shared.ENTRY_SUBTREE, 1)
    assert policy.judge("sub.test").rcode == dns.rcode.REFUSED

    cli.run("block", "remove", "sub.test")
    cli.run("allow", "add", "sub.test")
    cli.run("block", "add", "sub.test", "--subtree", "--action", "refused", "--category", "c")
    assert policy.entry("sub.test") == (A.REFUSED, both, 1)
    assert policy.judge("sub.test").retval == XDP_PASS
    assert policy.judge("a.b.sub.test").rcode == dns.rcode.REFUSED


@pytest.mark.root
def test_allow_remove_not_listed(policy):
    one_line_error(policy.cli.run("allow", "remove", "never.test", check=False), 1,
                   "not allow-listed: never.test")


# -- exempt sources -------------------------------------------------------------------------


@pytest.mark.root
def test_exempt_sources_are_passed_unjudged_and_not_counted(policy):
    cli = policy.cli
    cli.run("block", "add", "evil.test", "--action", "nxdomain")
    out = cli.json("exempt", "add", "198.18.0.0/24", "FD00:CC:0:0::/64", "198.18.1.9")
    assert out == [{"prefix": "198.18.0.0/24", "status": "added"},
                   {"prefix": "fd00:cc::/64", "status": "added"},
                   {"prefix": "198.18.1.9/32", "status": "added"}]
    assert policy.exempt_map() == {mapped("198.18.0.0/24"), mapped("fd00:cc::/64"),
                                   mapped("198.18.1.9/32")}
    assert mapped("198.18.0.0/24") == (120, bytes(10) + b"\xff\xff" + bytes([198, 18, 0, 0]))
    assert [(e["prefix"], e["family"]) for e in cli.json("exempt", "list")] == [
        ("198.18.0.0/24", 4), ("198.18.1.9/32", 4), ("fd00:cc::/64", 6)]

    before = read_stats(policy.dp)
    exempt = [CLIENT4, "198.18.0.254", "198.18.1.9", CLIENT6, "fd00:cc::ffff:1"]
    judged = ["198.18.1.10", "198.18.2.2", "fd00:cd::2"]
    for src in exempt:
        assert policy.judge("evil.test", src).retval == XDP_PASS, src
    for src in judged:
        assert policy.judge("evil.test", src).rcode == dns.rcode.NXDOMAIN, src
    after = read_stats(policy.dp)
    assert after.outcomes["exempt"] - before.outcomes["exempt"] == len(exempt)
    assert after.outcomes["blocked"] - before.outcomes["blocked"] == len(judged)
    counted = ["198.18.1.10", "198.18.2.2", "fd00:cd::/64"]  # IPv6 per /64
    assert set(policy.sources()) == {f"{s}#0" for s in counted}, "no exempt source counted"

    assert cli.json("exempt", "add", "198.18.1.9/32") == [
        {"prefix": "198.18.1.9/32", "status": "unchanged"}]
    cp = cli.run("exempt", "remove", "198.18.0.0/24", "198.18.3.0/24", "--json", check=False)
    one_line_error(cp, 1, "not exempt: 198.18.3.0/24")
    assert policy.exempt_map() == {mapped("fd00:cc::/64"), mapped("198.18.1.9/32")}
    assert policy.judge("evil.test", CLIENT4).rcode == dns.rcode.NXDOMAIN


BAD_PREFIXES = [
    ("198.18.0.1/24", "198.18.0.1/24 has host bits set; did you mean 198.18.0.0/24?"),
    ("fd00::1/64", "fd00::1/64 has host bits set; did you mean fd00::/64?"),
    ("198.18.0.0/33", "'198.18.0.0/33' is not an IPv4 or IPv6 prefix"),
    ("evil.test", "'evil.test' is not an IPv4 or IPv6 prefix"),
    ("", "'' is not an IPv4 or IPv6 prefix"),
    ("::ffff:198.18.0.0/120", "give it as IPv4 (198.18.0.0/24)"),
    ("::/0", "would also exempt every IPv4 source"),
    ("fe80::%eth0/64", "zone index"),
]


@pytest.mark.parametrize("text, message", BAD_PREFIXES, ids=[t or "empty" for t, _ in BAD_PREFIXES])
def test_parse_prefix_refuses(text, message):
    with pytest.raises(PrefixError) as e:
        parse_prefix(text)
    assert message in str(e.value)
    assert e.value.value == text


@pytest.mark.parametrize("text, normal", [
    ("198.18.0.0/15", "198.18.0.0/15"),
    (" 198.18.0.7 ", "198.18.0.7/32"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("FD00:0:0:1::/64", "fd00:0:0:1::/64"),
    ("fd00::7", "fd00::7/128"),
    ("2001:db8::/32", "2001:db8::/32"),
])
def test_parse_prefix_normalizes(text, normal):
    assert str(parse_prefix(text)) == normal


# -- usage errors: one line, exit 2, nothing touched ---------------------------------------------


USAGE_ERRORS = [
    (["exempt", "add", "198.18.0.0/24", "198.18.0.1/24"], "'PREFIXES...'",
     "198.18.0.1/24 has host bits set; did you mean 198.18.0.0/24?"),
    (["exempt", "remove", "300.1.1.1"], "'PREFIXES...'", "'300.1.1.1' is not an IPv4 or IPv6"),
    (["block", "add", "x.test", "--action", "allow"], "'--action'", "'allow' is not an action"),
    (["block", "add", "x.test", "--action", "nxdomian"], "'--action'", "drop, monitor"),
    (["block", "add", "x.test", "--category", "bad name"], "'--category'", "invalid category"),
    (["attach", "lo", "--action", "block"], "'--action'", "'block' is not an action"),
    (["attach", "lo", "--sinkhole-v4", "198.18.0.300"], "'--sinkhole-v4'",
     "'198.18.0.300' is not an IPv4 address"),
    (["attach", "lo", "--sinkhole-v6", "198.18.0.3"], "'--sinkhole-v6'",
     "'198.18.0.3' is not an IPv6 address"),
    (["config", "set", "default_acton", "drop"], "'KEY'", "unknown setting 'default_acton'"),
    (["config", "set", "default_action", "allow"], "'VALUE'", "default_action: 'allow'"),
    (["config", "set", "answer_ttl", "ten"], "'VALUE'", "answer_ttl: 'ten' is not a whole"),
    (["config", "set", "negative_ttl", "--", "-1"], "'VALUE'", "negative_ttl: -1 is outside"),
    (["config", "set", "answer_ttl", "2147483648"], "'VALUE'", "answer_ttl: 2147483648 is"),
    (["config", "set", "edns_udp_size", "100"], "'VALUE'", "edns_udp_size: 100 is outside"),
    (["config", "set", "sinkhole_v4", "fd00::1"], "'VALUE'", "sinkhole_v4: 'fd00::1' is not"),
    (["config", "set", "sinkhole_v6", "nope"], "'VALUE'", "sinkhole_v6: 'nope' is not an IPv6"),
]


@pytest.mark.root
@pytest.mark.parametrize("args, param, message", USAGE_ERRORS,
                         ids=[" ".join(a) for a, _, _ in USAGE_ERRORS])
def test_usage_errors_name_the_value(ccxdp, args, param, message):
    cp = ccxdp.run(*args, check=False)
    one_line_error(cp, 2, f"Invalid value for {param}", message)
    assert not ccxdp.state_dir.exists(), "refused before anything was written"
    assert not ccxdp.pin_dir.exists()


# -- settings -------------------------------------------------------------------------------


@pytest.mark.root
def test_config_show_and_set_without_the_program(ccxdp):
    shown = ccxdp.json("config", "show")
    assert shown == {
        "settings": {"default_action": "drop", "sinkhole_v4": "0.0.0.0", "sinkhole_v6": "::",
                     "answer_ttl": 300, "negative_ttl": 300, "edns_udp_size": 1232,
                     "source_prefix_v6": 64, "fragments": "drop", "unparsed": "drop"},
        "loaded": False,
        "map": str(ccxdp.pin_dir / shared.MAP_CONFIG),
        "file": str(ccxdp.state_dir / "settings.json"),
    }
    assert ccxdp.json("config", "set", "negative_ttl", "60") == {
        "key": "negative_ttl", "value": 60, "previous": 300, "applied": False}
    cp = ccxdp.run("config", "set", "sinkhole_v6", "FD00::53")
    assert "sinkhole_v6 = fd00::53" in cp.stdout and "next attach" in cp.stdout
    settings = ccxdp.json("config", "show")["settings"]
    assert (settings["negative_ttl"], settings["sinkhole_v6"]) == (60, "fd00::53")
    assert not ccxdp.pin_dir.exists()


@pytest.mark.root
def test_attach_sets_the_default_action_and_sinkholes(ccxdp, bare_netns):
    p = Policy(ccxdp, bare_netns)
    ccxdp.run("config", "set", "answer_ttl", "77")  # kept from before the first attach
    p.attach("--action", "sinkhole", "--sinkhole-v4", "198.18.0.53", "--sinkhole-v6",
             "fd00::53")
    shown = ccxdp.json("config", "show")
    assert shown["loaded"] is True
    assert shown["settings"] == {"default_action": "sinkhole", "sinkhole_v4": "198.18.0.53",
                                 "sinkhole_v6": "fd00::53", "answer_ttl": 77,
                                 "negative_ttl": 300, "edns_udp_size": 1232,
                                 "source_prefix_v6": 64, "fragments": "drop",
                                 "unparsed": "drop"}
    ccxdp.run("block", "add", "sink.test")
    v = p.judge("sink.test")
    assert [r.to_text() for r in v.answer.answer[0]] == ["198.18.0.53"]
    assert v.answer.answer[0].ttl == 77
    v = p.judge("sink.test", rdtype=28)  # AAAA
    assert [r.to_text() for r in v.answer.answer[0]] == ["fd00::53"]

    # Attaching again with one option changes that one setting only, at once.
    p.attach("--sinkhole-v4", "198.18.0.54")
    settings = ccxdp.json("config", "show")["settings"]
    assert (settings["default_action"], settings["sinkhole_v4"], settings["sinkhole_v6"]) == (
        "sinkhole", "198.18.0.54", "fd00::53")
    assert [r.to_text() for r in p.judge("sink.test").answer.answer[0]] == ["198.18.0.54"]

    # config set applies to the running program at once.
    assert ccxdp.json("config", "set", "sinkhole_v4", "198.18.0.55")["applied"] is True
    assert [r.to_text() for r in p.judge("sink.test").answer.answer[0]] == ["198.18.0.55"]
    assert ccxdp.json("config", "set", "default_action", "redirect")["value"] == "sinkhole"


@pytest.mark.root
def test_a_failed_attach_keeps_the_settings(ccxdp, bare_netns):
    """The settings given to attach are applied before the program is attached: when the
    attach then fails (here: a foreign XDP program on lo), they are put back."""
    ccxdp.run("config", "set", "default_action", "refused")
    insns = libbpf.pack_insn(0xB7, dst=0, imm=2) + libbpf.pack_insn(0x95)  # return XDP_PASS
    foreign = libbpf.prog_load(6, insns, name="foreign_pass")
    try:
        from pyroute2 import IPRoute

        with IPRoute(netns=bare_netns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0],
                     IFLA_XDP={"attrs": [("IFLA_XDP_FD", foreign), ("IFLA_XDP_FLAGS", 2)]})
    finally:
        libbpf.close(foreign)
    cp = ccxdp.run("attach", "lo", "--netns", bare_netns, "--mode", "generic", "--action",
                   "nxdomain", "--sinkhole-v4", "198.18.0.53", check=False)
    one_line_error(cp, 1, "already has XDP program 'foreign_pass'")
    assert ccxdp.json("config", "show")["settings"]["default_action"] == "refused"
    assert ccxdp.json("config", "show")["settings"]["sinkhole_v4"] == "0.0.0.0"
    assert not ccxdp.pin_dir.exists()


# -- reconcile ------------------------------------------------------------------------------


@pytest.mark.root
def test_attach_after_a_purge_restores_everything_exactly(policy):
    cli = policy.cli
    cli.run("block", "add", "evil.test", "--subtree", "--action", "nxdomain", "--category",
            "emotet")
    cli.run("block", "add", "plain.test", "both.test")
    cli.run("block", "add", "sink.test", "--action", "sinkhole", "--category", "qakbot")
    cli.run("allow", "add", "cdn.evil.test", "both.test")
    cli.run("allow", "add", "static.evil.test", "--subtree")
    cli.run("exempt", "add", "198.18.7.0/24", "fd00:7::/64", "198.18.0.9")
    cli.run("config", "set", "default_action", "refused")
    cli.run("config", "set", "sinkhole_v4", "198.18.0.53")
    state = (policy.names_map(), policy.exempt_map(), policy.config_map())
    assert len(state[0]) == 6 and len(state[1]) == 3

    cli.run("detach", "lo", "--netns", policy.netns, "--purge")
    assert not cli.pin_dir.exists()
    policy.attach()
    assert (policy.names_map(), policy.exempt_map(), policy.config_map()) == state

    # Drift, as a crash between catalog and kernel could leave it: the next attach mends it.
    key = policy.dp.hash_key()
    drifted = dict(state[0])
    del drifted[name_hash("cdn.evil.test", key)]  # an allow entry lost
    drifted[name_hash("both.test", key)] = (shared.Action.DROP, 0, 0)  # a block for the allow
    drifted[4242] = (shared.Action.DROP, 0, 0)
    publish_entries(policy.dp, drifted)
    with policy.dp.open_map(shared.MAP_EXEMPT) as m:
        m.delete(lpm_key(ipaddress.ip_network("fd00:7::/64")))
        m.update(lpm_key(ipaddress.ip_network("198.18.0.0/15")), ct.c_uint8(1))
    policy.attach()
    assert (policy.names_map(), policy.exempt_map(), policy.config_map()) == state
    assert policy.judge("cdn.evil.test").retval == XDP_PASS
    assert policy.judge("www.evil.test").rcode == dns.rcode.NXDOMAIN


# -- the catalog ----------------------------------------------------------------------------


V1_SCHEMA = """
CREATE TABLE entries (
    name     TEXT PRIMARY KEY,
    hash     INTEGER NOT NULL UNIQUE,
    subtree  INTEGER NOT NULL,
    action   TEXT NOT NULL,
    category INTEGER NOT NULL DEFAULT 0,
    added_at TEXT NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version=1;
"""


def make_v1_catalog(path, rows) -> None:
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.execute("INSERT INTO meta VALUES ('key', 'f00d')")
    db.commit()
    db.close()


V1_ROWS = [
    ("evil.test", -5, 1, "drop", 0, "2026-11-01T00:00:00+00:00"),
    ("c2.test", (1 << 63) - 1, 0, "drop", 3, "2026-11-02T00:00:00+00:00"),
]


def test_catalog_migrates_from_version_1_keeping_rows(tmp_path):
    path = tmp_path / "catalog.db"
    make_v1_catalog(path, V1_ROWS)
    with Catalog(path) as c:
        assert c.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert [(e.kind, e.name, e.hash, e.match, e.action, e.category, e.added_at)
                for e in c.entries()] == [
            ("block", "c2.test", (1 << 63) - 1, "exact", "drop", 3, "2026-11-02T00:00:00Z"),
            ("block", "evil.test", (1 << 64) - 5, "subtree", "drop", 0, "2026-11-01T00:00:00Z"),
        ]
        # They become the manual source's listing, which the kernel list is made from.
        manual = c.listing(1, "block")
        assert list(manual.hashes) == [(1 << 63) - 1, (1 << 64) - 5]
        assert [unpack(v) for v in manual.values] == [("exact", "drop", 3),
                                                       ("subtree", "drop", 0)]
        assert c.meta("key") == "f00d"
        assert c.categories() == {3: "category-3"}
        assert c.category_id("emotet") == 1  # the smallest free id
        assert c.entries("allow") == [] and c.exempt() == [] and c.plan() == []
    with Catalog(path) as c:  # opening again changes nothing
        assert len(c.entries()) == 2 and c.categories() == {1: "emotet", 3: "category-3"}


def test_a_feeds_origin_and_provenance_are_kept_with_it(tmp_path):
    """Schema 5: a feed from a zone or a URL says where it came from and what its copy is."""
    with Catalog(tmp_path / "catalog.db") as c, c.transaction():
        s = c.add_source("rpz", "/var/lib/ccxdp/feeds/rpz.zone", "rpz", None, None, 0, False,
                         origin={"kind": "zone", "primary": "198.18.0.9", "zone": "rpz.test"})
        c.set_provenance(s.id, {"serial": 2026120401})
        got = c.source("rpz")
        assert (got.origin, got.provenance) == (
            {"kind": "zone", "primary": "198.18.0.9", "zone": "rpz.test"},
            {"serial": 2026120401})
        assert c.source("manual").origin is None


def test_catalog_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "catalog.db"
    sqlite3.connect(path).execute("PRAGMA user_version=9").connection.close()
    with pytest.raises(CatalogError, match="catalog schema 9 is newer than this ccxdp"):
        Catalog(path)


def test_category_ids(tmp_path):
    with Catalog(tmp_path / "c.db") as c:
        assert [c.category_id(n) for n in ("a", "b", "a", "c")] == [1, 2, 1, 3]
        c.db.execute("DELETE FROM categories WHERE id=2")
        assert c.category_id("d") == 2
        c.db.executemany("INSERT INTO categories VALUES (?, ?)",
                         [(i, f"n{i}") for i in range(4, 65536)])
        with pytest.raises(CatalogError, match="all 65535 category ids are taken"):
            c.category_id("one-too-many")


@pytest.mark.root
def test_a_version_1_catalog_is_listed_and_attached_with_its_rows(ccxdp, bare_netns):
    ccxdp.state_dir.mkdir(mode=0o700)
    make_v1_catalog(ccxdp.state_dir / "catalog.db", [
        ("old.test", 1, 1, "drop", 0, "2026-11-01T00:00:00+00:00"),
        ("older.test", 2, 0, "drop", 0, "2026-11-02T00:00:00+00:00"),
    ])
    assert ccxdp.json("block", "list") == [
        {"name": "old.test", "match": "subtree", "action": "drop", "category": None,
         "added_at": "2026-11-01T00:00:00Z"},  # stored as +00:00, shown in the one form
        {"name": "older.test", "match": "exact", "action": "drop", "category": None,
         "added_at": "2026-11-02T00:00:00Z"},
    ]
    p = Policy(ccxdp, bare_netns)
    p.attach()  # the key is new: the rows are hashed again, and written as drop entries
    assert p.entry("old.test") == (shared.Action.DROP, shared.ENTRY_SUBTREE, 0)
    assert p.entry("older.test") == (shared.Action.DROP, 0, 0)
    ccxdp.run("config", "set", "default_action", "nxdomain")
    assert p.judge("x.old.test").retval == XDP_DROP, "drop stays drop, whatever the default"


@pytest.mark.root
def test_exempt_gate_follows_the_trie(policy):
    """The program looks a source up in the trie only where the gate is open: the gate must
    open exactly the indexes of the listed prefixes, follow every change (and come back with
    the prefixes after a purge), and a source beside an exempt one under the same index must
    still be judged."""
    cli = policy.cli
    cli.run("block", "add", "evil.test", "--action", "nxdomain")

    def gate() -> set[int]:
        with policy.dp.open_map(shared.MAP_EXEMPT_GATE) as m:
            return {k.value for k, v in m.lookup_batch() if v.value}

    assert gate() == set()
    cli.run("exempt", "add", "198.18.7.0/24", "fd00:7:12:3400::/56")
    # 7.0-7.255, the low half of 198.18.7.x, and bits 32-47 of fd00:7:12:34xx::
    low = set(range(0x0700, 0x0800))
    assert gate() == low | {0x0012}
    cli.run("exempt", "add", "10.1.2.3", "fd00:9::/40")
    assert gate() == low | {0x0203} | set(range(0x0000, 0x0100))
    for src, exempt in [("198.18.7.9", True), ("198.18.8.9", False), ("10.1.2.3", True),
                        ("10.2.2.3", False), ("11.0.0.1", False),
                        ("::ffff:198.18.7.9", True), ("::ffff:198.18.8.9", False),
                        ("fd00:7:12:34ff::1", True),
                        ("fd00:7:12:3500::1", False), ("fd00:9:0:ff::1", True),
                        ("fd00:9:100::1", False)]:
        verdict = policy.judge("evil.test", src)
        assert (verdict.retval == XDP_PASS) is exempt, src
        assert exempt or verdict.rcode == dns.rcode.NXDOMAIN, src
    cli.run("exempt", "remove", "10.1.2.3", "fd00:9::/40")
    assert gate() == low | {0x0012}
    assert policy.judge("evil.test", "10.1.2.3").rcode == dns.rcode.NXDOMAIN
    cli.run("exempt", "remove", "198.18.7.0/24")
    assert gate() == {0x0012}
    cli.run("detach", "lo", "--netns", policy.netns, "--purge")
    policy.attach()
    assert gate() == {0x0012}
    assert policy.judge("evil.test", "fd00:7:12:3456::1").retval == XDP_PASS
    cli.run("exempt", "remove", "fd00:7:12:3400::/56")
    assert gate() == set()


@pytest.mark.parametrize("prefix, first, count", [
    ("198.18.7.7/32", 0x0707, 1), ("198.18.7.0/24", 0x0700, 256), ("198.18.4.0/22", 0x0400, 1024),
    ("198.18.0.0/16", 0, 65536), ("0.0.0.0/0", 0, 65536), ("2001:db8:1234::/48", 0x1234, 1),
    ("2001:db8:1234:5600::/56", 0x1234, 1), ("2001:db8:1200::/40", 0x1200, 256),
    ("2001:db8::/32", 0, 65536), ("2000::/3", 0, 65536),
])
def test_exempt_gate_indexes(prefix, first, count):
    from ccxdp.policy.exempt import gate_indexes

    assert gate_indexes(lpm_key(ipaddress.ip_network(prefix))) == range(first, first + count)


def _open_gate(dp) -> set[int]:
    with dp.open_map(shared.MAP_EXEMPT_GATE) as m:
        return {k.value for k, v in m.lookup_batch() if v.value}


def _trie(dp) -> set[tuple[int, bytes]]:
    with dp.open_map(shared.MAP_EXEMPT) as m:
        return {(k.prefixlen, bytes(k.addr)) for k in m.keys()}


@pytest.mark.root
def test_the_gate_opens_before_a_prefix_goes_in_and_closes_after_it_left(policy, monkeypatch):
    """The program skips the trie where the gate is closed: a prefix in the trie behind a
    closed gate would be judged, not exempt. At every trie write the gate must already be
    open for the prefix, and at every delete still open."""
    from ccxdp.policy.exempt import gate_indexes

    dp = policy.dp
    seen = []
    real_update, real_delete = libbpf.Map.update, libbpf.Map.delete

    def is_trie(m) -> bool:
        return m.info.name == shared.MAP_EXEMPT[:15]

    def update(self, key, value, flags=libbpf.BPF_ANY):
        if is_trie(self):
            seen.append(("insert", key.prefixlen, set(gate_indexes(key)) <= _open_gate(dp)))
        return real_update(self, key, value, flags)

    def delete(self, key):
        if is_trie(self):
            seen.append(("delete", key.prefixlen, set(gate_indexes(key)) <= _open_gate(dp)))
        return real_delete(self, key)

    monkeypatch.setattr(libbpf.Map, "update", update)
    monkeypatch.setattr(libbpf.Map, "delete", delete)
    with dp, Catalog(dp.catalog_path) as catalog:
        exempt_lib.add(dp, catalog, ["198.18.7.0/24", "fd00:7:12:3400::/56"])
        exempt_lib.remove(dp, catalog, ["198.18.7.0/24", "fd00:7:12:3400::/56"])
    assert seen == [("insert", 120, True), ("insert", 56, True),
                    ("delete", 120, True), ("delete", 56, True)]
    assert _open_gate(dp) == set() and _trie(dp) == set()


@pytest.fixture
def small_trie(tmp_path):
    """ccxdp loaded (not attached) with room for four exempt prefixes."""
    from ccxdp.datapath.loader import Limits
    from tests.conftest import make_pin_dir, remove_pins

    pin_dir = make_pin_dir()
    dp = Datapath(pin_dir, tmp_path / "state", ("-DCCXDP_MAX_EXEMPT=4",))
    try:
        with dp:
            libbpf.close(dp.load(Limits(max_names=1024, max_sources=64)))
        yield dp
    finally:
        remove_pins(pin_dir)


@pytest.mark.root
def test_a_full_trie_changes_nothing(small_trie):
    """Five prefixes for a trie of four: the kernel refuses the fifth, the ones this call
    inserted come out again, the gate closes behind them, the catalog keeps its three."""
    dp = small_trie
    first = ["198.18.1.0/24", "198.18.2.0/24", "fd00:1::/48"]
    with dp, Catalog(dp.catalog_path) as catalog:
        exempt_lib.add(dp, catalog, first)
    trie, gate = _trie(dp), _open_gate(dp)
    assert len(trie) == 3 and gate == set(range(0x0100, 0x0300)) | {0x0000}
    with dp, Catalog(dp.catalog_path) as catalog:
        with pytest.raises(CcxdpError, match=r"cannot write 3 prefixes .* nothing was changed"):
            exempt_lib.add(dp, catalog, ["198.18.2.0/24", "198.18.3.0/24", "198.18.4.0/24"])
    assert _trie(dp) == trie
    assert _open_gate(dp) == gate
    with Catalog(dp.catalog_path) as catalog:
        assert sorted(e.prefix for e in catalog.exempt()) == sorted(first)


UTC_SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.mark.root
def test_every_time_in_the_catalogs_json_is_utc_with_a_z(ccxdp, tmp_path):
    """One time format across every command (docs/: ISO 8601, UTC, a Z), also for rows an
    older catalog stored with +00:00."""
    feed = tmp_path / "cc.txt"
    feed.write_text("evil.test\n")
    ccxdp.run("block", "add", "c2.test")
    ccxdp.run("exempt", "add", "198.18.7.0/24")
    ccxdp.run("feed", "add", "cc", str(feed))
    times = [e["added_at"] for e in ccxdp.json("block", "list")]
    times += [e["added_at"] for e in ccxdp.json("exempt", "list")]
    times += [f[k] for f in ccxdp.json("feed", "list") for k in ("added_at", "synced_at")]
    assert len(times) == 5
    for t in times:
        assert UTC_SECONDS.fullmatch(t), t


# -- exempt by line --------------------------------------------------------------------------


@pytest.mark.root
def test_line_prefixes_and_static_prefixes_coexist(policy, tmp_path):
    """exempt line sync exempts what opted-out lines hold now; a prefix both static and a
    line's stays in the kernel until it has left both sets."""
    cli = policy.cli
    cli.run("block", "add", "evil.test", "--action", "nxdomain")
    cli.run("exempt", "add", "198.18.9.0/24")
    assert cli.json("exempt", "line", "add", "L-1", "L-3", "L-1") == [
        {"line": "L-1", "status": "added"}, {"line": "L-3", "status": "added"}]
    sessions = tmp_path / "radius.csv"
    sessions.write_text("L-1,198.18.9.0/24,2026-01-01T00:00:00Z,\n"
                        "L-1,fd00:9:1::/56,2026-01-01T00:00:00Z,\n"
                        "L-2,198.18.5.3,2026-01-01T00:00:00Z,\n"
                        "L-3,198.18.5.4,2026-01-01T00:00:00Z,2026-01-02T00:00:00Z\n")
    out = cli.json("exempt", "line", "sync", "--sessions", str(sessions))
    assert out == {"changes": [{"prefix": "198.18.9.0/24", "line": "L-1", "status": "added"},
                               {"prefix": "fd00:9:1::/56", "line": "L-1", "status": "added"}],
                   "prefixes": 2, "sessions": 4, "opted_out": 2}
    assert policy.exempt_map() == {mapped("198.18.9.0/24"), mapped("fd00:9:1::/56")}
    assert policy.judge("evil.test", "fd00:9:1:ff::1").retval == XDP_PASS
    assert policy.judge("evil.test", "198.18.5.3").rcode == dns.rcode.NXDOMAIN
    assert [(e["prefix"], e["line"]) for e in cli.json("exempt", "list")] == [
        ("198.18.9.0/24", None), ("198.18.9.0/24", "L-1"), ("fd00:9:1::/56", "L-1")]
    listed = cli.run("exempt", "list").stdout
    # Not a terminal: TSV, every cell whole.
    assert re.search(r"^198\.18\.9\.0/24\t\S+Z\tL-1$", listed, re.M)
    assert re.search(r"^fd00:9:1::/56\t\S+Z\tL-1$", listed, re.M)

    # The static one goes; the line still holds it, so the kernel keeps it.
    cli.run("exempt", "remove", "198.18.9.0/24")
    assert policy.exempt_map() == {mapped("198.18.9.0/24"), mapped("fd00:9:1::/56")}
    assert cli.json("exempt", "line", "sync", "--sessions", str(sessions))["changes"] == []
    # L-1 opts back in: its prefixes leave at once, without waiting for a sync.
    cp = cli.run("exempt", "line", "remove", "L-1", "L-9", "--json", check=False)
    one_line_error(cp, 1, "not opted out: 'L-9'", stderr=cp.stderr)
    assert policy.exempt_map() == set()
    assert policy.judge("evil.test", "198.18.9.7").rcode == dns.rcode.NXDOMAIN
    assert [e["line"] for e in cli.json("exempt", "line", "list")] == ["L-3"]

    # A bad sessions file changes nothing and says where.
    cli.run("exempt", "line", "add", "L-2")
    sessions.write_text("L-2,198.18.5.3,2026-01-01T00:00:00Z,\nL-2,198.18.5.300,2026,\n")
    cp = cli.run("exempt", "line", "sync", "--sessions", str(sessions), check=False)
    one_line_error(cp, 1, f"{sessions}:2: invalid address or prefix: 198.18.5.300")
    assert policy.exempt_map() == set()


@pytest.mark.root
def test_exempt_line_refusals_are_one_line(policy, tmp_path):
    cli = policy.cli
    cp = cli.run("exempt", "line", "add", "L\x1b[31m", check=False)
    assert "\x1b" not in cp.stderr
    one_line_error(cp, 2, "invalid line id 'L\\x1b[31m'")
    one_line_error(cli.run("exempt", "line", "sync", check=False), 2,
                   "give at least one of --sessions, --leases, --radacct")
    cp = cli.run("exempt", "line", "sync", "--radacct", "postgresql://u:pw@db/radius",
                 check=False)
    one_line_error(cp, 1, "holds a password")
    assert "pw@" not in cp.stderr


def test_a_version_4_catalog_gains_origin_and_provenance(tmp_path):
    path = tmp_path / "catalog.db"
    with Catalog(path) as c:
        c.db.execute("ALTER TABLE sources DROP COLUMN origin")
        c.db.execute("ALTER TABLE sources DROP COLUMN provenance")
        c.db.execute("ALTER TABLE sources DROP COLUMN max_shrink")
        c.db.execute("ALTER TABLE sources DROP COLUMN match")
        c.db.execute("ALTER TABLE sources DROP COLUMN min_confidence")
        c.db.execute("DROP TABLE plan")  # schema 6
        c.db.execute("PRAGMA user_version=4")
    with Catalog(path) as c:
        assert c.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert c.plan() == []
        assert (c.source("manual").origin, c.source("manual").provenance) == (None, None)
