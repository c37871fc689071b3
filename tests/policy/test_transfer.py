"""RPZ feeds by zone transfer through the real CLI, from real primaries (Knot DNS and BIND 9,
tests/harness/primaries.py) on loopback: AXFR then IXFR, AXFR-style answers, up to date,
TSIG, and transfers that fail or break midway changing nothing. What the kernel holds is
read back from the pinned maps and judged by the pinned program (BPF_PROG_TEST_RUN).
Key files, primaries and NOTIFY answers are also tested without root.
"""

from __future__ import annotations

import base64
import json

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import pytest

from ccxdp.errors import CcxdpError
from ccxdp.policy.transfer import (
    Primary,
    Watched,
    answer_notify,
    check_zone,
    parse_primary,
    read_tsig,
)
from tests.cli.test_policy import Policy
from tests.conftest import one_line_error
from tests.harness.primaries import Bind, CutProxy, Knot, primary
from tests.policy.test_feeds import kernel, listed

ZONE = "rpz.test"


@pytest.fixture
def policy(ccxdp, bare_netns) -> Policy:
    p = Policy(ccxdp, bare_netns)
    p.attach()
    return p


def feed(policy: Policy, name: str = "cc") -> dict:
    return next(f for f in policy.cli.json("feed", "list") if f["name"] == name)


def copy_of(policy: Policy, name: str = "cc") -> bytes:
    return (policy.cli.state_dir / "feeds" / f"{name}.zone").read_bytes()


