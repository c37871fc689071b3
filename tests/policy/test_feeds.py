"""Feeds and imports through the real CLI: reference counts across sources, syncs that apply
only the difference, refused files that change nothing, and what the kernel then judges."""

from __future__ import annotations

import json

import pytest

from ccxdp.datapath import shared
from ccxdp.datapath.hashing import name_hash
from tests.cli.test_policy import XDP_DROP, XDP_PASS, XDP_TX, Policy
from tests.conftest import kernel_names

pytestmark = pytest.mark.root

A = shared.Action


@pytest.fixture
def policy(ccxdp, bare_netns) -> Policy:
    p = Policy(ccxdp, bare_netns)
    p.attach()
    return p


def write(path, *lines: str):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def listed(policy: Policy) -> dict[str, tuple]:
    """{name: (match, action, category)} of the block list."""
    return {e["name"]: (e["match"], e["action"], e["category"])
            for e in policy.cli.json("block", "list")}


def kernel(policy: Policy) -> dict[str, tuple[int, int, int]]:
    """The kernel's live list, by name (every hash must belong to a listed name)."""
    key = policy.dp.hash_key()
    names = {name_hash(e["name"], key): e["name"]
             for kind in ("block", "allow") for e in policy.cli.json(kind, "list")}
    return {names[h]: v for h, v in kernel_names(policy.dp).items()}


def test_a_name_two_feeds_list_stays_until_both_drop_it(policy, tmp_path):
    cli = policy.cli
    a = write(tmp_path / "a.txt", "x.test", "shared.test")
    b = write(tmp_path / "b.txt", "# feed b", "shared.test", "z.test")
    cli.run("feed", "add", "alpha", str(a), "--action", "nxdomain")
    added = cli.json("feed", "add", "beta", str(b), "--action", "drop")
    assert (added["entries"], added["added"], added["kernel_names"]) == (
        2, {"block": 1, "allow": 0}, 3)
    # alpha was added first, so its action and category win for the shared name.
    assert listed(policy) == {"shared.test": ("exact", "nxdomain", "alpha"),
                              "x.test": ("exact", "nxdomain", "alpha"),
                              "z.test": ("exact", "drop", "beta")}
    assert [(f["name"], f["block"]) for f in cli.json("feed", "list")] == [("alpha", 2),
                                                                           ("beta", 2)]
    assert policy.judge("shared.test").rcode == 3  # NXDOMAIN

    both = {e["name"]: (e["sources"], e["last_seen"]) for e in cli.json("block", "list",
                                                                         "--sources")}
    synced = {f["name"]: f["synced_at"] for f in cli.json("feed", "list")}
    assert both == {"shared.test": (["alpha", "beta"], max(synced.values())),
                    "x.test": (["alpha"], synced["alpha"]), "z.test": (["beta"], synced["beta"])}
    removed = cli.json("feed", "remove", "alpha")
    assert removed["removed"] == {"block": 1, "allow": 0}  # x.test; shared.test stays
    assert listed(policy) == {"shared.test": ("exact", "drop", "beta"),
                              "z.test": ("exact", "drop", "beta")}
    assert policy.judge("shared.test").retval == XDP_DROP
    assert policy.judge("x.test").retval == XDP_PASS
    beta = policy.dp.hash_key()
    assert set(kernel_names(policy.dp)) == {name_hash("shared.test", beta),
                                            name_hash("z.test", beta)}
    cli.run("feed", "remove", "beta")
    assert listed(policy) == {} and kernel_names(policy.dp) == {}
    assert cli.json("feed", "list") == []


def test_a_name_added_by_hand_outlives_the_feed_and_wins_over_it(policy, tmp_path):
    cli = policy.cli
    cli.run("feed", "add", "f", str(write(tmp_path / "f.txt", "both.test", "feed.test")))
    cli.run("block", "add", "both.test", "--action", "refused", "--category", "manual-pick")
    assert listed(policy)["both.test"] == ("exact", "refused", "manual-pick")
    cli.run("feed", "remove", "f")
    assert listed(policy) == {"both.test": ("exact", "refused", "manual-pick")}
    assert policy.judge("both.test").rcode == 5  # REFUSED


