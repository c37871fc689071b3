"""Hit rows written straight into a store, for tests that need hits of a given address,
category and hour (days ago, in another month) that no real query could make now.

The product writes hits only through the collector (stage_counters, then fold); this writes
through the same upsert, so merging is the product's own. Rows are checked here so that a
test's mistake is a clear error, not a row the store would never hold.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from ccxdp.hits.store import (
    CATEGORY_MAX,
    COUNTER_KEY,
    COUNTER_VALUE,
    HOUR,
    Store,
    StoreError,
    _checkpoint_rows,
    address_text,
    to_us,
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class HitRow(NamedTuple):
    """One source address, category and hour of hits."""

    address: Address
    category_id: int
    category_name: str | None
    hour_start: datetime  # UTC, on the hour
    hits: int
    first_seen: datetime  # UTC
    last_seen: datetime
    feeds: Sequence[str] = ()


def add_hits(store: Store, rows: Iterable[Sequence],
             checkpoint: Mapping[str, int | None] | None = None) -> int:
    """Add HitRows (7 or 8 fields) and update the checkpoint, in one transaction; rows of 0
    hits are skipped. Returns the rows taken."""
    cp = _checkpoint_rows(checkpoint) if checkpoint is not None else None
    names: dict[int, str] = {}
    feeds: list[tuple[int, str, int, str]] = []
    upserts: list[tuple[int, str, int, int, int, int]] = []
    for raw in rows:  # every row is checked before anything is written
        address, category, name, hour, hits, first_us, last_us, row_feeds = _checked(raw)
        if name is not None and category:
            names[category] = name
        if hits:
            upserts.append((hour, address, category, hits, first_us, last_us))
            feeds.extend((hour, address, category, f) for f in row_feeds)
    return store._write(upserts, names, feeds, cp)


def _checked(raw) -> tuple[str, int, str | None, int, int, int, int, Sequence[str]]:
    if len(raw) not in (7, 8):
        raise StoreError(f"a hit row has 7 or 8 fields, not {len(raw)}: {raw!r}")
    address, category, name, hour_start, hits, first, last, *rest = raw
    feeds = (rest[0] if rest else ()) or ()
    sources = ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv6Network
    if not isinstance(address, sources):
        raise StoreError(f"not an IPv4Address, IPv6Address or IPv6Network: {address!r}")
    if isinstance(address, ipaddress.IPv6Network):  # a source counted by its prefix
        address = str(address)
    if type(category) is not int or not 0 <= category <= CATEGORY_MAX:
        raise StoreError(f"category id out of range 0-{CATEGORY_MAX}: {category!r}")
    if name is not None and (type(name) is not str or not name):
        raise StoreError(f"category name must be a non-empty string or None: {name!r}")
    if type(hits) is not int or hits < 0:
        raise StoreError(f"hits must be a non-negative integer: {hits!r}")
    hour_us = to_us(hour_start)
    if hour_us % (HOUR * 1_000_000):
        raise StoreError(f"hour_start is not on the hour: {hour_start.isoformat()}")
    first_us, last_us = to_us(first), to_us(last)
    if first_us > last_us:
        raise StoreError(f"first_seen after last_seen: {first.isoformat()} > {last.isoformat()}")
    if any(type(f) is not str or not f for f in feeds):
        raise StoreError(f"feed names must be non-empty strings: {feeds!r}")
    return (address_text(address), category, name, hour_us // 1_000_000, hits, first_us,
            last_us, feeds)


BOOT = 1_790_000_000 * 10**9  # a hit clock's offset to Unix time, in ns, for staged counters


def packed(address: str) -> bytes:
    a = ipaddress.ip_network(address).network_address
    return (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a).packed


def prefix_len(address: str) -> int:
    """The kernel key's prefix length of a source: an IPv6 prefix's, else 128 (an address;
    IPv4 ones are kept IPv4-mapped, 128 bits)."""
    net = ipaddress.ip_network(address)
    return net.prefixlen if net.version == 6 else 128


def counters(*entries, offset_ns: int = BOOT) -> tuple[bytes, bytes]:
    """Kernel bytes, as the collector stages them, of (address, category, hits, first_us,
    last_us) entries (Unix microseconds); an address may be an IPv6 prefix (fd00:cc::/64)."""
    keys = values = b""
    for address, category, hits, first_us, last_us in entries:
        raw = packed(address)
        keys += COUNTER_KEY.pack(raw[:12], raw[12:], category, 1, prefix_len(address))
        values += COUNTER_VALUE.pack(hits, first_us * 1000 - offset_ns,
                                     last_us * 1000 - offset_ns)
    return keys, values
