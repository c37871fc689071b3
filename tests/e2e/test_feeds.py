"""Atomic swaps under traffic, end to end: while a client in its own namespace streams queries
for names that stay blocked and for names being removed, a full replace of a large list runs
through the real CLI. Not one query for a name that stays blocked may reach unbound (its own
query log says what reached it), and once the replace has returned the removed names
resolve."""

from __future__ import annotations

import json
import sys
import time

import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns]

LARGE = 200_000  # filler names on each side of the swap: the swap takes a visible while

# Blocked throughout: in both lists. Their zone answers them, so a leak would be answered.
STAYING = ["evil.test", "s1.evil.test", "s2.bad.test", "deep.a.b.bad.test"]
# Blocked before the swap only; unbound has A records for them.
LEAVING = {"x.y.evil.test": "198.18.2.2", "www.bad.test": "198.18.3.2"}

# Run in the client namespace: query every name in turn until told to stop, one JSON line
# per query: send time, name, and what came back (an A record, an rcode, or a timeout).
STREAMER = r"""
import json, sys, time
import dns.message, dns.query, dns.exception, dns.rcode
server, stop, names = sys.argv[1], sys.argv[2], sys.argv[3:]
import os
while not os.path.exists(stop):
    for name in names:
        sent = time.time()
        q = dns.message.make_query(name, "A")
        try:
            r = dns.query.udp(q, server, timeout=0.3)
            got = [str(x) for rrset in r.answer for x in rrset] or dns.rcode.to_text(r.rcode())
        except dns.exception.Timeout:
            got = "timeout"
        print(json.dumps([sent, name, got]), flush=True)
"""


def write_list(path, names) -> None:
    path.write_text("".join(n + "\n" for n in names))


def test_a_full_replace_under_traffic_never_unblocks_a_staying_name(ccxdp, lab, tmp_path):
    before = tmp_path / "before.txt"
    after = tmp_path / "after.txt"
    write_list(before, [*STAYING, *LEAVING, *(f"a{i}.filler.test" for i in range(LARGE))])
    write_list(after, [*STAYING, *(f"b{i}.filler.test" for i in range(LARGE))])
    ccxdp.json("attach", lab.res_if, *lab.res_netns_opt)
    lab.native_tx_peer()  # a veth sends native XDP_TX answers only with a program on its peer
    first = ccxdp.json("block", "import", str(before), "--action", "nxdomain")
    assert first["kernel_names"] == LARGE + len(STAYING) + len(LEAVING)

    stop = tmp_path / "stop"
    log = open(tmp_path / "stream.jsonl", "w")
    streamer = lab.popen("cli", [sys.executable, "-c", STREAMER, lab.res_v4, str(stop),
                                 *STAYING, *LEAVING], stdout=log)
    try:
        time.sleep(1.0)  # the stream runs before the swap
        started = time.time()
        swap = ccxdp.json("block", "import", str(after), "--replace", "--action", "nxdomain")
        done = time.time()
        time.sleep(1.0)  # and after it
    finally:
        stop.touch()
        streamer.wait(timeout=10)
        log.close()

    assert swap["added"]["block"] == LARGE
    assert swap["removed"]["block"] == LARGE + len(LEAVING)
    assert swap["kernel_names"] == LARGE + len(STAYING)
    queries = [json.loads(line) for line in (tmp_path / "stream.jsonl").read_text().splitlines()]
    during = [q for q in queries if started <= q[0] <= done]
    assert during, "the stream must have queried while the swap ran"

    # Names that stay blocked: answered NXDOMAIN by ccxdp every single time, never seen by
    # unbound (which would have answered them from its zones).
    for name in STAYING:
        got = {tuple(q[2]) if isinstance(q[2], list) else q[2] for q in queries if q[1] == name}
        assert got == {"NXDOMAIN"}, (name, got)
        assert lab.unbound_queries_for(name) == 0, name
    # Removed names: blocked before the swap began, resolved by unbound after it returned.
    for name, address in LEAVING.items():
        early = [q[2] for q in queries if q[1] == name and q[0] < started]
        late = [q[2] for q in queries if q[1] == name and q[0] > done]
        assert early and set(map(str, early)) == {"NXDOMAIN"}, (name, early)
        assert late and all(g == [address] for g in late), (name, late)
    stats = ccxdp.json("stats")
    assert stats["outcomes"]["malformed"] == 0
    assert stats["names"] == LARGE + len(STAYING)