def test_sync_applies_only_the_difference(policy, tmp_path):
    cli = policy.cli
    path = write(tmp_path / "feed.txt", "one.test", "two.test", "three.test")
    cli.run("feed", "add", "f", str(path), "--category", "emotet")
    first = {e["name"]: e["added_at"] for e in cli.json("block", "list")}

    write(tmp_path / "feed.txt", "two.test", "Three.Test.", "four.test")
    synced = cli.json("feed", "sync", "f")
    assert len(synced) == 1
    assert (synced[0]["added"], synced[0]["removed"], synced[0]["changed"]) == (
        {"block": 1, "allow": 0}, {"block": 1, "allow": 0}, {"block": 0, "allow": 0})
    now = {e["name"]: e["added_at"] for e in cli.json("block", "list")}
    assert sorted(now) == ["four.test", "three.test", "two.test"]
    assert now["two.test"] == first["two.test"], "a name that stays keeps its added_at"
    assert policy.judge("one.test").retval == XDP_PASS
    assert policy.judge("four.test").retval == XDP_DROP

    again = cli.json("feed", "sync")
    assert again[0]["unchanged"] is True and again[0]["added"] == {"block": 0, "allow": 0}
    assert cli.json("feed", "list")[0]["synced_at"] is not None


def test_a_file_with_a_bad_line_changes_nothing_unless_told_to_skip(policy, tmp_path):
    cli = policy.cli
    cli.run("block", "import", str(write(tmp_path / "good.txt", "kept.test", "also.test")))
    before = (listed(policy), kernel(policy))
    bad = write(tmp_path / "bad.txt", "new.test", "bad..name.test", "x" * 64 + ".test")
    cp = cli.run("block", "import", str(bad), "--replace", check=False)
    assert cp.returncode == 1
    assert f"{bad}:2: " in cp.stderr and f"{bad}:3: " in cp.stderr
    assert "nothing was imported" in cp.stderr and "Traceback" not in cp.stderr
    assert (listed(policy), kernel(policy)) == before

    cp = cli.run("feed", "add", "broken", str(bad), check=False)
    assert cp.returncode == 1 and cli.json("feed", "list") == []
    assert (listed(policy), kernel(policy)) == before

    done = cli.json("block", "import", str(bad), "--skip-invalid")
    assert [line.split(": ")[0] for line in done["bad_lines"]] == [f"{bad}:2", f"{bad}:3"]
    assert sorted(listed(policy)) == ["also.test", "kept.test", "new.test"]


def test_an_import_that_does_not_fit_the_kernel_changes_nothing(ccxdp, bare_netns, tmp_path):
    policy = Policy(ccxdp, bare_netns)
    policy.attach("--max-names", "8")
    ccxdp.run("block", "import", str(write(tmp_path / "few.txt", "a.test", "b.test")))
    before = (listed(policy), kernel(policy))
    many = write(tmp_path / "many.txt", *(f"n{i}.test" for i in range(9)))
    cp = ccxdp.run("block", "import", str(many), "--replace", check=False)
    assert cp.returncode == 1 and "nothing was changed" in cp.stderr
    assert (listed(policy), kernel(policy)) == before


def test_replace_makes_the_file_the_whole_manual_list(policy, tmp_path):
    cli = policy.cli
    cli.run("block", "add", "old.test", "--subtree")
    cli.run("block", "import", str(write(tmp_path / "l.txt", "new.test")), "--replace",
            "--action", "sinkhole")
    assert listed(policy) == {"new.test": ("exact", "sinkhole", None)}


