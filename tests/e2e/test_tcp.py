"""DNS over TCP, end to end: real dig +tcp, kdig +tcp and dnspython over TCP against a real
unbound behind the filter, IPv4 and IPv6. A blocked query fails at once on the client, never
reaches unbound (its query log), is counted once per source, and frees unbound's TCP slot at
once; tc entries pass over TCP to unbound; allowed names resolve over TCP."""

from __future__ import annotations

import ipaddress
import time

import pytest

from ccxdp.lab.topology import Lab, LabSpec

pytestmark = [pytest.mark.root, pytest.mark.netns]

# A failure "at once": far below any client's timeout (dig and kdig are given 3 s here), and
# far below an RTO the client would wait for if the resolver never answered its segment.
AT_ONCE_S = 1.0


def attach_blocking(ccxdp, lab, mode: str) -> None:
    ccxdp.json("attach", lab.res_if, *lab.res_netns_opt, "--mode", mode, "--action", "nxdomain")
    ccxdp.run("block", "add", "evil.test", "--category", "emotet")
    ccxdp.run("block", "add", "bad.test", "--subtree", "--action", "drop", "--category", "emotet")
    ccxdp.run("block", "add", "www.lab.example", "--action", "tc")


def timed(fn):
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


def dig_tcp(lab, name, family):
    server = lab.res_v4 if family == 4 else lab.res_v6
    return lab.run("cli", ["env", f"HOME={lab.tmpdir}", "dig", f"-{family}", "+tcp", "+time=3",
                           "+tries=1", f"@{server}", name, "A"])


def kdig_tcp(lab, name, family):
    server = lab.res_v4 if family == 4 else lab.res_v6
    return lab.run("cli", ["kdig", f"-{family}", "+tcp", "+time=3", "+retry=0", f"@{server}",
                           name, "A"])


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_blocked_tcp_queries_fail_at_once_and_never_reach_unbound(ccxdp, lab, mode):
    client4 = lab.cli_v4
    client6 = str(ipaddress.ip_network((lab.cli_v6, 64), strict=False))  # IPv6 per /64
    attach_blocking(ccxdp, lab, mode)
    before = ccxdp.json("stats")

    for family in (4, 6):
        cp, took = timed(lambda f=family: dig_tcp(lab, "EvIl.test", f))
        assert took < AT_ONCE_S, (took, cp.stdout)
        assert "end of file" in cp.stdout and "status:" not in cp.stdout, cp.stdout
        cp, took = timed(lambda f=family: kdig_tcp(lab, "x.y.www.bad.test", f))
        assert took < AT_ONCE_S, (took, cp.stdout, cp.stderr)
        assert cp.returncode != 0 and "status:" not in cp.stdout, cp.stdout + cp.stderr
        with pytest.raises(EOFError):
            timed(lambda f=family: lab.query("evil.test", family=f, tcp=True, timeout=3))

    # Nothing leaked: unbound's own log saw none of the blocked queries.
    assert lab.unbound_queries_for("evil.test") == 0
    assert lab.unbound_queries_for("x.y.www.bad.test") == 0
    # tc entries pass over TCP, which unbound answers (RPZ's tcp-only); other names resolve.
    for family in (4, 6):
        answer = lab.query("www.lab.example", family=family, tcp=True, timeout=3)
        assert answer is not None and [str(r) for r in answer.answer[0]] == ["198.18.1.10"]
        answer = lab.query("mail.lab.example", family=family, tcp=True, timeout=3)
        assert answer is not None and [str(r) for r in answer.answer[0]] == ["198.18.1.11"]
    assert lab.unbound_queries_for("www.lab.example") == 2

    after = ccxdp.json("stats")
    changed = {k: after["outcomes"][k] - before["outcomes"][k] for k in after["outcomes"]
               if after["outcomes"][k] != before["outcomes"][k]}
    assert changed.pop("blocked") == 6
    assert changed.pop("tcp_retry") == 2
    assert changed.pop("passed") == 2
    # The rest: handshakes, ACKs and FINs of the connections, and neighbour discovery.
    assert set(changed) <= {"tcp_other", "not_dns"}
    assert after["events"]["tcp_closed"] - before["events"]["tcp_closed"] == 6
    assert after["events"]["answer_failed"] == 0
    hits = {(s["address"], s["category"]): s["hits"] for s in after["sources"]}
    # Once per query, not once per retransmission: three queries from each family.
    assert {a: h for (a, _c), h in hits.items()} == {client4: 3, client6: 3}


