"""`ccxdp run` with [sessions]: the real daemon follows opted-out lines' sessions in files
that change under it and in FreeRADIUS's radacct in a real PostgreSQL, and keeps the kernel's
exempt trie equal to the static prefixes and the addresses those lines hold now. The
program is attached (generic mode) to lo of an empty namespace; the kernel map is read back
through Datapath, the metrics over HTTP. Daemons, pins and the namespace are removed by the
fixtures, also when a test fails."""

from __future__ import annotations

import socket
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from ccxdp.datapath import shared
from ccxdp.datapath.loader import Datapath
from tests.cli.test_policy import mapped
from tests.ops.test_daemon import daemon_factory
from tests.policy.test_line_exempt import RADACCT_DDL, radacct_row

pytestmark = [pytest.mark.root, pytest.mark.netns]


@pytest.fixture
def daemons(ccxdp, tmp_path):
    # The daemon runs in this namespace; the interface it attaches names its own.
    with daemon_factory(ccxdp, SimpleNamespace(res_ns=None), tmp_path) as make:
        yield make


def iso(delta_s: float = 0) -> str:
    t = datetime.now(UTC) + timedelta(seconds=delta_s)
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exempt_map(ccxdp) -> set:
    dp = Datapath(ccxdp.pin_dir, ccxdp.state_dir)
    with dp.open_map(shared.MAP_EXEMPT) as m:
        return {(k.prefixlen, bytes(k.addr)) for k in m.keys()}


def wait_map(ccxdp, prefixes: set[str], timeout: float = 10) -> float:
    """Wait until the trie holds exactly these prefixes; the seconds it took."""
    want = {mapped(p) for p in prefixes}
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if exempt_map(ccxdp) == want:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"the exempt trie never became {sorted(prefixes)}: "
                         f"{sorted(exempt_map(ccxdp))}")


def config(netns: str, sessions: str, metrics: str | None = None) -> str:
    text = (f'[[interfaces]]\nname = "lo"\nnetns = "{netns}"\nmode = "generic"\n\n'
            f"[collect]\ninterval = 0\n\n[sessions]\n{sessions}\n")
    if metrics:
        text += f'\n[metrics]\nlisten = "{metrics}"\n'
    return text


