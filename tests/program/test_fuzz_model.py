"""The fuzzer's reference model on its own (no kernel needed): the answers it expects of the
program are what a client accepts, checked by tools that share nothing with it; dnspython
parses each answer strictly, both checksums are recomputed by the answer tests' own helpers.
A model that built wrong answers would otherwise hold the program to them."""

from __future__ import annotations

import random
import struct

import dns.flags
import dns.message

from tests.harness import fuzz
from tests.harness import xdp_model as model
from tests.program.test_answers import check_checksums, split_frame

SEED = 20261205


def vlan_tags(frame: bytes) -> int:
    n, at = 0, 12
    while frame[at:at + 2] in (b"\x81\x00", b"\x88\xa8"):
        n, at = n + 1, at + 4
    return n


def test_expected_answers_are_valid_dns():
    rng = random.Random(SEED)
    answers = 0
    for _ in range(20):
        scenario = fuzz.random_scenario(rng)
        state = scenario.model_state(1 << 20)
        maker = fuzz.FrameMaker(rng, scenario)
        for _ in range(1000):
            frame = maker.frame()
            want = model.judge(frame, state)
            if want.retval != model.XDP_TX:
                continue
            vlans = vlan_tags(frame)
            _dst, _src, tags, ip, udp, end = split_frame(want.frame, vlans)
            assert end == len(want.frame), "nothing after the datagram"
            assert tags == frame[12:12 + 4 * vlans]
            check_checksums(ip, udp)
            answer = dns.message.from_wire(udp[8:])  # strict
            qid, qflags = struct.unpack_from("!HH", udp, 8)
            assert answer.id == qid
            assert answer.flags & dns.flags.QR and answer.flags & dns.flags.RA
            assert bool(answer.flags & dns.flags.RD) == bool(qflags & dns.flags.RD)
            answers += 1
    assert answers > 500, answers


def test_every_rule_of_the_model_decides_some_frame():
    """The generator reaches every outcome the model can give, so the short run compares
    each of them (the kernel run checks the same of the counters)."""
    rng = random.Random(SEED)
    outcomes = set()
    for _ in range(10):
        scenario = fuzz.random_scenario(rng)
        state = scenario.model_state(16)
        frames = fuzz.FrameMaker(rng, scenario).frames()
        for _ in range(2000):
            v = model.judge(next(frames), state)
            outcomes.update(i for i in v.stats if i < len(model.OUT))
    assert outcomes == set(model.OUT)


def test_expected_fins_are_bare_fins():
    """A blocked TCP query's segment, made a FIN: no payload, FIN+ACK alone, the query's
    sequence number, a right TCP checksum, and an IPv4 header checksum right exactly when the
    query's was."""
    from tests.program.test_answers import inet_checksum

    rng = random.Random(SEED)
    fins = 0
    for _ in range(20):
        scenario = fuzz.random_scenario(rng)
        state = scenario.model_state(1 << 20)
        maker = fuzz.FrameMaker(rng, scenario)
        for _ in range(1000):
            frame = maker.frame()
            want = model.judge(frame, state)
            if not want.stats[model.shared.STAT_EVENT_BASE + model.shared.Event.TCP_CLOSED]:
                continue
            out, at = want.frame, 12 + 4 * vlan_tags(frame) + 2
            if out[at] >> 4 == 4:
                hdr = (out[at] & 15) * 4
                ip, seg = out[at:at + hdr], out[at + hdr:]
                assert int.from_bytes(ip[2:4], "big") == hdr + len(seg)
                assert (inet_checksum(ip) == 0) == (inet_checksum(frame[at:at + hdr]) == 0)
                pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(seg))
            elif out[at + 6] == 6:  # no extension headers to walk
                hdr, seg = 40, out[at + 40:]
                assert int.from_bytes(out[at + 4:at + 6], "big") == len(seg)
                pseudo = out[at + 8:at + 40] + struct.pack("!I3xB", len(seg), 6)
            else:
                continue
            assert len(seg) == (seg[12] >> 4) * 4, "no payload"
            assert seg[13] == 0x11, "FIN+ACK alone"
            assert seg[4:8] == frame[at + hdr + 4:at + hdr + 8], "the query's sequence number"
            assert inet_checksum(pseudo + seg) == 0, "TCP checksum"
            fins += 1
    assert fins > 50, fins