# Under pressure on its TCP slots unbound shortens its idle timeout down to 200 ms, never less
# (unbound.conf(5), tcp-idle-timeout): a blocked query whose connection the filter left open
# would fail no sooner than that, and be resent and counted again meanwhile.
BEFORE_UNBOUND_GIVES_UP_S = 0.15


# Runs in the client's namespace: a client that writes the query's length and the query in
# two writes with Nagle off, so they leave in two segments; prints what it read: "eof" or hex.
_LENGTH_THEN_MESSAGE = r"""
import socket, sys, time
import dns.message
wire = dns.message.make_query(sys.argv[2], "A").to_wire()
s = socket.create_connection((sys.argv[1], 53), timeout=3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(len(wire).to_bytes(2, "big"))
time.sleep(0.05)
s.sendall(wire)
data = s.recv(65535)
print(data.hex() if data else "eof")
"""


def test_query_sent_after_its_length_in_another_segment(ccxdp, lab):
    import sys

    attach_blocking(ccxdp, lab, "native")
    cp, took = timed(lambda: lab.run("cli", [sys.executable, "-c", _LENGTH_THEN_MESSAGE,
                                             lab.res_v4, "evil.test"]))
    assert cp.stdout.strip() == "eof" and took < AT_ONCE_S + 0.05, cp.stdout + cp.stderr
    assert lab.unbound_queries_for("evil.test") == 0
    cp = lab.run("cli", [sys.executable, "-c", _LENGTH_THEN_MESSAGE, lab.res_v4,
                         "mail.lab.example"])
    assert cp.stdout.strip() not in ("", "eof"), cp.stdout + cp.stderr
    assert lab.unbound_queries_for("mail.lab.example") == 1


@pytest.fixture
def one_tcp_slot():
    """A lab whose unbound takes one TCP connection at a time (its default is 10 a thread),
    so a connection a blocked query left open would keep every later TCP client out."""
    with Lab(LabSpec(unbound_extra=("incoming-num-tcp: 1", "tcp-idle-timeout: 30000"))) as lab:
        yield lab


def test_blocked_tcp_queries_free_unbound_slot_at_once(ccxdp, one_tcp_slot):
    lab = one_tcp_slot
    attach_blocking(ccxdp, lab, "native")
    for i in range(4):
        start = time.monotonic()
        with pytest.raises(EOFError):
            lab.query("evil.test", family=4 if i % 2 else 6, tcp=True, timeout=3)
        assert time.monotonic() - start < BEFORE_UNBOUND_GIVES_UP_S
    # With the slot still held, this query would wait for unbound's 30 s idle timeout.
    answer, took = timed(lambda: lab.query("mail.lab.example", tcp=True, timeout=3))
    assert answer is not None and [str(r) for r in answer.answer[0]] == ["198.18.1.11"]
    assert took < AT_ONCE_S
    cp, took = timed(lambda: dig_tcp(lab, "mail.lab.example", 4))
    assert "status: NOERROR" in cp.stdout and took < AT_ONCE_S, cp.stdout
    assert lab.unbound_queries_for("evil.test") == 0
    hits = {s["address"]: s["hits"] for s in ccxdp.json("stats")["sources"]}
    assert hits == {lab.cli_v4: 2,
                    str(ipaddress.ip_network((lab.cli_v6, 64), strict=False)): 2}