# -- against real primaries -------------------------------------------------------------------
@pytest.mark.root
def test_axfr_then_ixfr_from_knot_with_tsig_reach_the_kernel(policy, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the table of 'feed list' on one line a feed
    cli = policy.cli
    with primary(Knot, ZONE, ["evil.test CNAME .", "*.c2.test CNAME rpz-drop.",
                              "ok.c2.test CNAME rpz-passthru."], key="ccxdp-xfr") as knot:
        added = cli.json("feed", "add", "cc", "--primary", knot.address, "--zone", ZONE,
                         "--tsig", str(knot.key_file), "--category", "family-x")
        assert (added["entries"], added["added"], added["kernel_names"]) == (
            3, {"block": 2, "allow": 1}, 3)
        assert added["provenance"]["serial"] == 1
        assert added["provenance"]["transfer"] == "axfr"
        assert listed(policy) == {"evil.test": ("exact", "nxdomain", "family-x"),
                                  "c2.test": ("below", "drop", "family-x")}
        assert policy.judge("evil.test").rcode == dns.rcode.NXDOMAIN
        assert policy.judge("x.c2.test").retval == 1  # XDP_DROP
        assert policy.judge("ok.c2.test").retval == 2  # allowed: XDP_PASS

        # Names added and removed on the primary: an IXFR carries only those.
        knot.change(["*.c2.test CNAME rpz-drop.", "ok.c2.test CNAME rpz-passthru.",
                     "new.test CNAME .", "sink.test A 198.18.2.1"])
        synced = cli.json("feed", "sync", "cc")[0]
        assert synced["provenance"]["transfer"] == "ixfr"
        assert synced["provenance"]["serial"] == 2
        assert (synced["added"], synced["removed"], synced["kernel_names"]) == (
            {"block": 2, "allow": 0}, {"block": 1, "allow": 0}, 4)
        assert listed(policy) == {"new.test": ("exact", "nxdomain", "family-x"),
                                  "sink.test": ("exact", "sinkhole", "family-x"),
                                  "c2.test": ("below", "drop", "family-x")}
        assert set(kernel(policy)) == {"new.test", "sink.test", "c2.test", "ok.c2.test"}
        assert policy.judge("evil.test").retval == 2  # unlisted: passes to the resolver
        assert policy.judge("new.test").rcode == dns.rcode.NXDOMAIN

        # The copy is the zone at serial 2, one record a line.
        lines = copy_of(policy).decode().splitlines()
        assert lines[0] == f"$ORIGIN {ZONE}."
        assert lines[1].split()[:2] == ["@", "SOA"] and lines[1].split()[4] == "2"
        assert sorted(lines[3:]) == ["*.c2.test CNAME rpz-drop.", "new.test CNAME .",
                                     "ok.c2.test CNAME rpz-passthru.", "sink.test A 198.18.2.1"]

        # Nothing new: the primary says so with its SOA alone, and nothing is rewritten.
        before = copy_of(policy)
        again = cli.json("feed", "sync", "cc")[0]
        assert again["unchanged"] is True
        assert again["provenance"]["serial"] == 2
        assert again["provenance"]["transfer"] == "ixfr"  # how the copy last changed
        assert copy_of(policy) == before
        f = feed(policy)
        assert f["origin"] == {"kind": "zone", "primary": "127.0.0.1", "port": knot.port,
                               "zone": ZONE, "tsig": str(knot.key_file)}
        assert (f["provenance"]["zone"], f["provenance"]["serial"], f["block"],
                f["allow"]) == (ZONE, 2, 3, 1)
        assert f["provenance"]["checked_at"] >= f["provenance"]["transferred_at"]
        text = cli.run("feed", "list").stdout
        assert f"{ZONE} from 127.0.0.1:{knot.port}" in text and "ixfr" in text
        # The zone and serial each listed name came from.
        sources = {e["name"]: e["copies"] for e in cli.json("block", "list", "--sources")}
        assert sources == dict.fromkeys(("new.test", "sink.test", "c2.test"),
                                        {"cc": {"zone": ZONE, "serial": 2}})
        assert f"\ncc\tzone {ZONE}, serial 2\n" in cli.run("block", "list", "--sources").stdout

        # --force: the whole zone again, the same list.
        forced = cli.json("feed", "sync", "cc", "--force")[0]
        assert forced["provenance"]["transfer"] == "axfr"
        assert (forced["added"], forced["removed"]) == ({"block": 0, "allow": 0},
                                                        {"block": 0, "allow": 0})


@pytest.mark.root
def test_bind_ixfr_from_a_dynamic_update_then_an_axfr_style_answer(policy):
    cli = policy.cli
    with primary(Bind, ZONE, ["a.test CNAME .", "b.test CNAME ."], key="bind-xfr") as bind:
        cli.run("feed", "add", "cc", "--primary", bind.address, "--zone", ZONE, "--tsig",
                str(bind.key_file))
        assert set(listed(policy)) == {"a.test", "b.test"}
        bind.update(add=["c.test CNAME rpz-drop."], delete=["a.test CNAME ."])
        synced = cli.json("feed", "sync", "cc")[0]
        assert (synced["provenance"]["transfer"], synced["provenance"]["serial"]) == ("ixfr", 2)
        assert listed(policy) == {"b.test": ("exact", "nxdomain", "cc"),
                                  "c.test": ("exact", "drop", "cc")}

        # The primary lost its history (journal gone): it answers the IXFR with the zone.
        bind.restart_with_file(["c.test CNAME rpz-drop.", "d.test CNAME ."], 7)
        synced = cli.json("feed", "sync", "cc")[0]
        assert (synced["provenance"]["transfer"], synced["provenance"]["serial"]) == (
            "axfr-style ixfr", 7)
        assert (synced["added"], synced["removed"]) == ({"block": 1, "allow": 0},
                                                        {"block": 1, "allow": 0})
        assert set(listed(policy)) == {"c.test", "d.test"}
        assert set(kernel(policy)) == {"c.test", "d.test"}


@pytest.mark.root
def test_a_bad_tsig_key_is_refused_and_changes_nothing(policy, tmp_path):
    cli = policy.cli
    with primary(Bind, ZONE, ["a.test CNAME ."], key="bind-xfr") as bind:
        # The right name, another secret.
        wrong = tmp_path / "wrong.key"
        wrong.write_text('key "bind-xfr" {\n\talgorithm hmac-sha256;\n\tsecret "'
                         + base64.b64encode(b"x" * 32).decode() + '";\n};\n')
        wrong.chmod(0o600)
        refused = cli.run("feed", "add", "cc", "--primary", bind.address, "--zone", ZONE,
                          "--tsig", str(wrong), check=False)
        one_line_error(refused, 1, f"zone {ZONE} from {bind.address}", "nothing was changed")
        assert "TSIG" in refused.stderr or "NOTAUTH" in refused.stderr
        assert cli.json("feed", "list") == []
        assert not (cli.state_dir / "feeds" / "cc.zone").exists()

        cli.run("feed", "add", "cc", "--primary", bind.address, "--zone", ZONE, "--tsig",
                str(bind.key_file))
        bind.update(add=["b.test CNAME ."])
        before = (feed(policy)["provenance"], copy_of(policy), kernel(policy))
        bind.key_file.write_text(wrong.read_text())  # the feed's key file, now wrong
        refused = cli.run("feed", "sync", "cc", check=False)
        one_line_error(refused, 1, "nothing was changed")
        assert (feed(policy)["provenance"], copy_of(policy), kernel(policy)) == before
        assert set(listed(policy)) == {"a.test"}


@pytest.mark.root
def test_a_transfer_cut_midway_changes_nothing(policy):
    cli = policy.cli
    names = [f"n{i}.test CNAME ." for i in range(3000)]
    with primary(Knot, ZONE, names) as knot:
        proxy = CutProxy(knot.port)
        try:
            cli.run("feed", "add", "cc", "--primary", proxy.address, "--zone", ZONE)
            assert feed(policy)["block"] == 3000
            knot.change(names[1000:] + [f"m{i}.test CNAME ." for i in range(1500)])
            before = (feed(policy)["provenance"], copy_of(policy), kernel(policy))
            for args, cut in ((("cc",), 2000), (("cc", "--force"), 30000)):
                proxy.cut = cut  # inside the IXFR's one message, then the AXFR's second
                broken = cli.run("feed", "sync", *args, check=False)
                one_line_error(broken, 1, "closed the connection before the transfer was "
                               "complete", "nothing was changed")
                assert (feed(policy)["provenance"], copy_of(policy), kernel(policy)) == before
            assert proxy.cuts == 2
            # The primary gone (killed): the same.
            knot.kill()
            broken = cli.run("feed", "sync", "cc", check=False)
            one_line_error(broken, 1, "before the transfer was complete", "nothing was changed")
            assert (feed(policy)["provenance"], copy_of(policy), kernel(policy)) == before
        finally:
            proxy.close()


# -- refusals, without a primary -------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["cc", "/etc/hosts", "--primary", "127.0.0.1"], ["PATH", "not both"]),
    (["cc"], ["PATH", "--primary"]),
    (["cc", "--primary", "127.0.0.1"], ["--zone"]),
    (["cc", "--primary", "127.0.0.1", "--zone", ZONE, "--format", "plain"], ["--format"]),
    (["cc", "/etc/hosts", "--zone", ZONE], ["--zone", "--primary"]),
    (["cc", "--primary", "primary.example", "--zone", ZONE], ["--primary", "IP address"]),
    (["cc", "--primary", "127.0.0.1:70000", "--zone", ZONE], ["--primary", "70000"]),
    (["cc", "--primary", "127.0.0.1", "--zone", "a..b"], ["--zone", "a..b"]),
    (["cc", "--primary", "127.0.0.1", "--zone", ZONE, "--tsig", "/nonexistent.key"],
     ["--tsig", "/nonexistent.key"]),
])
def test_feed_add_refuses_bad_zone_options_in_one_line(ccxdp, args, words):
    cp = ccxdp.run("feed", "add", *args, check=False)
    one_line_error(cp, 2, *words)


