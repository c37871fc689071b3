# SPDX-License-Identifier: GPL-2.0
"""The sinkhole host's recorder: every TCP connection attempt, UDP datagram and ping sent to
the sinkhole addresses, one JSON line each; run inside the sinkhole namespace as
`python -m ccxdp.lab.sinkhole sinkhole --iface IF --log FILE --ready FILE --addr A...`."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def read_contacts(path: Path) -> list[dict[str, Any]]:
    """The sinkhole's records: {"time", "proto": "tcp"|"udp"|"icmp", "source", "source_port",
    "destination", "destination_port"} (ports null for icmp). A line being written is skipped."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


# ---- the sinkhole's recorder (runs inside the sinkhole namespace) ------------------------------

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def parse_contact(
    frame: bytes, addresses: set[str], now: float | None = None
) -> dict[str, Any] | None:
    """The record of a frame that contacts one of `addresses`: a TCP SYN (a connection
    attempt), a UDP datagram or an ICMP echo request; None for anything else (ARP, neighbour
    discovery, replies, non-first fragments)."""
    off = 12
    ethertype = int.from_bytes(frame[off : off + 2], "big")
    while ethertype in (0x8100, 0x88A8):  # VLAN tags
        off += 4
        ethertype = int.from_bytes(frame[off : off + 2], "big")
    ip = frame[off + 2 :]
    if ethertype == 0x0800 and len(ip) >= 20:
        ihl = (ip[0] & 0x0F) * 4
        if int.from_bytes(ip[6:8], "big") & 0x1FFF:
            return None  # a later fragment: its first one was judged
        proto, src, dst, l4 = ip[9], ip[12:16], ip[16:20], ip[ihl:]
        icmp_echo = (1, 8)
    elif ethertype == 0x86DD and len(ip) >= 40:
        proto, src, dst, l4 = ip[6], ip[8:24], ip[24:40], ip[40:]
        icmp_echo = (58, 128)
    else:
        return None
    dst_ip = str(ipaddress.ip_address(dst))
    if dst_ip not in addresses:
        return None
    rec: dict[str, Any] = {"proto": None, "source": str(ipaddress.ip_address(src)),
                           "source_port": None, "destination": dst_ip, "destination_port": None}
    if proto == 6 and len(l4) >= 14 and l4[13] & 0x12 == 0x02:  # SYN without ACK
        rec["proto"] = "tcp"
    elif proto == 17 and len(l4) >= 8:
        rec["proto"] = "udp"
    elif (proto, l4[:1]) == (icmp_echo[0], bytes([icmp_echo[1]])):
        rec["proto"] = "icmp"
    else:
        return None
    if rec["proto"] != "icmp":
        rec["source_port"] = int.from_bytes(l4[0:2], "big")
        rec["destination_port"] = int.from_bytes(l4[2:4], "big")
    t = time.time() if now is None else now
    stamp = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
    return {"time": stamp.replace("+00:00", "Z"), **rec}


def _sinkhole_main(argv: Sequence[str]) -> int:
    """Record every contact with the sinkhole addresses; complete TCP handshakes on a few
    ports, so that a client's connect() succeeds there as it would with a real sinkhole."""
    import argparse
    import select

    p = argparse.ArgumentParser(prog="python -m ccxdp.lab.sinkhole sinkhole")
    p.add_argument("--iface", required=True)
    p.add_argument("--log", required=True, type=Path)
    p.add_argument("--ready", required=True, type=Path)
    p.add_argument("--addr", action="append", required=True)
    p.add_argument("--tcp-port", action="append", type=int, default=[])
    args = p.parse_args(argv)
    addresses = {str(ipaddress.ip_address(a)) for a in args.addr}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    capture.bind((args.iface, 0))
    listeners = []
    for addr in sorted(addresses):
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        for port in args.tcp_port:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(64)
            s.setblocking(False)
            listeners.append(s)
    with open(args.log, "a", encoding="utf-8") as log:
        args.ready.write_text(f"{os.getpid()}\n")
        while True:
            readable, _, _ = select.select([capture, *listeners], [], [])
            for s in readable:
                if s is capture:
                    frame, meta = capture.recvfrom(65535)
                    if meta[2] == PACKET_OUTGOING:
                        continue
                    rec = parse_contact(frame, addresses)
                    if rec is not None:
                        log.write(json.dumps(rec, sort_keys=True) + "\n")
                        log.flush()
                else:
                    with contextlib.suppress(BlockingIOError, ConnectionError):
                        conn, _ = s.accept()
                        conn.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["sinkhole"]:
        sys.exit(_sinkhole_main(sys.argv[2:]))
    sys.exit("usage: python -m ccxdp.lab.sinkhole sinkhole"
             " --iface IF --log FILE --ready FILE --addr A...")