def test_rpz_triggers_reach_the_kernel_with_their_actions(policy, tmp_path):
    cli = policy.cli
    zone = write(
        tmp_path / "feed.rpz",
        "$TTL 300",
        "@ SOA localhost. root.localhost. 1 3600 600 86400 300",
        "  NS localhost.",
        "nx.test CNAME .",
        "*.sub.test CNAME .",
        "sub.test CNAME .",
        "*.wild.test CNAME .",
        "nodata.test CNAME *.",
        "drop.test CNAME rpz-drop.",
        "tc.test CNAME rpz-tcp-only.",
        "sink.test A 198.18.9.9",
        "ok.sub.test CNAME rpz-passthru.",
        "32.1.2.18.198.rpz-ip CNAME .",
    )
    out = cli.json("feed", "add", "rpz", str(zone))
    assert out["skipped"] == {"rpz-ip trigger": 1}
    assert listed(policy) == {
        "drop.test": ("exact", "drop", "rpz"),
        "nodata.test": ("exact", "nodata", "rpz"),
        "nx.test": ("exact", "nxdomain", "rpz"),
        "sink.test": ("exact", "sinkhole", "rpz"),
        "sub.test": ("subtree", "nxdomain", "rpz"),
        "tc.test": ("exact", "tc", "rpz"),
        "wild.test": ("below", "nxdomain", "rpz"),
    }
    assert [e["name"] for e in cli.json("allow", "list")] == ["ok.sub.test"]
    assert policy.judge("nx.test").rcode == 3
    assert policy.judge("a.b.sub.test").rcode == 3
    assert policy.judge("ok.sub.test").retval == XDP_PASS  # passthru beats the subtree
    assert policy.judge("wild.test").retval == XDP_PASS  # *.name alone: not the name
    assert policy.judge("x.wild.test").rcode == 3
    assert policy.judge("drop.test").retval == XDP_DROP
    tc = policy.judge("tc.test")
    assert tc.retval == XDP_TX and tc.answer.flags & 0x0200  # TC set


def test_export_then_import_gives_the_same_list(policy, tmp_path):
    cli = policy.cli
    cli.run("block", "add", "a.test", "--subtree", "--action", "nxdomain", "--category", "c1")
    cli.run("block", "add", "b.test")
    cli.run("allow", "add", "ok.a.test")
    before = (listed(policy), cli.json("allow", "list"))
    out = tmp_path / "export.csv"
    cli.run("block", "export", "--format", "csv", "--allow", "-o", str(out))
    cli.run("block", "remove", "a.test", "b.test")
    cli.run("allow", "remove", "ok.a.test")
    cli.run("block", "import", str(out), "--format", "csv")
    after = (listed(policy), cli.json("allow", "list"))
    strip = [{k: v for k, v in e.items() if k != "added_at"} for e in before[1]]
    assert after[0] == before[0]
    assert [{k: v for k, v in e.items() if k != "added_at"} for e in after[1]] == strip


@pytest.mark.parametrize("fmt, lines, changed", [
    ("plain",
     ["# feed", "one.test", "dup.test", "DUP.test.", "two.test", "bad..test", "",
      "three.test"],
     ["# feed, updated", "dup.test", "two.test", "bad..test", "", "three.test", "Four.Test",
      "five.test", "five.test"]),
    ("hosts",
     ["127.0.0.1 localhost", "0.0.0.0 one.test", "0.0.0.0 two.test", "0.0.0.0 dup.test",
      "0.0.0.0 dup.test"],
     ["127.0.0.1 localhost", "0.0.0.0 two.test", "0.0.0.0 dup.test", "0.0.0.0 six.test",
      "0.0.0.0 al1.test al2.test"]),
    ("adblock",
     ["[Adblock Plus 2.0]", "||one.test^", "||two.test^", "@@||ok.two.test^"],
     ["[Adblock Plus 2.0]", "||two.test^", "@@||ok.two.test^", "||seven.test^"]),
    # "x" and "*.x" make one subtree entry: without "*.x" it must be exact again.
    ("plain", ["x.test", "*.x.test", "y.test"], ["x.test", "y.test", "z.test"]),
])
def test_a_sync_by_lines_lists_what_a_full_parse_lists(policy, tmp_path, fmt, lines, changed):
    """A sync parses only the lines that changed; the result must be exactly what reading the
    whole file gives: a name another line still gives stays, duplicates and bad lines count
    once, alias lines are read in full."""
    cli = policy.cli
    path = write(tmp_path / "feed.txt", *lines)
    cli.run("feed", "add", "f", str(path), "--format", fmt, "--skip-invalid")
    write(tmp_path / "feed.txt", *changed)
    by_lines = cli.json("feed", "sync", "f")[0]
    if not any(line.startswith("*.") for line in lines):
        assert 0 < by_lines["lines_parsed"] < len(changed), "only the new lines were parsed"
    listed_by_lines = (listed(policy), cli.json("allow", "list"), kernel(policy))
    forced = cli.json("feed", "sync", "f", "--force")[0]
    assert forced["lines_parsed"] is None
    assert forced["added"] == forced["removed"] == {"block": 0, "allow": 0}
    assert (listed(policy), cli.json("allow", "list"), kernel(policy)) == listed_by_lines
    assert by_lines["bad_lines"] == forced["bad_lines"]
    assert by_lines["entries"] == forced["entries"]


