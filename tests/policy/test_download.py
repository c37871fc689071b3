"""Feeds over HTTPS against a real HTTPS server of the test's own (tests/harness/https.py:
127.0.0.1, a port the kernel picks, a CA and certificates made with openssl), with nothing of
the network or the server mocked. First the download alone (no root): conditional GET,
bodies unpacked, every kind of bad download refused with nothing left behind. Then through
the real CLI: names reach the catalog and the kernel, a 304 costs no parse, and each failed
download exits 1 with one line and leaves the list, the catalog and the copy as they were.
"""

from __future__ import annotations

import gzip
import hashlib
import re

import pytest

from ccxdp.policy.download import (
    ATTEMPTS,
    DownloadError,
    UrlOrigin,
    check_url,
    fetch,
    retry_delay,
)
from tests.conftest import one_line_error
from tests.harness.https import certificates, serving

XDP_DROP = 1
LAST_MODIFIED = "Thu, 03 Dec 2026 10:00:00 GMT"
FEED = "evil.test\nbad.test\n"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def server(certs, tmp_path):
    with serving(tmp_path / "server", certs.cert, certs.key) as s:
        yield s


@pytest.fixture
def untrusted(certs, tmp_path):
    """A server whose certificate comes from a CA no client is given."""
    with serving(tmp_path / "untrusted", certs.untrusted_cert, certs.untrusted_key) as s:
        yield s


