"""The daemon's config file: the example parses to what it says, and each kind of mistake is
refused by the real `ccxdp run` with one line naming the file and the key, exit status 1, and
nothing loaded or attached (no pin folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccxdp.ops.daemon_config import ConfigError, Feed, Interface, SessionsConfig, load_config
from ccxdp.policy.download import UrlOrigin
from ccxdp.policy.line_exempt import Radacct
from ccxdp.policy.transfer import Primary, ZoneOrigin
from tests.conftest import one_line_error
from tests.harness.https import certificates

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "ccxdp.toml"


def test_the_example_config_parses_to_what_it_says():
    c = load_config(EXAMPLE)
    assert c.interfaces == (Interface("eth0", None, "auto"),)
    assert c.settings == {"default_action": "nxdomain", "sinkhole_v4": "198.18.0.53",
                          "sinkhole_v6": "fd00::53", "answer_ttl": 300, "negative_ttl": 300,
                          "edns_udp_size": 1232, "source_prefix_v6": 64}
    assert c.plan is None  # commented out: the plan is left as 'ccxdp plan' made it
    assert c.dns_ports == (53,)
    assert (c.max_names, c.max_sources) == (1 << 20, 1 << 20)
    assert c.feeds == (Feed("emotet", (REPO / "examples/feeds/emotet.txt").resolve(), "auto",
                            None, "nxdomain", "emotet", False, 3600.0),)
    assert (c.collect_interval, c.store) == (60.0, None)
    assert (c.retention_days, c.expire_unattributed) == (90.0, False)
    assert c.metrics_listen == ("127.0.0.1", 9108)
    assert (c.on_stop, c.log_format) == ("keep", "logfmt")
    assert c.sessions == SessionsConfig(
        (Path("/var/lib/ccxdp/radius-sessions.csv"),), (Path("/var/lib/dhcp/dhcpd.leases"),),
        "circuit-id", Radacct("postgresql://ccxdp@radius-db.example/radius", "username",
                              "radacct"), 5.0)


def test_defaults_of_a_minimal_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[interfaces]]\nname = "eth0"\nmode = "generic"\n'
                    '[metrics]\nlisten = "[fd00::10]:9100"\n')
    c = load_config(path)
    assert c.interfaces == (Interface("eth0", None, "generic"),)
    assert (c.settings, c.dns_ports, c.feeds) == ({}, None, ())
    assert (c.collect_interval, c.on_stop) == (60.0, "keep")
    assert (c.retention_days, c.expire_unattributed) == (0.0, False)
    assert c.metrics_listen == ("fd00::10", 9100)
    assert c.sessions is None


def test_the_plan_is_read_normalized(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[filter]\nplan = ["198.18.0.0/15", "FD00:CC::/32"]\n' + IFACE)
    assert load_config(path).plan == ("198.18.0.0/15", "fd00:cc::/32")
    path.write_text('[filter]\nplan = []\n' + IFACE)
    assert load_config(path).plan == ()


def test_sessions_paths_are_relative_to_the_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[sessions]\nradius_csv = ["radius/s.csv"]\n')
    c = load_config(path)
    assert c.sessions == SessionsConfig((tmp_path / "radius/s.csv",), (), "circuit-id", None,
                                        5.0)


IFACE = '[[interfaces]]\nname = "lo"\n'
# (test id, config text, the key the message must name, a word of the reason)
BAD = [
    ("syntax", '[filter\nmode = "auto"\n', "not valid TOML", "line 1"),
    ("unknown-top-key", 'on_stpo = "keep"\n' + IFACE, "on_stpo", "unknown key"),
    ("unknown-table-key", '[filter]\ndefualt_action = "drop"\n' + IFACE,
     "filter.defualt_action", "unknown key"),
    ("wrong-type", '[filter]\ndns_ports = "53"\n' + IFACE, "filter.dns_ports",
     "array of port numbers"),
    ("port-range", '[filter]\ndns_ports = [53, 70000]\n' + IFACE, "filter.dns_ports",
     "70000"),
    ("bad-action", '[filter]\ndefault_action = "block"\n' + IFACE,
     "filter.default_action", "not an action"),
    ("bad-address", '[filter]\nsinkhole_v4 = "fd00::1"\n' + IFACE, "filter.sinkhole_v4",
     "not an IPv4 address"),
    ("ttl-range", '[filter]\nanswer_ttl = -1\n' + IFACE, "filter.answer_ttl", "outside"),
    ("bad-fragments", '[filter]\nfragments = "maybe"\n' + IFACE, "filter.fragments",
     "not one of drop, pass"),
    ("mapped-sinkhole-v6", '[filter]\nsinkhole_v6 = "::ffff:198.18.0.53"\n' + IFACE,
     "filter.sinkhole_v6", "is an IPv4-mapped address: give 198.18.0.53 as sinkhole_v4"),
    ("prefix-v6-range", '[filter]\nsource_prefix_v6 = 16\n' + IFACE,
     "filter.source_prefix_v6", "outside 32..128"),
    ("plan-not-array", '[filter]\nplan = "198.18.0.0/15"\n' + IFACE, "filter.plan",
     "not an array of prefixes"),
    ("plan-not-prefix", '[filter]\nplan = ["198.18.0.1/15"]\n' + IFACE, "filter.plan",
     "host bits set"),
    ("plan-not-string", '[filter]\nplan = [24]\n' + IFACE, "filter.plan", "not a prefix"),
    ("plan-everything", '[filter]\nplan = ["0.0.0.0/0"]\n' + IFACE, "filter.plan",
     "that is no plan"),
    ("plan-twice", '[filter]\nplan = ["198.18.0.0/15", "198.18.0.0/15"]\n' + IFACE,
     "filter.plan", "given twice"),
    ("bad-mode", '[filter]\nmode = "fast"\n' + IFACE, "filter.mode", "auto, native, generic"),
    ("interface-without-name", '[[interfaces]]\nmode = "auto"\n', "interfaces[0].name",
     "missing"),
    ("interface-twice", IFACE + IFACE, "interfaces[1].name", "listed twice"),
    ("interfaces-not-tables", 'interfaces = ["eth0"]\n', "interfaces[0]", "not a table"),
    ("no-such-interface", '[[interfaces]]\nname = "nosuch0"\n', "interfaces[0].name",
     "no interface nosuch0"),
    ("no-such-netns", '[[interfaces]]\nname = "lo"\nnetns = "cxnosuchns"\n',
     "interfaces[0].netns", "no network namespace"),
    ("feed-file-missing", IFACE + '[[feeds]]\nname = "cc"\npath = "/nonexistent/cc.txt"\n',
     "feeds[0].path", "no such file"),
    ("feed-bad-name", IFACE + '[[feeds]]\nname = "bad name"\npath = "FEED"\n',
     "feeds[0].name", "letters, digits"),
    ("feed-no-path-or-url", IFACE + '[[feeds]]\nname = "cc"\n', "feeds[0].path",
     "missing (the feed's file; or url"),
    ("feed-path-and-url", IFACE + '[[feeds]]\nname = "cc"\npath = "FEED"\n'
     'url = "https://127.0.0.1/cc.txt"\n', "feeds[0].url", "give path or url, not both"),
    ("feed-url-http", IFACE + '[[feeds]]\nname = "cc"\nurl = "http://127.0.0.1/cc.txt"\n',
     "feeds[0].url", "plain http is refused"),
    ("feed-url-password", IFACE + '[[feeds]]\nname = "cc"\n'
     'url = "https://u:s3cret@127.0.0.1/cc.txt"\n', "feeds[0].url",
     "https://***@127.0.0.1/cc.txt: a URL with a user name or password is refused"),
    ("feed-url-ca-missing", IFACE + '[[feeds]]\nname = "cc"\nurl = "https://127.0.0.1/x"\n'
     'ca = "/nonexistent/ca.pem"\n', "feeds[0].ca", "/nonexistent/ca.pem: no such file"),
    ("feed-url-ca-not-pem", IFACE + '[[feeds]]\nname = "cc"\nurl = "https://127.0.0.1/x"\n'
     'ca = "FEED"\n', "feeds[0].ca", "not a file of PEM CA certificates"),
    ("feed-url-max-bytes", IFACE + '[[feeds]]\nname = "cc"\nurl = "https://127.0.0.1/x"\n'
     'max_bytes = 0\n', "feeds[0].max_bytes", "1 or more"),
    ("feed-path-with-ca", IFACE + '[[feeds]]\nname = "cc"\npath = "FEED"\nca = "FEED"\n',
     "feeds[0].ca", "goes with url, not path"),
    # The catalog's rule for category names (1-63 characters): a 64-character one used to
    # pass --check and then fail at every sync.
    ("feed-category-too-long", IFACE + '[[feeds]]\nname = "cc"\npath = "FEED"\ncategory = "'
     + "c" * 64 + '"\n', "feeds[0].category", "1-63 letters"),
    ("feed-category-bad-start", IFACE + '[[feeds]]\nname = "cc"\npath = "FEED"\n'
     'category = "-emotet"\n', "feeds[0].category", "starting with a letter or digit"),
    ("feed-name-too-long", IFACE + '[[feeds]]\nname = "' + "f" * 64 + '"\npath = "FEED"\n',
     "feeds[0].name", "1-63 letters"),
    ("feed-twice", IFACE + '[[feeds]]\nname = "cc"\npath = "FEED"\n'
     '[[feeds]]\nname = "cc"\npath = "FEED"\n', "feeds[1].name", "listed twice"),
    ("feed-bad-refresh", IFACE + '[[feeds]]\nname = "cc"\npath = "FEED"\nrefresh = 0\n',
     "feeds[0].refresh", "more than 0"),
    ("feed-bad-max-shrink", IFACE + '[[feeds]]\nname = "cc"\npath = "FEED"\nmax_shrink = 150\n',
     "feeds[0].max_shrink", "150 is not a percentage from 0 to 100"),
    ("feed-max-shrink-share", IFACE + '[[feeds]]\nname = "cc"\npath = "FEED"\nmax_shrink = 0.5\n',
     "feeds[0].max_shrink", "is not a percentage (0 to 100)"),
    ("feed-bad-format", IFACE + '[[feeds]]\nname = "cc"\npath = "FEED"\nformat = "yaml"\n',
     "feeds[0].format", "not one of"),
    ("collect-interval-type", IFACE + '[collect]\ninterval = "1m"\n', "collect.interval",
     "number of seconds"),
    ("retention-negative", IFACE + '[collect]\nretention_days = -1\n', "collect.retention_days",
     "0 (keep) or more"),
    ("retention-inf", IFACE + '[collect]\nretention_days = inf\n', "collect.retention_days",
     "up to 36500"),
    ("retention-nan", IFACE + '[collect]\nretention_days = nan\n', "collect.retention_days",
     "up to 36500"),
    ("collect-interval-nan", IFACE + '[collect]\ninterval = nan\n', "collect.interval",
     "not a finite number"),
    ("retention-type", IFACE + '[collect]\nretention_days = "90d"\n', "collect.retention_days",
     "number of days"),
    ("expire-unattributed-type", IFACE + '[collect]\nexpire_unattributed = "yes"\n',
     "collect.expire_unattributed", "true or false"),
    ("on-stop", 'on_stop = "forget"\n' + IFACE, "on_stop", "keep, detach"),
    ("metrics-listen", IFACE + '[metrics]\nlisten = "localhost"\n', "metrics.listen",
     "ADDRESS:PORT"),
    ("metrics-host", IFACE + '[metrics]\nlisten = "localhost:9108"\n', "metrics.listen",
     "not an IP address"),
    ("sessions-empty", IFACE + '[sessions]\ninterval = 2\n', "sessions",
     "at least one sessions source"),
    ("sessions-csv-type", IFACE + '[sessions]\nradius_csv = "s.csv"\n',
     "sessions.radius_csv", "array of file paths"),
    ("sessions-twice", IFACE + '[sessions]\nleases = ["a", "a"]\n', "sessions.leases",
     "given twice"),
    ("sessions-line-id-from", IFACE + '[sessions]\nleases = ["a"]\nline_id_from = "mac"\n',
     "sessions.line_id_from", "circuit-id"),
    ("sessions-interval", IFACE + '[sessions]\nleases = ["a"]\ninterval = 0\n',
     "sessions.interval", "more than 0"),
    ("sessions-unknown", IFACE + '[sessions]\nleases = ["a"]\nfiles = ["b"]\n',
     "sessions.files", "unknown key"),
    ("metrics-address-not-here", IFACE + '[metrics]\nlisten = "192.0.2.123:9108"\n',
     "metrics.listen", "this host has no address 192.0.2.123 (Cannot assign requested"),
    ("notify-address-not-here", IFACE + '[feeds_notify]\nlisten = "[fd00:99::53]:5300"\n',
     "feeds_notify.listen", "this host has no address fd00:99::53"),
    ("radacct-no-uri", IFACE + '[sessions.radacct]\nline_id = "username"\n',
     "sessions.radacct.uri", "missing"),
    ("radacct-password", IFACE + '[sessions.radacct]\nuri = "postgresql://u:pw@db/r"\n',
     "sessions.radacct.uri", "holds a password"),
    ("radacct-column", IFACE + '[sessions.radacct]\nuri = "postgresql://u@db/r"\n'
     'line_id = "user-name"\n', "sessions.radacct.line_id", "plain SQL name"),
    ("radacct-table", IFACE + '[sessions.radacct]\nuri = "postgresql://u@db/r"\n'
     'table = "a.b"\n', "sessions.radacct.table", "plain SQL name"),
]


@pytest.mark.root
@pytest.mark.parametrize("text,key,reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_config_is_refused_naming_the_key_and_nothing_is_attached(ccxdp, tmp_path,
                                                                          text, key, reason):
    feed = tmp_path / "cc.txt"
    feed.write_text("evil.test\n")
    path = tmp_path / "bad.toml"
    path.write_text(text.replace("FEED", str(feed)))
    cp = ccxdp.run("run", "--config", str(path), check=False)
    line = one_line_error(cp, 1, str(path), reason)
    if key != "not valid TOML":
        assert f"{path}: {key}: " in line, line
    assert not ccxdp.pin_dir.exists()
    assert not (ccxdp.state_dir / "attachments.json").exists()
    # --check says the same.
    cp = ccxdp.run("run", "--config", str(path), "--check", check=False)
    assert one_line_error(cp, 1, str(path), reason) == line


@pytest.mark.root
def test_a_missing_config_file_is_refused(ccxdp, tmp_path):
    path = tmp_path / "absent.toml"
    cp = ccxdp.run("run", "--config", str(path), check=False)
    assert one_line_error(cp, 1, str(path), "no such file")
    assert not ccxdp.pin_dir.exists()


def test_a_config_error_names_file_and_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[collect]\ninterval = -5\n")
    with pytest.raises(ConfigError, match=r"c\.toml: collect\.interval: -5 must be 0 or more"):
        load_config(path)


def test_log_lines_are_logfmt_or_json():
    import io
    import json
    import shlex

    from ccxdp.ops.daemon import Log

    out = io.StringIO()
    log = Log("logfmt", out)
    log("feed_sync", feed="cc", error='bad "line" here', seconds=0.12345, skipped=None)
    line = out.getvalue().splitlines()[0]
    fields = dict(w.split("=", 1) for w in shlex.split(line))
    assert list(fields)[1:] == ["level", "event", "feed", "error", "seconds"]
    assert (fields["event"], fields["error"], fields["seconds"]) == (
        "feed_sync", 'bad "line" here', "0.123")
    out = io.StringIO()
    Log("json", out)("collect", level="warning", hits=3)
    record = json.loads(out.getvalue())
    assert (record["level"], record["event"], record["hits"]) == ("warning", "collect", 3)


def test_a_url_feed_and_its_options(tmp_path):
    ca = certificates(tmp_path).ca  # tmp_path/ca.pem
    path = tmp_path / "c.toml"
    path.write_text('[[feeds]]\nname = "cc"\nurl = "https://feeds.test/cc.txt.gz"\n'
                    'ca = "ca.pem"\nmax_bytes = 1048576\nrefresh = 600\n'
                    '[[feeds]]\nname = "plain"\nurl = "http://feeds.test/p.txt"\n'
                    'insecure_http = true\n')
    assert load_config(path).feeds == (
        Feed("cc", None, refresh=600.0,
             url=UrlOrigin("https://feeds.test/cc.txt.gz", str(ca), 1048576, False)),
        Feed("plain", None, url=UrlOrigin("http://feeds.test/p.txt", None, 256 << 20, True)))


@pytest.mark.root
def test_check_passes_a_good_config_and_attaches_nothing(ccxdp, tmp_path):
    feed = tmp_path / "cc.txt"
    feed.write_text("evil.test\n")
    path = tmp_path / "good.toml"
    path.write_text(IFACE + f'[[feeds]]\nname = "cc"\npath = "{feed}"\n')
    cp = ccxdp.run("run", "--config", str(path), "--check")
    assert cp.stdout == f"{path}: ok (1 interfaces, 1 feeds)\n"
    assert not ccxdp.pin_dir.exists()
    assert not (ccxdp.state_dir / "catalog.db").exists()


@pytest.mark.root
def test_a_category_check_passes_is_one_the_catalog_takes(ccxdp, tmp_path):
    """The longest category --check passes syncs: the daemon's config and the catalog apply
    one rule."""
    feed = tmp_path / "cc.txt"
    feed.write_text("evil.test\n")
    category = "c" * 63
    path = tmp_path / "good.toml"
    path.write_text(IFACE + f'[[feeds]]\nname = "cc"\npath = "{feed}"\n'
                    f'category = "{category.upper()}"\n')
    assert load_config(path).feeds[0].category == category
    ccxdp.run("run", "--config", str(path), "--check")
    ccxdp.run("feed", "add", "cc", str(feed), "--category", category.upper())
    assert ccxdp.json("feed", "list")[0]["category"] == category


def test_a_zone_feed_and_the_notify_listener(tmp_path):
    key = tmp_path / "k.key"
    key.write_text('key "k" { algorithm hmac-sha256; secret "'
                   'a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="; };\n')
    key.chmod(0o600)
    path = tmp_path / "c.toml"
    path.write_text(IFACE + '[[feeds]]\nname = "cc"\nprimary = "198.18.0.53:5353"\n'
                    'zone = "RPZ.Test."\ntsig = "k.key"\naction = "drop"\n'
                    '[feeds_notify]\nlisten = "198.18.0.10:5300"\n')
    c = load_config(path)
    assert c.feeds == (Feed("cc", None, "auto", None, "drop", None, False, 3600.0,
                            zone=ZoneOrigin(Primary("198.18.0.53", 5353), "rpz.test", key)),)
    assert c.notify_listen == ("198.18.0.10", 5300)


@pytest.mark.parametrize("feed, key, words", [
    ('path = "/etc/hosts"\nprimary = "198.18.0.53"\nzone = "z"', "feeds[0].primary",
     "not both"),
    ('primary = "198.18.0.53"', "feeds[0].zone", "missing"),
    ('zone = "z"', "feeds[0].primary", "missing"),
    ('primary = "ns.example"\nzone = "z"', "feeds[0].primary", "not ADDRESS[:PORT]"),
    ('primary = "198.18.0.53"\nzone = "z"\nformat = "plain"', "feeds[0].format",
     "not for a zone feed"),
    ('primary = "198.18.0.53"\nzone = "z"\nrefresh = 60', "feeds[0].refresh",
     "not for a zone feed"),
    ('primary = "198.18.0.53"\nzone = "z"\ntsig = "nokey"', "feeds[0].tsig",
     "No such file"),
])
def test_zone_feed_mistakes_name_the_key(tmp_path, feed, key, words):
    path = tmp_path / "c.toml"
    path.write_text(IFACE + f'[[feeds]]\nname = "cc"\n{feed}\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}: {key}: " in str(e.value) and words in str(e.value)


def test_a_bad_notify_listen_names_its_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(IFACE + '[feeds_notify]\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}: feeds_notify.listen: 'nowhere' is not ADDRESS:PORT" in str(e.value)