def test_export_refuses_what_the_format_cannot_mean_and_writes_nothing(policy, tmp_path):
    cli = policy.cli
    rpz = write(tmp_path / "below.rpz", "$ORIGIN rpz.test.", "@ SOA ns. h. 1 1 1 1 1",
                "*.below.test CNAME .")
    cli.run("block", "import", str(rpz))  # only the names below below.test
    out = tmp_path / "export.adblock"
    cp = cli.run("block", "export", "--format", "adblock", "-o", str(out), check=False)
    assert cp.returncode == 1 and "adblock cannot hold below.test" in cp.stderr
    assert not out.exists() and not list(tmp_path.glob("*export*"))


@pytest.mark.parametrize("fmt", ["plain", "hosts", "rpz"])
def test_export_in_a_format_that_keeps_less_says_what_it_left_out(policy, tmp_path, fmt):
    cli = policy.cli
    cli.run("feed", "add", "f", str(write(tmp_path / "f.txt", "a.test", "b.test")),
            "--action", "nxdomain")
    out = tmp_path / f"export.{fmt}"
    cp = cli.run("block", "export", "--format", fmt, "-o", str(out))
    assert "2 entries written" in cp.stdout
    kept = "no categories" if fmt == "rpz" else "no actions or categories"
    assert f"{fmt} keeps {kept}: 2 entries were written without theirs" in cp.stderr
    cli.run("feed", "remove", "f")
    cli.run("block", "import", str(out), "--format", fmt)
    action = "nxdomain" if fmt == "rpz" else "default"
    assert listed(policy) == {"a.test": ("exact", action, None),
                              "b.test": ("exact", action, None)}


# -- the shrink guard ---------------------------------------------------------------------------

