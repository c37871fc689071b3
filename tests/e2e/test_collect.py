"""End to end: real dig and dnspython queries from two client addresses (and IPv6) through
ccxdp attached to the resolver's veth, then `ccxdp collect`: the store holds exactly the
blocked and monitored queries, per address and category, and the kernel holds nothing more."""

from __future__ import annotations

import ipaddress
from collections import Counter
from datetime import UTC, datetime

import pytest

from ccxdp.hits.store import Store, store_path, to_us
from tests.harness.https import certificates, serving

pytestmark = [pytest.mark.root, pytest.mark.netns]

BLOCKED = 0.5  # seconds to wait for an answer that never comes


def stored(ccxdp) -> tuple[dict[tuple[str, str], int], list]:
    """{(address, category name): hits} over every hour, and the raw rows."""
    with Store(store_path(ccxdp.state_dir)) as store:
        names = store.categories()
        rows = store.hits()
    out: Counter = Counter()
    for h in rows:
        out[h.address, names[h.category]] += h.hits
    return dict(out), rows


def test_collect_stores_each_query_per_address_and_category(ccxdp, lab):
    a, b = lab.cli_v4_addrs[:2]
    a6 = str(ipaddress.ip_network((lab.cli_v6, 64), strict=False))  # IPv6 counted per /64
    ccxdp.json("attach", lab.res_if, *lab.res_netns_opt)
    ccxdp.run("block", "add", "evil.test", "--category", "emotet")
    ccxdp.run("block", "add", "bad.test", "--subtree", "--category", "qakbot")
    ccxdp.run("block", "add", "x.y.evil.test", "--action", "monitor", "--category", "watch")
    start = to_us(datetime.now(UTC))

    for _ in range(2):
        assert lab.dig("evil.test", source=a).timed_out
    assert lab.query("www.bad.test", source=a, timeout=BLOCKED) is None
    for _ in range(3):
        assert lab.dig("a.www.bad.test", source=b).timed_out
    assert lab.query("evil.test", "AAAA", family=6, timeout=BLOCKED) is None
    for _ in range(2):  # monitored: answered by unbound, and counted
        answer = lab.query("x.y.evil.test", source=b)
        assert answer is not None and [str(r) for r in answer.answer[0]] == ["198.18.2.2"]
    # Not listed: answered, not counted.
    assert lab.dig("www.lab.example", source=a).rdata("A") == ["198.18.1.10"]

    out = ccxdp.json("collect")
    end = to_us(datetime.now(UTC))
    assert (out["hits"], out["sources"], out["counters"], out["lost"]) == (9, 3, 5, 0)
    hits, rows = stored(ccxdp)
    assert hits == {(a, "emotet"): 2, (a, "qakbot"): 1, (b, "qakbot"): 3, (b, "watch"): 2,
                    (a6, "emotet"): 1}
    for row in rows:
        assert start <= row.first_us <= row.last_us <= end, row
        assert row.hour * 1_000_000 <= row.first_us < (row.hour + 3600) * 1_000_000, row
    # The kernel holds nothing the store has: stats shows no source until new hits come.
    assert ccxdp.json("stats")["sources"] == []
    assert ccxdp.json("stats")["events"]["source_lost"] == 0

    # More queries, another collection: the store adds them, nothing twice.
    assert lab.dig("evil.test", source=b).timed_out
    assert lab.query("evil.test", "AAAA", family=6, timeout=BLOCKED) is None
    again = ccxdp.json("collect")
    assert (again["epoch"], again["hits"], again["sources"]) == (out["epoch"] + 1, 2, 2)
    hits, _rows = stored(ccxdp)
    assert hits == {(a, "emotet"): 2, (a, "qakbot"): 1, (b, "qakbot"): 3, (b, "watch"): 2,
                    (a6, "emotet"): 2, (b, "emotet"): 1}
    assert ccxdp.json("collect")["hits"] == 0