def left(folder) -> list[str]:
    """What a download left in its folder (made only once a body comes)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- the download alone ------------------------------------------------------------------------
@pytest.mark.parametrize("url, words", [
    ("http://feeds.test/x", "plain http is refused"),
    ("ftp://feeds.test/x", "not an https:// URL"),
    ("https://reader:s3cret@feeds.test/x", "https://***@feeds.test/x: a URL with a user name"),
    ("https:///x", "no host"),
    ("https://feeds.test/a b", "no spaces"),
    ("https://feeds.test:99999/", "not a URL"),
])
def test_a_url_is_refused_naming_why_and_never_showing_a_password(url, words):
    with pytest.raises(DownloadError) as e:
        check_url(url)
    assert words in str(e.value) and "s3cret" not in str(e.value)


def test_plain_http_only_when_allowed():
    assert check_url("http://feeds.test/x", insecure_http=True) == "http://feeds.test/x"


def test_the_daemon_backs_off_and_never_later_than_the_refresh():
    assert [retry_delay(n, 3600) for n in (1, 2, 3, 7, 20)] == [10, 20, 40, 640, 900]
    assert retry_delay(3, 30) == 30


def test_a_conditional_get_gets_a_304_and_keeps_the_copy(server, certs, tmp_path):
    url = server.route("/cc.txt", body=FEED, etag='"v1"', last_modified=LAST_MODIFIED)
    origin = UrlOrigin.make(url, certs.ca)
    first = fetch(origin, tmp_path / "in")
    assert first.staged.read_text() == FEED
    p = first.provenance
    assert {k: p[k] for k in ("url", "etag", "last_modified", "bytes", "sha256", "compression",
                              "member")} == {
        "url": url, "etag": '"v1"', "last_modified": LAST_MODIFIED, "bytes": len(FEED),
        "sha256": sha(FEED), "compression": None, "member": None}
    assert TIME.match(p["fetched_at"]) and p["checked_at"] == p["fetched_at"]
    again = fetch(origin, tmp_path / "in", first.provenance)
    assert again.unchanged and again.staged is None
    assert {k: v for k, v in again.provenance.items() if k != "checked_at"} == {
        k: v for k, v in p.items() if k != "checked_at"}
    assert [(r["status"], r["if_none_match"], r["if_modified_since"], r["accept_encoding"])
            for r in server.requests()] == [(200, None, None, "gzip"),
                                            (304, '"v1"', LAST_MODIFIED, "gzip")]
    # A server with Last-Modified only: If-Modified-Since alone.
    url = server.route("/lm.txt", body=FEED, last_modified=LAST_MODIFIED)
    got = fetch(UrlOrigin.make(url, certs.ca), tmp_path / "in")
    assert got.provenance["etag"] is None
    assert fetch(UrlOrigin.make(url, certs.ca), tmp_path / "in", got.provenance).unchanged
    assert [(r["status"], r["if_none_match"], r["if_modified_since"])
            for r in server.requests("/lm.txt")] == [(200, None, None),
                                                     (304, None, LAST_MODIFIED)]


@pytest.mark.parametrize("how, compression, member", [
    ({"gzip_body": True}, "gzip", None),  # a .gz file, served as it is
    ({"content_encoding": "gzip"}, "gzip", None),  # gzip on the wire
    ({"zip": "domains.txt"}, "zip", "domains.txt"),
    ({"gzip_body": True, "content_encoding": "gzip"}, "gzip", None),  # both
])
def test_gzip_and_zip_bodies_are_unpacked(server, certs, tmp_path, how, compression, member):
    url = server.route("/feed.gz", body=FEED * 3, **how)
    got = fetch(UrlOrigin.make(url, certs.ca), tmp_path / "in")
    assert got.staged.read_text() == FEED * 3
    assert (got.provenance["compression"], got.provenance["member"],
            got.provenance["bytes"]) == (compression, member, len(FEED) * 3)


BOMB = gzip.compress(b"a" * 50_000)  # 50 kB from a body of about 100 bytes
# (route, the words of the error, worth a retry)
BAD = [
    ("truncated", {"body": FEED * 10, "send": 25},
     f"the body ended after 25 of {len(FEED) * 10} bytes (Content-Length)", True),
    ("http-500", {"status": 500}, "HTTP 500 Internal Server Error", True),
    ("http-404", {"status": 404}, "HTTP 404 Not Found", False),
    ("html-page", {"body": "<!DOCTYPE html>\n<title>Maintenance</title>\n"},
     "an HTML page, not a feed", False),
    ("html-type", {"body": "evil.test\n", "content_type": "text/html; charset=utf-8"},
     "an HTML page (Content-Type text/html; charset=utf-8), not a feed", False),
    ("truncated-gzip", {"body": FEED * 10, "gzip_body": True, "cut": 30},
     "truncated gzip", False),
    ("over-the-cap", {"body": "x.test\n" * 200}, "1,400 bytes (Content-Length), over the cap "
     "of 1,000 bytes", False),
    ("zip-of-two", {"body": FEED, "zip": ["a.txt", "b.txt"]},
     "a zip of 2 files (a.txt, b.txt); a feed is a zip of one", False),
    ("redirect-to-http", {"status": 302, "location": "http://127.0.0.1:1/cc.txt"},
     "redirected to http://127.0.0.1:1/cc.txt: plain http is refused", False),
    ("escaped", {"status": 503, "reason": "\x1b[2J gone"}, "HTTP 503 \\x1b[2J gone", True),
]


@pytest.mark.parametrize("how, words, retry", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_download_is_refused_and_leaves_nothing(server, certs, tmp_path, how, words,
                                                      retry):
    url = server.route("/cc.txt", **how)
    slept = []
    with pytest.raises(DownloadError) as e:
        fetch(UrlOrigin.make(url, certs.ca, max_bytes=1000), tmp_path / "in",
              sleep=slept.append)
    assert words in str(e.value) and "\x1b" not in str(e.value)
    assert e.value.retry == retry
    assert len(server.requests()) == (ATTEMPTS if retry else 1)
    assert slept == ([1.0, 2.0] if retry else [])
    assert left(tmp_path / "in") == []


def test_a_gzip_that_unpacks_over_the_cap_is_stopped_while_streaming(server, certs, tmp_path):
    url = server.route("/bomb.gz", body="a" * 50_000, gzip_body=True)
    with pytest.raises(DownloadError, match="the gzip unpacks to over the cap of 1,000 bytes"):
        fetch(UrlOrigin.make(url, certs.ca, max_bytes=1000), tmp_path / "in")
    assert len(BOMB) < 1000 and left(tmp_path / "in") == []


def test_a_server_the_client_does_not_trust_is_refused(untrusted, certs, tmp_path):
    url = untrusted.route("/cc.txt", body=FEED)
    for origin in (UrlOrigin.make(url), UrlOrigin.make(url, certs.ca)):  # system CAs; ours
        with pytest.raises(DownloadError, match="the server's certificate is not trusted"):
            fetch(origin, tmp_path / "in")
    assert untrusted.requests() == []  # refused in the handshake: no request was sent


# -- through the CLI -------------------------------------------------------------------------
@pytest.fixture
def policy(ccxdp, bare_netns):
    from tests.cli.test_policy import Policy

    p = Policy(ccxdp, bare_netns)
    p.attach()
    return p


def block_list(cli) -> dict[str, tuple]:
    return {e["name"]: (e["match"], e["category"]) for e in cli.json("block", "list")}


def copies(cli) -> dict[str, str]:
    """The files in the state folder's feeds/, by name: the copies, and nothing else."""
    folder = cli.state_dir / "feeds"
    return {p.name: p.read_text() for p in folder.iterdir()} if folder.exists() else {}


