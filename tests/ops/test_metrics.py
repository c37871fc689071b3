"""The daemon's Prometheus endpoint, scraped from inside the lab's resolver namespace (the
only place it listens) and parsed with prometheus_client's own text parser; every value is
checked against traffic the test sent."""

from __future__ import annotations

import signal
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.test_daemon import config_text, daemon_factory, rcode

pytestmark = [pytest.mark.root, pytest.mark.netns]

PORT = 9108
SCRAPE = ("import sys, urllib.request; "
          "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")


def url(host: str) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{PORT}/metrics"


def refused(lab, host: str) -> bool:
    cp = lab.run("res", [sys.executable, "-c", SCRAPE, url(host)], timeout=30)
    return cp.returncode != 0 and "Connection refused" in cp.stderr


@pytest.fixture
def daemons(ccxdp, lab, tmp_path):
    with daemon_factory(ccxdp, lab, tmp_path) as make:
        yield make


def scrape(lab, host: str | None = None) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from one scrape, from inside the resolver's
    namespace."""
    cp = lab.run("res", [sys.executable, "-c", SCRAPE, url(host or lab.res_v4)], timeout=30)
    assert cp.returncode == 0, cp.stderr
    out = {}
    for family in text_string_to_metric_families(cp.stdout):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_match_the_traffic_sent(ccxdp, lab, daemons, tmp_path):
    lab.native_tx_peer()
    cc = tmp_path / "cc.txt"
    cc.write_text("evil.test\nbad.test\n")
    watch = tmp_path / "watch.txt"
    watch.write_text("x.y.evil.test\n")
    feeds = [{"name": "cc", "path": str(cc), "category": "emotet"},
             {"name": "watch", "path": str(watch), "action": "monitor"}]
    cfg = tmp_path / "ccxdp.toml"
    cfg.write_text(config_text(lab, feeds, metrics=f"{lab.res_v4}:{PORT}"))
    d = daemons(cfg).start()

    for _ in range(3):
        assert rcode(lab, "evil.test") == "NXDOMAIN"
    assert rcode(lab, "bad.test") == "NXDOMAIN"
    for _ in range(2):
        assert rcode(lab, "x.y.evil.test") == "NOERROR"  # monitored: unbound answers
    assert rcode(lab, "www.lab.example") == "NOERROR"

    m = scrape(lab)
    assert m["ccxdp_loaded", ()] == 1
    # Served on the configured address only.
    assert refused(lab, "127.0.0.1") and refused(lab, lab.res_v6)
    frames = {k[1][0][1]: v for k, v in m.items() if k[0] == "ccxdp_frames_total"}
    assert (frames["blocked"], frames["monitored"], frames["passed"]) == (4, 2, 1)
    assert frames["malformed"] == 0
    actions = {k[1][0][1]: v for k, v in m.items() if k[0] == "ccxdp_actions_total"}
    assert (actions["nxdomain"], actions["monitor"], actions["drop"]) == (4, 2, 0)
    assert m["ccxdp_source_lost_total", ()] == 0
    assert m["ccxdp_category_pending_hits", (("category", "emotet"),)] == 4
    assert m["ccxdp_category_pending_hits", (("category", "watch"),)] == 2
    assert m["ccxdp_map_entries", (("map", "names"),)] == 3
    assert m["ccxdp_map_entries", (("map", "sources"),)] == 2  # one address, two categories
    assert m["ccxdp_map_capacity", (("map", "names"),)] == 1 << 20
    assert m["ccxdp_feed_names", (("feed", "cc"), ("kind", "block"))] == 2
    assert m["ccxdp_feed_names", (("feed", "watch"), ("kind", "block"))] == 1
    assert m["ccxdp_feed_last_sync_success", (("feed", "cc"),)] == 1
    assert m["ccxdp_feed_last_sync_timestamp_seconds", (("feed", "cc"),)] > 1.7e9
    netns = lab.res_ns or ""
    mode = ccxdp.json("status")["attachments"][0]["mode"]
    assert m["ccxdp_attached", (("interface", lab.res_if), ("mode", mode),
                                ("netns", netns))] == 1
    assert m["ccxdp_collections_total", (("result", "ok"),)] == 0

    # A reload that collects often, served on the IPv6 address now: the hits move to the
    # store, per category, exactly.
    cfg.write_text(config_text(lab, feeds, metrics=f"[{lab.res_v6}]:{PORT}", collect=0.5))
    mark = len(d.events())
    d.send(signal.SIGHUP)
    d.wait_for("reload", since=mark, result="ok")
    d.wait_for("collect", since=mark, result="ok", hits="6")
    assert refused(lab, lab.res_v4)
    m = scrape(lab, lab.res_v6)
    assert m["ccxdp_category_stored_hits", (("category", "emotet"),)] == 4
    assert m["ccxdp_category_stored_hits", (("category", "watch"),)] == 2
    assert not [k for k in m if k[0] == "ccxdp_category_pending_hits"]
    assert m["ccxdp_collected_hits_total", ()] == 6
    assert m["ccxdp_collections_total", (("result", "ok"),)] >= 1
    assert 0 < m["ccxdp_collect_duration_seconds", ()] < 10
    assert m["ccxdp_frames_total", (("outcome", "blocked"),)] == 4  # counters never reset
    assert d.stop() == 0


@pytest.mark.root
def test_pending_hits_spell_no_category_as_every_view(datapath):
    """Hits on an entry without a category are category="(none)", as in stats, top,
    records and report; real blocked queries through the loaded program (BPF_PROG_TEST_RUN)."""
    from prometheus_client import generate_latest

    from ccxdp.datapath.hashing import name_hash
    from ccxdp.ops.metrics import DaemonState, make_registry
    from tests.conftest import set_entries
    from tests.hits.test_collector import Traffic

    dp, fd = datapath
    key = dp.hash_key()
    set_entries(dp, {name_hash("plain.test", key): (0, 0), name_hash("c2.test", key): (0, 7)})
    t = Traffic(fd, {"plain.test": 0, "c2.test": 7})
    t.send("198.18.0.2", "plain.test", 2)
    t.send("198.18.0.3", "c2.test")
    text = generate_latest(make_registry(dp, DaemonState(), lambda: {7: "emotet"})).decode()
    pending = {s.labels["category"]: s.value for f in text_string_to_metric_families(text)
               if f.name == "ccxdp_category_pending_hits" for s in f.samples}
    assert pending == {"(none)": 2, "emotet": 1}