def test_key_files_of_bind_and_knot(tmp_path):
    secret = base64.b64encode(b"k" * 32).decode()
    bind = tmp_path / "bind.key"
    bind.write_text(f'# tsig-keygen\nkey "xfr.key" {{\n\talgorithm hmac-sha256;\n'
                    f'\tsecret "{secret}";\n}};\n')
    bind.chmod(0o600)
    knot = tmp_path / "knot.key"
    knot.write_text(f"# hmac-sha256:xfr.key:{secret}\nkey:\n  - id: xfr.key\n"
                    f"    algorithm: hmac-sha256\n    secret: {secret}\n")
    knot.chmod(0o644)
    a, b = read_tsig(bind), read_tsig(knot)
    assert (a.name, a.algorithm, a.secret, a.warning) == ("xfr.key", "hmac-sha256", secret,
                                                           None)
    assert (b.name, b.algorithm, b.secret) == ("xfr.key", "hmac-sha256", secret)
    assert b.warning == f"TSIG key file {knot} can be read by others (mode 644): chmod 600 it"
    assert secret not in repr(a)
    bad = tmp_path / "bad.key"
    for text, words in ((f'key "x" {{ algorithm hmac-foo; secret "{secret}"; }};',
                         "algorithm 'hmac-foo'"),
                        ('key "x" { algorithm hmac-sha256; secret "!!"; };', "no key found"),
                        ("nothing here", "no key found")):
        bad.write_text(text)
        with pytest.raises(CcxdpError) as e:
            read_tsig(bad)
        assert words in str(e.value) and str(bad) in str(e.value)
        assert secret not in str(e.value)


