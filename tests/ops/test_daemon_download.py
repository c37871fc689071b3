"""`ccxdp run` with a URL feed: a real HTTPS server (tests/harness/https.py) in the lab's
resolver namespace, where the daemon runs, serves the feed; the daemon fetches it on
schedule, a 304 costs nothing, a failing server is retried with backoff (one log line per
attempt) and the list stays as it was, proved with real queries from the client namespace.
"""

from __future__ import annotations

import pytest

from tests.harness.https import certificates, serving
from tests.ops.test_daemon import config_text, daemon_factory, rcode

pytestmark = [pytest.mark.root, pytest.mark.netns]


@pytest.fixture
def daemons(ccxdp, lab, tmp_path):
    with daemon_factory(ccxdp, lab, tmp_path) as make:
        yield make


def test_a_url_feed_is_fetched_on_schedule_and_a_failed_fetch_keeps_the_list(ccxdp, lab,
                                                                            daemons, tmp_path):
    lab.native_tx_peer()
    certs = certificates(tmp_path / "certs")
    enter = ["ip", "netns", "exec", lab.res_ns] if lab.res_ns else []
    with serving(tmp_path / "server", certs.cert, certs.key, enter) as server:
        url = server.route("/cc.txt", body="evil.test\n", etag='"v1"')
        cfg = tmp_path / "ccxdp.toml"
        cfg.write_text(config_text(lab, [{"name": "cc", "url": url, "ca": str(certs.ca),
                                          "category": "emotet", "refresh": 2}]))
        d = daemons(cfg).start()
        synced = [e for e in d.events() if e["event"] == "feed_sync"]
        assert [(e["feed"], e["why"], e["result"], e["url"], e["names"]) for e in synced] == [
            ("cc", "added", "ok", url, "1")]
        assert rcode(lab, "evil.test") == "NXDOMAIN"
        listed = [(e["name"], e["category"]) for e in ccxdp.json("block", "list")]
        assert listed == [("evil.test", "emotet")]

        # On schedule: a conditional GET, answered 304, nothing parsed.
        mark = len(d.events())
        d.wait_for("feed_sync", since=mark, timeout=10, feed="cc", why="interval",
                   result="unchanged")
        assert [(r["status"], r["if_none_match"]) for r in server.requests()[:2]] == [
            (200, None), (304, '"v1"')]

        # The server fails: one error line per attempt, retried with backoff, list kept.
        server.route("/cc.txt", status=503)
        mark = len(d.events())
        first = d.wait_for("feed_sync", since=mark, timeout=10, feed="cc", result="error")
        again = d.wait_for("feed_sync", since=mark, timeout=10, feed="cc", why="retry",
                           result="error")
        for e in (first, again):
            assert (e["level"], e["url"], e["retry_in"]) == ("error", url, "2.000")
            assert e["error"] == (f"feed 'cc': {url}: HTTP 503 Service Unavailable; nothing "
                                  "was changed")
        assert rcode(lab, "evil.test") == "NXDOMAIN"
        assert [(e["name"], e["category"]) for e in ccxdp.json("block", "list")] == listed
        # A body cut short is no better.
        server.route("/cc.txt", body="bad.test\n" * 50, etag='"v2"', send=100)
        mark = len(d.events())
        cut = d.wait_for("feed_sync", since=mark, timeout=10, feed="cc", result="error",
                         why="retry")
        assert "the body ended after 100 of 450 bytes (Content-Length)" in cut["error"]
        assert [(e["name"], e["category"]) for e in ccxdp.json("block", "list")] == listed

        # The server recovers with a new list: applied at the next retry.
        server.route("/cc.txt", body="bad.test\n", etag='"v2"')
        mark = len(d.events())
        ok = d.wait_for("feed_sync", since=mark, timeout=10, feed="cc", result="ok")
        assert (ok["why"], ok["added"], ok["removed"]) == ("retry", "1", "1")
        assert rcode(lab, "bad.test") == "NXDOMAIN"
        assert [str(r) for r in lab.query("evil.test").answer[0]] == ["198.18.2.1"]
        provenance = ccxdp.json("feed", "list")[0]["provenance"]
        assert (provenance["url"], provenance["etag"]) == (url, '"v2"')
        assert d.stop() == 0
    assert "Traceback" not in d.log_path.read_text()
