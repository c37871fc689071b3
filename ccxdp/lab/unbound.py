# SPDX-License-Identifier: GPL-2.0
"""The resolver of the lab: unbound's configuration, with the lab's local zones."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ccxdp.lab.addressing import LAB_NET_V4, LAB_NET_V6

UNBOUND_CONTROL_PORT = 8953  # fixed: each resolver namespace has its own isolated loopback


@dataclass(frozen=True)
class Zone:
    """One unbound local-zone and its local-data records (unbound's record syntax)."""

    name: str
    records: tuple[str, ...] = ()
    type: str = "static"  # static: names in the zone without data get NXDOMAIN/NODATA


DEFAULT_ZONES: tuple[Zone, ...] = (
    Zone(
        "lab.example.",
        (
            "www.lab.example. A 198.18.1.10",
            "www.lab.example. AAAA fd00:cc:1::10",
            "mail.lab.example. A 198.18.1.11",
            "a.b.c.d.lab.example. A 198.18.1.12",
            "a.b.c.d.lab.example. AAAA fd00:cc:1::12",
            # Names the demo's clean client looks up.
            "news.lab.example. A 198.18.1.13",
            "news.lab.example. AAAA fd00:cc:1::13",
            "shop.lab.example. A 198.18.1.14",
        ),
    ),
    # Names the filter tests block: a zone apex, a deep name under it, and a sibling zone.
    Zone("evil.test.", ("evil.test. A 198.18.2.1", "x.y.evil.test. A 198.18.2.2")),
    Zone("bad.test.", ("bad.test. A 198.18.3.1", "www.bad.test. A 198.18.3.2")),
)


QUERY_LOG = re.compile(
    r"^\[\d+\] unbound\[\d+:\d+\] info: (?P<src>\S+) (?P<name>\S+) (?P<type>\S+) (?P<cls>\S+)$"
)


def unbound_config(
    workdir: Path,
    addresses: Sequence[str],
    zones: Sequence[Zone],
    root_zone_type: str = "refuse",
    extra: Sequence[str] = (),
    control: str = "127.0.0.1",
) -> str:
    """The unbound.conf of a lab resolver: local zones only, every query logged, exact
    cumulative statistics, remote control on `control` (an address, or a unix socket path)."""
    d = workdir
    lines = [
        "server:",
        f'    directory: "{d}"',
        '    username: ""',
        '    chroot: ""',
        f'    pidfile: "{d}/unbound.pid"',
        "    use-syslog: no",
        f'    logfile: "{d}/unbound.log"',
        "    verbosity: 1",
        # Each query is logged (and flushed) before it is answered: unbound_queries_for().
        "    log-queries: yes",
        "    extended-statistics: yes",
        "    statistics-cumulative: yes",
        "    statistics-interval: 0",
        # One thread: queries are handled in arrival order, and counts are never split.
        "    num-threads: 1",
        "    so-reuseport: no",
        "    port: 53",
        *(f"    interface: {a}" for a in addresses),
        "    do-ip4: yes",
        "    do-ip6: yes",
        "    do-udp: yes",
        "    do-tcp: yes",
        f"    access-control: {LAB_NET_V4} allow",
        f"    access-control: {LAB_NET_V6} allow",
        # No validator (so no trust anchor to fetch), no forwarders, no prefetch.
        '    module-config: "iterator"',
        "    do-not-query-localhost: yes",
        "    prefetch: no",
        f'    local-zone: "." {root_zone_type}',
    ]
    for zone in zones:
        lines.append(f'    local-zone: "{zone.name}" {zone.type}')
        for record in zone.records:
            quote = "'" if '"' in record else '"'
            lines.append(f"    local-data: {quote}{record}{quote}")
    lines += [f"    {line}" for line in extra]
    lines += [
        "remote-control:",
        "    control-enable: yes",
        f"    control-interface: {control}",
        *([] if control.startswith("/") else [f"    control-port: {UNBOUND_CONTROL_PORT}"]),
        "    control-use-cert: no",
    ]
    return "\n".join(lines) + "\n"