@pytest.mark.parametrize("text, address, port", [
    ("198.18.0.53", "198.18.0.53", 53), ("198.18.0.53:5353", "198.18.0.53", 5353),
    ("[fd00::53]:54", "fd00::53", 54), ("fd00::53", "fd00::53", 53)])
def test_primary_addresses(text, address, port):
    assert parse_primary(text) == Primary(address, port)


def test_zone_names_are_kept_lower_case_without_the_dot():
    assert check_zone("RPZ.Example.") == "rpz.example"
    with pytest.raises(CcxdpError):
        check_zone(".")


# -- NOTIFY answers ---------------------------------------------------------------------------
def notify(zone: str = ZONE, key: dns.tsig.Key | None = None, serial: int = 9) -> bytes:
    q = dns.message.make_query(zone, dns.rdatatype.SOA)
    q.flags = dns.flags.AA  # the opcode lives in the flags word: set it after
    q.set_opcode(dns.opcode.NOTIFY)
    q.answer.append(dns.rrset.from_text(zone + ".", 60, "IN", "SOA",
                                        f"ns. h. {serial} 1 1 1 1"))
    if key is not None:
        q.use_tsig(key)
    return q.to_wire()


def test_notify_is_accepted_from_the_primary_only_and_signed_when_keyed(tmp_path):
    secret = base64.b64encode(b"n" * 32).decode()
    path = tmp_path / "k.key"
    path.write_text(f'key "n" {{ algorithm hmac-sha256; secret "{secret}"; }};')
    path.chmod(0o600)
    key = read_tsig(path)
    watched = [Watched("cc", ZONE, Primary("198.18.0.53")),
               Watched("signed", "rpz.signed", Primary("198.18.0.54", 5353), key)]

    reply, e = answer_notify(notify(), "198.18.0.53", watched)
    r = dns.message.from_wire(reply)
    assert (r.rcode(), r.opcode(), bool(r.flags & dns.flags.QR)) == (
        dns.rcode.NOERROR, dns.opcode.NOTIFY, True)
    assert (e.feed, e.zone, e.serial, e.rcode) == ("cc", ZONE, 9, "NOERROR")

    for wire, sender, rcode, reason in (
        (notify(), "198.18.0.99", dns.rcode.REFUSED, "not from the zone's primary"),
        (notify("other.test"), "198.18.0.53", dns.rcode.REFUSED, "no feed of that zone"),
        (notify("rpz.signed"), "198.18.0.54", dns.rcode.NOTAUTH, "TSIG: unsigned"),
        (notify("rpz.signed", dns.tsig.Key("n", base64.b64encode(b"z" * 32).decode())),
         "198.18.0.54", dns.rcode.NOTAUTH, "TSIG: "),
    ):
        reply, e = answer_notify(wire, sender, watched)
        r = dns.message.from_wire(reply, keyring=False)
        assert (r.rcode(), e.feed) == (rcode, None), (sender, reason)
        assert e.reason.startswith(reason)

    wire = notify("rpz.signed", key.keyring())
    reply, e = answer_notify(wire, "198.18.0.54", watched)
    assert (e.feed, e.rcode) == ("signed", "NOERROR")
    q = dns.message.from_wire(wire, keyring=key.keyring())
    r = dns.message.from_wire(reply, keyring=key.keyring(), request_mac=q.mac)
    assert r.had_tsig and r.rcode() == dns.rcode.NOERROR
    assert json.dumps(e.__dict__)  # every field is plain data, for the log
