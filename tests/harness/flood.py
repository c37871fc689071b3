"""Spoofed floods for program tests and the flood benchmark: one query frame, many sources.

A frame built once with scapy gets each source written over its own (the program reads no
checksum, so the frame needs no other change); that makes a million frames in seconds."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator

_ETH = 14
_V4_SRC, _V6_SRC = _ETH + 12, _ETH + 8  # untagged frames


def with_source(frame: bytes, source: bytes, checksums: bool = False) -> bytes:
    """The untagged IPv4 or IPv6 UDP frame with its source address replaced by ``source``
    (4 or 16 bytes, the frame's family); with ``checksums``, the IPv4 header's and the UDP
    checksum (whose pseudo-header holds the source) updated too (RFC 1624), as a real
    sender's frame would carry them."""
    at = _V4_SRC if len(source) == 4 else _V6_SRC
    old = frame[at:at + len(source)]
    out = bytearray(frame[:at] + source + frame[at + len(source):])
    if checksums:
        if len(source) == 4:
            _adjust(out, _ETH + 10, old, source)  # the IPv4 header checksum
            udp = _ETH + (frame[_ETH] & 0x0F) * 4
        else:
            udp = _ETH + 40  # no extension headers in frames made here
        if len(source) == 16 or out[udp + 6:udp + 8] != b"\0\0":  # 0: no UDP checksum (IPv4)
            _adjust(out, udp + 6, old, source)
    return bytes(out)


def _adjust(buf: bytearray, at: int, old: bytes, new: bytes) -> None:
    """RFC 1624: HC' = ~(~HC + ~m + m'), over the 16-bit words that changed."""
    total = (~int.from_bytes(buf[at:at + 2], "big")) & 0xFFFF
    for i in range(0, len(old), 2):
        total += (~int.from_bytes(old[i:i + 2], "big") & 0xFFFF) + int.from_bytes(new[i:i + 2],
                                                                                   "big")
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    buf[at:at + 2] = (~total & 0xFFFF).to_bytes(2, "big")


def random_sources(net: str, count: int, seed: int) -> Iterator[bytes]:
    """``count`` distinct random addresses of ``net`` (packed), repeatable by seed."""
    network = ipaddress.ip_network(net)
    if count > network.num_addresses:
        raise ValueError(f"{net} holds fewer than {count} addresses")
    rng = random.Random(seed)
    base, span = int(network.network_address), network.num_addresses
    size = network.max_prefixlen // 8
    seen: set[int] = set()
    while len(seen) < count:
        offset = rng.randrange(span)
        if offset not in seen:
            seen.add(offset)
            yield (base + offset).to_bytes(size, "big")
