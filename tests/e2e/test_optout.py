"""End to end: opt-out by line follows the line's address. A real `ccxdp run` in the
resolver's namespace watches a RADIUS accounting CSV; the opted-out line's client reconnects
with a new address (its namespace's address changes, the new session is written to the CSV).
Its queries for a blocked name still reach unbound and get unbound's own answer, and are not
counted per source; the address it left, now another line's client's, is filtered and
counted again. The fixtures remove the daemon, the attachment, the pins and the lab."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import dns.rcode
import pytest

from tests.ops.test_daemon import config_text, daemon_factory

pytestmark = [pytest.mark.root, pytest.mark.netns]

OLD, NEW = "198.18.0.2", "198.18.0.9"


@pytest.fixture
def daemons(ccxdp, lab, tmp_path):
    with daemon_factory(ccxdp, lab, tmp_path) as make:
        yield make


def iso(delta_s: float = 0) -> str:
    t = datetime.now(UTC) + timedelta(seconds=delta_s)
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def sources(ccxdp) -> dict[str, int]:
    return {s["address"]: s["hits"] for s in ccxdp.json("stats")["sources"]}


def test_an_opted_out_line_stays_exempt_across_a_reconnect(ccxdp, lab, daemons, tmp_path):
    lab.native_tx_peer()
    block = tmp_path / "cc.txt"
    block.write_text("evil.test\n")
    radius = tmp_path / "radius.csv"
    radius.write_text(f"L-1001,{OLD},{iso(-3600)},\nL-2002,{lab.cl2_v4},{iso(-3600)},\n")
    ccxdp.run("exempt", "line", "add", "L-1001")
    cfg = tmp_path / "ccxdp.toml"
    cfg.write_text(config_text(lab, [{"name": "cc", "path": str(block)}])
                   + f'\n[sessions]\nradius_csv = ["{radius}"]\ninterval = 1\n')
    d = daemons(cfg).start()
    d.wait_for("line_exempt", prefix=f"{OLD}/32", line="L-1001", change="added", timeout=10)

    # Exempt: unbound's own answer, no per-source hit; the other line is filtered.
    answer = lab.query("evil.test", source=OLD)
    assert [str(r) for r in answer.answer[0]] == ["198.18.2.1"]
    assert lab.query("evil.test", client="cl2").rcode() == dns.rcode.NXDOMAIN
    stats = ccxdp.json("stats")
    assert stats["outcomes"]["exempt"] == 1 and stats["outcomes"]["blocked"] == 1
    assert sources(ccxdp) == {lab.cl2_v4: 1}

    # The reconnect: client 1 now has NEW, client 2 (line L-2002) got OLD.
    lab.run("cli", ["ip", "addr", "del", f"{OLD}/24", "dev", lab.cli_if], check=True)
    lab.run("cli", ["ip", "addr", "add", f"{NEW}/24", "dev", lab.cli_if, "nodad"], check=True)
    lab.run("cl2", ["ip", "addr", "add", f"{OLD}/24", "dev", lab.cl2_if], check=True)
    lab.run("res", ["ip", "neigh", "flush", "dev", lab.res_if], check=True)
    now = iso()
    radius.write_text(f"L-1001,{OLD},{iso(-3600)},{now}\nL-1001,{NEW},{now},\n"
                      f"L-2002,{lab.cl2_v4},{iso(-3600)},\nL-2002,{OLD},{now},\n")
    started = time.monotonic()
    d.wait_for("line_exempt", prefix=f"{NEW}/32", line="L-1001", change="added", timeout=10)
    d.wait_for("line_exempt", prefix=f"{OLD}/32", line="L-1001", change="removed", timeout=10)
    assert time.monotonic() - started < 3

    # The opted-out line, at its new address: still unjudged and uncounted.
    answer = lab.query("evil.test", source=NEW)
    assert answer is not None and [str(r) for r in answer.answer[0]] == ["198.18.2.1"]
    # The address it left, now L-2002's: filtered, and counted under that address.
    answer = lab.query("evil.test", source=OLD, client="cl2")
    assert answer is not None and answer.rcode() == dns.rcode.NXDOMAIN
    stats = ccxdp.json("stats")
    assert stats["outcomes"]["exempt"] == 2 and stats["outcomes"]["blocked"] == 2
    assert sources(ccxdp) == {lab.cl2_v4: 1, OLD: 1}
    assert lab.unbound_queries_for("evil.test") == 2  # the two exempt ones only
    assert {(e["prefix"], e["line"]) for e in ccxdp.json("exempt", "list")} == {
        (f"{NEW}/32", "L-1001")}
    assert d.stop() == 0