def test_the_daemon_follows_sessions_files_as_they_change(ccxdp, bare_netns, daemons,
                                                          tmp_path):
    csv = tmp_path / "radius.csv"
    csv.write_text(f"L-1,198.18.5.2,{iso(-3600)},\nL-2,198.18.5.3,{iso(-3600)},\n")
    leases = tmp_path / "dhcpd.leases"
    start = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y/%m/%d %H:%M:%S")
    leases.write_text(f'lease 198.18.6.2 {{\n  starts 4 {start};\n  ends never;\n'
                      f'  binding state active;\n  option agent.circuit-id "L-1";\n}}\n')
    ccxdp.run("exempt", "add", "198.18.9.0/24")  # static: never touched by the daemon
    ccxdp.run("exempt", "line", "add", "L-1")
    port = free_port()
    cfg = tmp_path / "ccxdp.toml"
    cfg.write_text(config(bare_netns, f'radius_csv = ["{csv}"]\nleases = ["{leases}"]\n'
                                      "interval = 1", f"127.0.0.1:{port}"))
    d = daemons(cfg).start()
    wait_map(ccxdp, {"198.18.9.0/24", "198.18.5.2/32", "198.18.6.2/32"})
    assert {(e["prefix"], e["line"], e["change"]) for e in d.events()
            if e["event"] == "line_exempt"} == {("198.18.5.2/32", "L-1", "added"),
                                                 ("198.18.6.2/32", "L-1", "added")}

    # L-1 reconnects with a new address; L-2 gets the old one.
    csv.write_text(f"L-1,198.18.5.2,{iso(-3600)},{iso(-1)}\nL-1,198.18.5.7,{iso(-1)},\n"
                   f"L-2,198.18.5.2,{iso(-1)},\nL-2,198.18.5.3,{iso(-3600)},\n")
    took = wait_map(ccxdp, {"198.18.9.0/24", "198.18.5.7/32", "198.18.6.2/32"})
    assert took < 3, took
    listed = {(e["prefix"], e["line"]) for e in ccxdp.json("exempt", "list")}
    assert listed == {("198.18.9.0/24", None), ("198.18.5.7/32", "L-1"),
                      ("198.18.6.2/32", "L-1")}

    # A bad file: one line naming file and line, and the last good state stays.
    mark = len(d.events())
    csv.write_text(f"L-1,198.18.5.8,{iso(-1)},\nL-1,198.18.5.300,{iso(-1)},\n")
    e = d.wait_for("sessions_read", since=mark, level="error")
    assert e["error"] == f"{csv}:2: invalid address or prefix: 198.18.5.300"
    time.sleep(1.5)
    wait_map(ccxdp, {"198.18.9.0/24", "198.18.5.7/32", "198.18.6.2/32"}, timeout=0.5)

    # A session whose stop time passes leaves without any file changing; an opt-out made
    # while the daemon runs arrives at the next poll; an opt-in takes the line's prefixes
    # out at once.
    csv.write_text(f"L-1,198.18.5.7,{iso(-60)},{iso(3)}\nL-2,198.18.5.3,{iso(-60)},\n")
    ccxdp.run("exempt", "line", "add", "L-2")
    wait_map(ccxdp, {"198.18.9.0/24", "198.18.5.7/32", "198.18.6.2/32", "198.18.5.3/32"})
    wait_map(ccxdp, {"198.18.9.0/24", "198.18.6.2/32", "198.18.5.3/32"})
    ccxdp.run("exempt", "line", "remove", "L-1")
    wait_map(ccxdp, {"198.18.9.0/24", "198.18.5.3/32"}, timeout=0.5)
    # The static prefix went through all of it.
    # The metrics: once the daemon has read the opt-out list again (each second here).
    want = {"ccxdp_line_exempt_prefixes 1.0", "ccxdp_opted_out_lines 1.0"}
    deadline = time.monotonic() + 5
    while True:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        lines = set(body.decode().splitlines())
        if want <= lines or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert want <= lines, sorted(x for x in lines if "line" in x)

    # A reload without [sessions]: nobody follows the lines, their prefixes go.
    cfg.write_text(config(bare_netns, f'radius_csv = ["{csv}"]').split("[sessions]")[0])
    mark = len(d.events())
    d.send(1)  # SIGHUP
    d.wait_for("reload", since=mark, result="ok")
    wait_map(ccxdp, {"198.18.9.0/24"})
    assert d.stop() == 0


def test_the_daemon_follows_radacct(ccxdp, bare_netns, daemons, tmp_path, postgres_server,
                                    fleet_uri):
    database = fleet_uri.rsplit("/", 1)[1]

    def sql(text: str) -> None:
        postgres_server.psql(text, database=database, user="ccxdp")

    sql(RADACCT_DDL + radacct_row(1, "L-1", iso(-3600), v4="198.18.5.2",
                                  delegated="fd00:5:100::/56"))
    ccxdp.run("exempt", "line", "add", "L-1")
    cfg = tmp_path / "ccxdp.toml"
    cfg.write_text(config(bare_netns, f'interval = 1\n\n[sessions.radacct]\nuri = "{fleet_uri}"'))
    d = daemons(cfg).start()  # PGPASSFILE comes from the environment (fleet_uri sets it)
    wait_map(ccxdp, {"198.18.5.2/32", "fd00:5:100::/56"})
    # Stop, and a new session with another address: within a few seconds.
    sql(f"UPDATE radacct SET AcctStopTime = '{iso()}' WHERE AcctUniqueId = 'u1';"
        + radacct_row(2, "L-1", iso(), v4="198.18.5.7", delegated="fd00:5:200::/56"))
    took = wait_map(ccxdp, {"198.18.5.7/32", "fd00:5:200::/56"})
    assert took < 4, took
    # The database gone: logged once, the last good state kept.
    postgres_server.stop()
    try:
        e = d.wait_for("sessions_read", level="error", source="radacct")
        assert e["error"].startswith("radacct: ")
        time.sleep(2)
        wait_map(ccxdp, {"198.18.5.7/32", "fd00:5:200::/56"}, timeout=0.5)
        assert len([x for x in d.events() if x.get("source") == "radacct"
                    and x.get("level") == "error"]) == 1
    finally:
        postgres_server.start()
    assert d.stop() == 0
