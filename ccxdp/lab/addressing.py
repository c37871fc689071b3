# SPDX-License-Identifier: GPL-2.0
"""The lab's address plan and its hosts' roles: every address a lab uses lies in these
networks, which nothing routes out of the lab."""

from __future__ import annotations

import ipaddress

LAB_NET_V4 = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range
LAB_NET_V6 = ipaddress.ip_network("fd00::/8")  # unique local addresses
# The roles of a lab's namespaces: the suffixes after "<id>-".
HOST_ROLES = ("res", "cli", "cl2", "snk")
SWITCH_ROLE = "sw"
ROLES = (*HOST_ROLES, SWITCH_ROLE)


def check_lab_addr(addr: str, version: int | None = None) -> str:
    """Refuse any address outside the lab ranges: the lab must never send traffic elsewhere."""
    ip = ipaddress.ip_address(addr)
    if version is not None and ip.version != version:
        raise ValueError(f"{addr} is not an IPv{version} address")
    if ip not in (LAB_NET_V4 if ip.version == 4 else LAB_NET_V6):
        raise ValueError(f"{addr} is outside the lab ranges {LAB_NET_V4} and {LAB_NET_V6}")
    return str(ip)


def fqdn(name: str) -> str:
    return name.lower() if name.endswith(".") else name.lower() + "."
