"""`ccxdp run` with zone feeds: a real knotd on loopback as the primary, the daemon attached
to lo of an empty namespace. NOTIFY from the primary starts a transfer within a second;
NOTIFY from another address is refused and logged; a primary gone past the SOA's expire
leaves the list applied and the log loud. The `daemons` and `primary` fixtures stop every
daemon and server they started, passed or failed.
"""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from ccxdp.datapath.loader import Datapath
from tests.conftest import kernel_names
from tests.harness.primaries import LOOPBACK, Knot, free_port, primary
from tests.ops.test_daemon import daemon_factory

pytestmark = [pytest.mark.root, pytest.mark.netns]

ZONE = "rpz.test"


@pytest.fixture
def daemons(ccxdp, tmp_path):
    # In this namespace (not the lab's): the primaries listen on its loopback.
    with daemon_factory(ccxdp, SimpleNamespace(res_ns=None), tmp_path) as make:
        yield make


def config(tmp_path, netns: str, knot: Knot, notify_port: int | None = None):
    lines = ["[[interfaces]]", 'name = "lo"', f'netns = "{netns}"', 'mode = "generic"', "",
             "[[feeds]]", 'name = "cc"', f'primary = "{knot.address}"', f'zone = "{ZONE}"',
             "", "[collect]", "interval = 0"]
    if notify_port:
        lines += ["", "[feeds_notify]", f'listen = "{LOOPBACK}:{notify_port}"']
    path = tmp_path / "ccxdp.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def blocked(ccxdp) -> set[str]:
    return {e["name"] for e in ccxdp.json("block", "list")}


def test_notify_from_the_primary_starts_a_transfer_within_a_second(ccxdp, daemons, bare_netns,
                                                                   tmp_path):
    port = free_port()
    # An hour's refresh: only NOTIFY can bring the change in the time the test waits.
    with primary(Knot, ZONE, ["a.test CNAME .", "b.test CNAME ."], notify=(LOOPBACK, port),
                 timers=(3600, 600, 86400)) as knot:
        d = daemons(config(tmp_path, bare_netns, knot, port)).start()
        d.wait_for("feed_sync", feed="cc", why="added", result="ok")
        assert blocked(ccxdp) == {"a.test", "b.test"}
        d.wait_for("notify_listen", listen=f"{LOOPBACK}:{port}")

        mark = len(d.events())
        started = time.monotonic()
        knot.change(["b.test CNAME .", "c.test CNAME ."])
        e = d.wait_for("feed_sync", since=mark, timeout=10, poll=0.02, feed="cc",
                       why="notify")
        took = time.monotonic() - started
        assert (e["result"], e["transfer"], e["serial"], e["added"], e["removed"]) == (
            "ok", "ixfr", "2", "1", "1")
        assert took < 1.5, f"NOTIFY to applied: {took:.2f} s"
        n = d.wait_for("notify", since=mark, result="accepted")
        assert (n["sender"], n["zone"], n["serial"], n["rcode"], n["feed"]) == (
            LOOPBACK, ZONE, "2", "NOERROR", "cc")
        assert blocked(ccxdp) == {"b.test", "c.test"}

        # From another address (127.0.0.2 is loopback too): REFUSED, logged, no transfer.
        mark = len(d.events())
        q = dns.message.make_query(ZONE, dns.rdatatype.SOA)
        q.flags = dns.flags.AA
        q.set_opcode(dns.opcode.NOTIFY)
        q.answer.append(dns.rrset.from_text(ZONE + ".", 60, "IN", "SOA",
                                            "ns. h. 3 1 1 1 1"))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            s.sendto(q.to_wire(), (LOOPBACK, port))
            reply = dns.message.from_wire(s.recv(65535))
        assert (reply.id, reply.rcode(), reply.opcode()) == (q.id, dns.rcode.REFUSED,
                                                             dns.opcode.NOTIFY)
        e = d.wait_for("notify", since=mark, result="refused")
        assert (e["level"], e["sender"], e["zone"], e["rcode"], e["reason"]) == (
            "warning", "127.0.0.2", ZONE, "REFUSED", "not from the zone's primary")
        time.sleep(1.5)
        assert [x for x in d.events()[mark:] if x["event"] == "feed_sync"] == []
        assert d.stop() == 0


def test_past_expire_the_list_is_kept_and_the_log_is_loud(ccxdp, daemons, bare_netns,
                                                          tmp_path):
    # refresh 1 s, retry 1 s, expire 3 s: the primary is gone long enough within seconds.
    with primary(Knot, ZONE, ["a.test CNAME .", "*.b.test CNAME rpz-drop."],
                 timers=(1, 1, 3)) as knot:
        d = daemons(config(tmp_path, bare_netns, knot)).start()
        d.wait_for("feed_sync", feed="cc", why="added", result="ok")
        d.wait_for("feed_sync", feed="cc", why="refresh", result="unchanged", timeout=10)
        before = ccxdp.json("block", "list")
        knot.kill()
        mark = len(d.events())
        e = d.wait_for("feed_sync", since=mark, timeout=20, feed="cc", result="expired")
        assert (e["level"], e["why"], e["serial"], e["kept"]) == (
            "error", "refresh", "1", "the last good list stays applied")
        assert "nothing was changed" in e["error"]
        errors = [x for x in d.events()[mark:] if x["event"] == "feed_sync"]
        assert {x["result"] for x in errors} <= {"error", "expired"}
        assert all(x["level"] == "error" for x in errors)
        # Kept: the catalog and the kernel list what the last good copy listed.
        assert ccxdp.json("block", "list") == before
        assert {x["name"] for x in before} == {"a.test", "b.test"}
        status = ccxdp.json("feed", "list")[0]
        assert (status["block"], status["provenance"]["serial"]) == (2, 1)
        assert len(kernel_names(Datapath(ccxdp.pin_dir, ccxdp.state_dir))) == 2
        assert d.stop() == 0