def test_an_emptied_feed_file_is_refused_and_changes_nothing(policy, tmp_path, real_feeds):
    """The issue's case: a 0-byte file (or one of comments only) used to unlist every name
    of a feed, exit 0. The real phishing list's 190,215 names stay."""
    from tests.conftest import one_line_error

    cli = policy.cli
    src = real_feeds / "blocklistproject-phishing.plain"
    # Expected from the format's rules: every line that is neither blank nor a '#' comment.
    names = sum(1 for line in src.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#"))
    assert names == 190_215
    feed = tmp_path / "phishing.txt"
    feed.write_bytes(src.read_bytes())
    assert cli.json("feed", "add", "phishing", str(feed))["entries"] == names
    for emptied in (b"", b"# a comment\n# and another\n"):
        feed.write_bytes(emptied)
        one_line_error(cli.run("feed", "sync", "phishing", check=False), 1,
                       "feed 'phishing': the file lists no name (plain, 0 entries",
                       "down from 190,215 names: refused, nothing was changed")
        assert [f["block"] for f in cli.json("feed", "list")] == [names]
    # --json prints the result object of the refused sync too.
    cp = cli.run("feed", "sync", "phishing", "--json", check=False)
    [refused] = json.loads(cp.stdout)
    assert (cp.returncode, refused["entries"], refused["refused"]) == (
        1, 0, "feed 'phishing': the file lists no name (plain, 0 entries, 0 bad lines, 0 "
              "skipped), down from 190,215 names: refused, nothing was changed "
              "(--allow-shrink applies it anyway)")
    [applied] = cli.json("feed", "sync", "phishing", "--allow-shrink")
    assert applied["removed"]["block"] == names
    assert cli.json("feed", "list")[0]["block"] == 0


def test_a_sync_that_removes_too_many_names_is_refused_unless_allowed(policy, tmp_path):
    from tests.conftest import one_line_error

    cli = policy.cli
    feed = write(tmp_path / "f.txt", *(f"n{i}.test" for i in range(40)))
    cli.run("feed", "add", "f", str(feed))
    write(feed, *(f"n{i}.test" for i in range(16)), "new.test")  # 24 of 40 go: 60%
    one_line_error(cli.run("feed", "sync", "f", check=False), 1,
                   "feed 'f': the new list would remove 24 of its 40 names (60%, more than "
                   "the 50% allowed) and keep 16: refused, nothing was changed")
    assert len(listed(policy)) == 40
    write(feed, *(f"n{i}.test" for i in range(20)))  # exactly half: allowed
    assert cli.json("feed", "sync", "f")[0]["removed"]["block"] == 20
    # A feed with a larger allowance, from the start.
    g = write(tmp_path / "g.txt", *(f"g{i}.test" for i in range(40)))
    cli.run("feed", "add", "g", str(g), "--max-shrink", "80")
    write(g, *(f"g{i}.test" for i in range(10)))
    assert cli.json("feed", "sync", "g")[0]["removed"]["block"] == 30
    # A list of fewer than 20 names changes freely (but never to nothing).
    h = write(tmp_path / "h.txt", "a.test", "b.test")
    cli.run("feed", "add", "h", str(h))
    write(h, "c.test")
    assert cli.json("feed", "sync", "h")[0]["removed"]["block"] == 2


def test_a_file_that_lists_no_name_is_not_registered_nor_imported(policy, tmp_path):
    from tests.conftest import one_line_error

    cli = policy.cli
    comments = write(tmp_path / "c.txt", "# nothing here yet")
    one_line_error(cli.run("feed", "add", "c", str(comments), check=False), 1,
                   "feed 'c': the file lists no name", "nothing to list: refused")
    assert cli.json("feed", "list") == []
    cli.run("block", "add", "keep.test")
    one_line_error(cli.run("block", "import", str(comments), "--replace", check=False), 1,
                   "the file lists no name", "down from 1 names")
    assert list(listed(policy)) == ["keep.test"]
    # A forced wrong format, its bad lines skipped: no name left, refused all the same.
    plain = write(tmp_path / "p.txt", "a.test", "b.test")
    cp = cli.run("block", "import", str(plain), "--format", "hosts", "--replace",
                 "--skip-invalid", check=False)
    one_line_error(cp, 1, "the file lists no name (hosts, 0 entries, 2 bad lines",
                   "refused, nothing was changed")
    assert list(listed(policy)) == ["keep.test"]


@pytest.mark.parametrize("exact_first", [True, False])
def test_the_broader_block_wins_when_sources_disagree_on_the_match(policy, tmp_path,
                                                                   exact_first):
    """The issue's live case: one feed lists microsofthk.com exactly, another as a subtree
    (||microsofthk.com^); update.microsofthk.com, the C&C host, must be blocked whichever
    feed came first. Action and category stay the earlier source's."""
    cli = policy.cli
    exact = write(tmp_path / "exact.txt", "microsofthk.com", "only-exact.test")
    subtree = write(tmp_path / "subtree.adblock", "||microsofthk.com^", "||only-sub.test^")
    feeds = [("exact", exact, "nxdomain"), ("sub", subtree, "drop")]
    for name, path, action in feeds if exact_first else feeds[::-1]:
        cli.run("feed", "add", name, str(path), "--action", action)
    first_action, first_category = ("nxdomain", "exact") if exact_first else ("drop", "sub")
    assert listed(policy)["microsofthk.com"] == ("subtree", first_action, first_category)
    assert listed(policy)["only-exact.test"][0] == "exact"
    verdict = policy.judge("update.microsofthk.com")
    if first_action == "nxdomain":
        assert verdict.rcode == 3
    else:
        assert verdict.retval == XDP_DROP
    assert policy.judge("x.only-exact.test").retval == XDP_PASS
    # The subtree's feed goes: the name is exact again.
    cli.run("feed", "remove", "sub")
    assert listed(policy)["microsofthk.com"] == ("exact", "nxdomain", "exact")
    assert policy.judge("update.microsofthk.com").retval == XDP_PASS


def test_a_dns_tunnel_c2_list_imported_as_subtrees_blocks_its_beacons(policy, tmp_path,
                                                                      real_feeds):
    """C2IntelFeeds' DNS C2 domains: the beacons query random names below each listed one,
    so the CSV is taken with --match subtree (its names column found by content)."""
    from tests.conftest import one_line_error

    cli = policy.cli
    feed = tmp_path / "dnsc2.csv"
    feed.write_bytes((real_feeds / "c2intelfeeds-dnsc2domains.csv").read_bytes())
    added = cli.json("feed", "add", "dnsc2", str(feed), "--match", "subtree",
                     "--action", "nxdomain")
    assert (added["entries"], added["column"], added["added"]["block"]) == (31, "domain", 31)
    assert {m for m, _a, _c in listed(policy).values()} == {"subtree"}
    assert policy.judge("x7f3a9.ns1.163microsoft.com").rcode == 3
    assert policy.judge("163microsoft.com").rcode == 3
    rpz = write(tmp_path / "z.rpz", "$ORIGIN rpz.test.", "@ SOA ns. h. 1 1 1 1 1",
                "a.test CNAME .")
    one_line_error(cli.run("feed", "add", "z", str(rpz), "--match", "subtree", check=False),
                   1, "rpz gives each entry its own match; --match is for plain, hosts, csv")


def test_a_gzip_feed_is_synced_by_difference_like_any_file(policy, tmp_path):
    import gzip

    cli = policy.cli
    feed = tmp_path / "names.txt.gz"
    feed.write_bytes(gzip.compress(b"".join(b"n%d.test\n" % i for i in range(20))))
    assert cli.json("feed", "add", "gz", str(feed))["entries"] == 20
    feed.write_bytes(gzip.compress(b"".join(b"n%d.test\n" % i for i in range(1, 22))))
    [r] = cli.json("feed", "sync", "gz")
    assert (r["added"]["block"], r["removed"]["block"], r["entries"]) == (2, 1, 21)
    assert "n21.test" in listed(policy) and "n0.test" not in listed(policy)


THREATFOX_HEADER = ('# "first_seen_utc","ioc_id","ioc_value","ioc_type","threat_type",'
                    '"fk_malware","malware_alias","malware_printable","last_seen_utc",'
                    '"confidence_level","reference","tags","anonymous","reporter"')


def test_a_threatfox_export_gives_its_domains_with_their_family_above_a_confidence(
        policy, tmp_path):
    """abuse.ch ThreatFox's real CSV header (no genuine export could be had, see
    ../shared/feeds/real/README.md): domain and url IOCs are taken, the family is the
    category, --min-confidence drops the rows below it."""
    cli = policy.cli
    rows = [
        ("2026-12-01 10:00:00", "1001", "c2.cobalt.test", "domain", "botnet_cc",
         "win.cobalt_strike", "", "Cobalt Strike", "", "100", "", "", "0", "abuse_ch"),
        ("2026-12-01 10:01:00", "1002", "http://drop.mirai.test/x.sh", "url", "payload",
         "elf.mirai", "", "Mirai", "", "50", "", "", "0", "r1"),
        ("2026-12-01 10:02:00", "1003", "198.18.9.9:443", "ip:port", "botnet_cc",
         "win.qakbot", "", "QakBot", "", "100", "", "", "0", "r2"),
        ("2026-12-01 10:03:00", "1004", "ab" * 32, "sha256_hash", "payload",
         "win.qakbot", "", "QakBot", "", "100", "", "", "0", "r2"),
        ("2026-12-01 10:04:00", "1005", "anon.test", "domain", "botnet_cc",
         "unknown", "", "Unknown malware", "", "75", "", "", "1", "r3"),
    ]
    body = "".join(", ".join(f'"{c}"' for c in r) + "\n" for r in rows)
    path = tmp_path / "threatfox.csv"
    path.write_text(f"################\n# ThreatFox IOCs\n{THREATFOX_HEADER}\n{body}"
                    "# Number of entries: 5\n")
    r = cli.json("feed", "add", "threatfox", str(path), "--min-confidence", "75")
    assert (r["entries"], r["column"], r["skipped"]) == (2, "ioc_value", {
        "confidence below 75": 1, "IP address host": 1, "ioc_type sha256_hash": 1})
    assert listed(policy) == {"c2.cobalt.test": ("exact", "default", "win.cobalt_strike"),
                              "anon.test": ("exact", "default", "threatfox")}


def test_show_skipped_lists_the_lines_left_out_on_purpose(policy, tmp_path):
    cli = policy.cli
    path = write(tmp_path / "mixed.txt", "one.test", "192.0.2.1", "two.test", "2001:db8::1")
    cp = cli.run("feed", "add", "mixed", str(path), "--show-skipped")
    assert cp.stdout.splitlines()[-2:] == [
        f"{path}:2: skipped, IP address host: 192.0.2.1",
        f"{path}:4: skipped, IP address host: 2001:db8::1"]
    assert "skipped," not in cli.run("feed", "sync", "mixed", "--force").stdout
    r = cli.json("feed", "sync", "mixed", "--force", "--show-skipped")
    assert r[0]["skipped_lines"] == [
        {"line": 2, "reason": "IP address host", "value": "192.0.2.1"},
        {"line": 4, "reason": "IP address host", "value": "2001:db8::1"}]
    assert "skipped_lines" not in cli.json("feed", "sync", "mixed", "--force")[0]


def test_show_skipped_lists_the_first_thousand(policy, tmp_path):
    cli = policy.cli
    path = write(tmp_path / "ips.txt", "one.test", *(f"10.0.{i // 256}.{i % 256}"
                                                     for i in range(1500)))
    out = cli.run("block", "import", str(path), "--show-skipped").stdout.splitlines()
    assert out[-1] == ("… and 500 more skipped lines (the first 1,000 are listed; the counts "
                       "above cover all)")
    assert out[-1001] == f"{path}:2: skipped, IP address host: 10.0.0.0"
    assert out[-2] == f"{path}:1001: skipped, IP address host: 10.0.3.231"
    r = cli.json("block", "import", str(path), "--show-skipped")
    assert (r["skipped"], len(r["skipped_lines"])) == ({"IP address host": 1500}, 1000)


def test_skipped_bad_lines_are_capped_on_the_terminal_and_all_in_json(policy, tmp_path):
    cli = policy.cli
    path = write(tmp_path / "mixed.txt", "good.test", *(f"bad name {i}" for i in range(30)))
    cp = cli.run("block", "import", str(path), "--skip-invalid")
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 21 and lines[-1] == "… and 10 more bad lines (--json lists them all)"
    assert lines[0] == f"{path}:2: several fields, not one name: bad name 0"
    assert len(cli.json("block", "import", str(path), "--skip-invalid")["bad_lines"]) == 30