def test_records_name_the_feeds_whose_entries_the_lines_hits_matched(ccxdp, lab, tmp_path):
    """The records' feeds field is the evidence an operator needs for a complaint: the feeds
    whose block entries carry the category of a line's hits, as the catalog had them when
    the hits were collected. Entries added by hand are no feed."""
    a, b = lab.cli_v4_addrs[:2]
    feeds = {"abuse": ("evil.test\n", "emotet"), "local": ("evil.test\nc2.test\n", "emotet"),
             "other": ("qak.test\n", "qakbot")}
    ccxdp.json("attach", lab.res_if, *lab.res_netns_opt)
    for name, (text, category) in feeds.items():
        (tmp_path / f"{name}.txt").write_text(text)
        ccxdp.run("feed", "add", name, str(tmp_path / f"{name}.txt"), "--category", category)
    ccxdp.run("block", "add", "man.test", "--category", "by-hand")
    assert lab.dig("evil.test", source=a).timed_out
    assert lab.dig("man.test", source=a).timed_out
    assert lab.dig("qak.test", source=b).timed_out
    assert ccxdp.json("collect")["hits"] == 3
    _hits, rows = stored(ccxdp)
    # The period the hits fell in, from the store itself: no dependence on today's date.
    period = datetime.fromtimestamp(rows[0].hour, UTC).strftime("%Y-%m")
    sessions = tmp_path / "sessions.csv"
    sessions.write_text(f"L-1,{a},2000-01-01T00:00:00Z,\nL-2,{b},2000-01-01T00:00:00Z,\n")
    subscribers = tmp_path / "subscribers.csv"
    subscribers.write_text("L-1,l1@isp.example,en\nL-2,l2@isp.example,en\n")
    ccxdp.run("notify", "--period", period, "--sessions", str(sessions), "--min-days", "1",
              "--subscribers", str(subscribers), "--from", "noc@isp.example",
              "--out", str(tmp_path / "outbox"))
    records = ccxdp.json("records", "--period", period)["records"]
    assert [(r["line"], r["categories"], r["feeds"]) for r in records] == [
        ("L-1", {"by-hand": 1, "emotet": 1}, ["abuse", "local"]),
        ("L-2", {"qakbot": 1}, ["other"]),
    ]


def test_records_say_what_copy_of_a_fetched_feed_the_names_came_from(ccxdp, lab, tmp_path):
    """A URL feed's copy (its URL, ETag and Last-Modified) beside the records' feeds field,
    as this host's catalog has it: the evidence of where a line's blocked names came from."""
    a = lab.cli_v4_addrs[0]
    certs = certificates(tmp_path / "certs")
    ccxdp.json("attach", lab.res_if, *lab.res_netns_opt)
    with serving(tmp_path / "server", certs.cert, certs.key) as server:
        url = server.route("/cc.txt", body="evil.test\n", etag='"v7"',
                           last_modified="Tue, 01 Dec 2026 10:00:00 GMT")
        ccxdp.run("feed", "add", "abuse", "--url", url, "--ca", str(certs.ca),
                  "--category", "emotet")
    (tmp_path / "local.txt").write_text("evil.test\n")
    ccxdp.run("feed", "add", "local", str(tmp_path / "local.txt"), "--category", "emotet")
    assert lab.dig("evil.test", source=a).timed_out
    assert ccxdp.json("collect")["hits"] == 1
    _hits, rows = stored(ccxdp)
    period = datetime.fromtimestamp(rows[0].hour, UTC).strftime("%Y-%m")
    sessions = tmp_path / "sessions.csv"
    sessions.write_text(f"L-1,{a},2000-01-01T00:00:00Z,\n")
    subscribers = tmp_path / "subscribers.csv"
    subscribers.write_text("L-1,l1@isp.example,en\n")
    ccxdp.run("notify", "--period", period, "--sessions", str(sessions), "--min-days", "1",
              "--subscribers", str(subscribers), "--from", "noc@isp.example",
              "--out", str(tmp_path / "outbox"))
    out = ccxdp.json("records", "--period", period)
    assert [(r["line"], r["feeds"]) for r in out["records"]] == [("L-1", ["abuse", "local"])]
    copy = {"url": url, "etag": '"v7"', "last_modified": "Tue, 01 Dec 2026 10:00:00 GMT"}
    assert out["feed_copies"] == {"abuse": copy}
    listed = ccxdp.json("block", "list", "--sources")
    assert [(e["name"], e["sources"], e["copies"]) for e in listed] == [
        ("evil.test", ["abuse", "local"], {"abuse": copy})]
    for command in (["records", "--period", period], ["block", "list", "--sources"]):
        text = ccxdp.run(*command).stdout
        # Piped: TSV, the URL and its validators whole.
        assert f'\nabuse\t{url}, ETag "v7", Last-Modified Tue, 01 Dec 2026 10:00:00 GMT\n' in text