def kernel_names(policy) -> set[str]:
    from ccxdp.datapath.hashing import name_hash
    from tests.conftest import kernel_names as live

    key = policy.dp.hash_key()
    names = {name_hash(e["name"], key): e["name"] for e in policy.cli.json("block", "list")}
    return {names[h] for h in live(policy.dp)}


@pytest.mark.root
def test_a_url_feed_reaches_the_kernel_and_a_304_costs_no_parse(policy, server, certs,
                                                                 monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the human tables, whole
    cli = policy.cli
    etag = '"[bold]v1"'  # markup in a header: shown as it is, never interpreted
    url = server.route("/cc.txt", body=FEED, etag=etag, last_modified=LAST_MODIFIED)
    added = cli.json("feed", "add", "cc", "--url", url, "--ca", str(certs.ca),
                     "--category", "emotet")
    copy = f"cc.{sha(FEED)[:16]}.download"
    assert (added["entries"], added["added"], added["path"]) == (
        2, {"block": 2, "allow": 0}, str(cli.state_dir / "feeds" / copy))
    assert added["provenance"]["etag"] == etag
    assert block_list(cli) == {"evil.test": ("exact", "emotet"), "bad.test": ("exact", "emotet")}
    assert kernel_names(policy) == {"evil.test", "bad.test"}
    assert copies(cli) == {copy: FEED}
    assert policy.judge("evil.test").retval == XDP_DROP  # the default action

    listed = cli.json("feed", "list")
    assert [(f["name"], f["block"], f["origin"]) for f in listed] == [
        ("cc", 2, {"kind": "url", "url": url, "ca": str(certs.ca), "max_bytes": 256 << 20,
                   "insecure_http": False})]
    p = listed[0]["provenance"]
    assert (p["url"], p["etag"], p["last_modified"], p["bytes"], p["sha256"]) == (
        url, etag, LAST_MODIFIED, len(FEED), sha(FEED))
    human = cli.run("feed", "list").stdout
    for text in (url, f"\ncc\t{etag}\t{LAST_MODIFIED}\t{p['fetched_at']} ({len(FEED)} "
                 f"bytes)\t{p['checked_at']}\n"):  # piped: TSV
        assert text in human, human

    # The second fetch: 304, nothing parsed, the list as it was.
    synced = cli.json("feed", "sync", "cc")[0]
    assert (synced["unchanged"], synced["lines_parsed"], synced["added"]) == (
        True, None, {"block": 0, "allow": 0})
    assert server.requests()[-1] == {"path": "/cc.txt", "status": 304, "if_none_match": etag,
                                     "if_modified_since": LAST_MODIFIED,
                                     "accept_encoding": "gzip"}
    assert synced["provenance"]["fetched_at"] == p["fetched_at"]
    assert copies(cli) == {copy: FEED}

    # A new version: applied by difference, the new copy replaces the old one.
    new = "bad.test\nnew.test\n"
    server.route("/cc.txt", body=new, etag='"v2"')
    synced = cli.json("feed", "sync", "cc")[0]
    assert (synced["unchanged"], synced["added"], synced["removed"]) == (
        False, {"block": 1, "allow": 0}, {"block": 1, "allow": 0})
    assert (synced["provenance"]["etag"], synced["provenance"]["last_modified"]) == (
        '"v2"', None)
    assert kernel_names(policy) == {"bad.test", "new.test"}
    assert copies(cli) == {f"cc.{sha(new)[:16]}.download": new}
    # --force: fetched without a condition, and parsed whatever comes.
    forced = cli.json("feed", "sync", "cc", "--force")[0]
    assert (forced["unchanged"], forced["entries"]) == (False, 2)
    assert server.requests()[-1]["if_none_match"] is None

    cli.run("feed", "remove", "cc")
    assert block_list(cli) == {} and copies(cli) == {}


@pytest.mark.root
def test_gzip_and_zip_feeds_are_read_transparently(policy, server, certs, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    cli = policy.cli
    gz = server.route("/hosts.gz", body="0.0.0.0 gz.test\n", gzip_body=True)
    zipped = server.route("/export.zip", body="zip.test\n", zip="domains.txt")
    cli.run("feed", "add", "gz", "--url", gz, "--ca", str(certs.ca))
    r = cli.json("feed", "add", "zipped", "--url", zipped, "--ca", str(certs.ca))
    assert (r["format"], r["provenance"]["compression"], r["provenance"]["member"]) == (
        "plain", "zip", "domains.txt")
    assert block_list(cli) == {"gz.test": ("exact", "gz"), "zip.test": ("exact", "zipped")}
    assert kernel_names(policy) == {"gz.test", "zip.test"}
    human = cli.run("feed", "list").stdout
    assert "(16 bytes, gzip)" in human and "(9 bytes, zip, member domains.txt)" in human


@pytest.mark.root
@pytest.mark.parametrize("how, words, retry", [b[1:] for b in BAD if b[0] != "http-404"],
                         ids=[b[0] for b in BAD if b[0] != "http-404"])
def test_a_failed_download_exits_1_in_one_line_and_changes_nothing(policy, server, certs,
                                                                   how, words, retry):
    cli = policy.cli
    url = server.route("/cc.txt", body=FEED, etag='"v1"')
    cli.run("feed", "add", "cc", "--url", url, "--ca", str(certs.ca), "--max-bytes", "1000")
    before = (block_list(cli), kernel_names(policy), cli.json("feed", "list"), copies(cli))
    server.route("/cc.txt", **how)
    cp = cli.run("feed", "sync", "cc", check=False)
    line = one_line_error(cp, 1, "feed 'cc': ", words, "nothing was changed")
    assert ("(after 3 attempts)" in line) == retry and "\x1b" not in cp.stderr
    assert (block_list(cli), kernel_names(policy), cli.json("feed", "list"),
            copies(cli)) == before
    assert policy.judge("evil.test").retval == XDP_DROP


@pytest.mark.root
def test_a_feed_from_an_untrusted_server_is_not_registered(policy, untrusted, certs):
    cli = policy.cli
    url = untrusted.route("/cc.txt", body=FEED)
    for ca in ([], ["--ca", str(certs.ca)]):
        cp = cli.run("feed", "add", "cc", "--url", url, *ca, check=False)
        one_line_error(cp, 1, "feed 'cc': ", "the server's certificate is not trusted",
                       "nothing was changed")
    assert cli.json("feed", "list") == [] and copies(cli) == {}


@pytest.mark.parametrize("args, status, words", [
    (["--url", "http://127.0.0.1:1/cc.txt"], 1, "plain http is refused"),
    (["--url", "https://reader:s3cret@127.0.0.1:1/cc.txt"], 1, "user name or password"),
    (["/tmp/cc.txt", "--url", "https://127.0.0.1:1/cc.txt"], 2, "PATH or --url URL"),
    ([], 2, "PATH or --url URL"),
    (["/tmp/cc.txt", "--max-bytes", "10"], 2, "go with --url"),
    (["--url", "https://127.0.0.1:1/x", "--ca", "/nonexistent/ca.pem"], 1,
     "/nonexistent/ca.pem: no such file"),
    (["--url", "https://127.0.0.1:1/x", "--max-bytes", "0"], 2, "--max-bytes"),
])
def test_feed_add_refuses_a_bad_url_in_one_line(ccxdp, args, status, words):
    cp = ccxdp.run("feed", "add", "cc", *args, check=False)
    one_line_error(cp, status, words)
    assert "s3cret" not in cp.stderr
