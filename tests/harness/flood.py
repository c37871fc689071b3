"""Spoofed floods for program tests and the flood benchmark: one query frame, many sources.

A frame built once with scapy gets each source written over its own (the program reads no
checksum, so the frame needs no other change); that makes a million frames in seconds."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator

_ETH = 14
_V4_SRC, _V6_SRC = _ETH + 12, _ETH + 8  # untagged frames


def with_source(frame: bytes, source: bytes) -> bytes:
    """The untagged IPv4 or IPv6 frame with its source address replaced by ``source``
    (4 or 16 bytes, the frame's family)."""
    at = _V4_SRC if len(source) == 4 else _V6_SRC
    return frame[:at] + source + frame[at + len(source):]


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
