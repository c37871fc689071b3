"""Run-time settings of the data path (the ccxdp_config map): the default action, the
sinkhole addresses, the TTLs of synthesized answers, what becomes of frames that cannot be
judged. Changed without reloading the program."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
from dataclasses import asdict, dataclass, fields, replace

from ccxdp.datapath import shared
from ccxdp.errors import CcxdpError


class SettingError(CcxdpError):
    pass


# What users type for actions; "redirect" is RPZ's other name for a sinkhole.
ACTION_NAMES = {
    "drop": shared.Action.DROP,
    "nxdomain": shared.Action.NXDOMAIN,
    "nodata": shared.Action.NODATA,
    "sinkhole": shared.Action.SINKHOLE,
    "redirect": shared.Action.SINKHOLE,
    "tc": shared.Action.TC,
    "refused": shared.Action.REFUSED,
    "monitor": shared.Action.MONITOR,
}
BLOCK_ACTIONS = sorted(ACTION_NAMES)  # every word accepted, as error messages list them
# The canonical names, in the kernel's order: what the catalog stores and output shows.
ACTIONS = tuple(a.name.lower() for a in shared.Action
                if a not in (shared.Action.DEFAULT, shared.Action.ALLOW))


def parse_action(text: str) -> str:
    """An action as a user, a config file or a feed writes it (any case; "redirect" is RPZ's
    other name for "sinkhole") -> its canonical name. The one reader of that vocabulary."""
    code = ACTION_NAMES.get(text.strip().lower())
    if code is None:
        raise SettingError(f"{text!r} is not an action ({', '.join(BLOCK_ACTIONS)})")
    return shared.Action(code).name.lower()


# What each setting does, for 'ccxdp config show'.
DESCRIPTIONS = {
    "default_action": "action of block entries listed without --action",
    "sinkhole_v4": "address in sinkhole answers to A queries",
    "sinkhole_v6": "address in sinkhole answers to AAAA queries",
    "answer_ttl": "TTL of sinkhole answers (seconds)",
    "negative_ttl": "TTL and SOA MINIMUM of NXDOMAIN/NODATA answers (seconds)",
    "edns_udp_size": "UDP payload size in the OPT record of answers",
    "source_prefix_v6": "IPv6 hits are counted per prefix of this length (the subscribers' "
                        "delegation; 128: per address)",
    "fragments": "first IP fragments to a DNS port: drop or pass (counted either way)",
    "unparsed": "frames with headers deeper than parsed: drop or pass (counted either way)",
}

# What `fragments` and `unparsed` may be, and the bit of Config.pass_unjudged each sets.
UNJUDGED_CHOICES = ("drop", "pass")
_PASS_BITS = {"fragments": shared.PASS_FRAGMENTS, "unparsed": shared.PASS_UNPARSED}


def action_name(action: int) -> str:
    if action == shared.Action.DEFAULT:
        return "default"
    return shared.Action(action).name.lower()


@dataclass(frozen=True)
class Settings:
    default_action: str = "drop"
    sinkhole_v4: str = "0.0.0.0"
    sinkhole_v6: str = "::"
    answer_ttl: int = 300  # seconds a client may cache a sinkhole address
    negative_ttl: int = 300  # seconds caches keep NXDOMAIN/NODATA (RFC 2308 SOA MINIMUM)
    edns_udp_size: int = 1232  # the DNS flag day 2020 value: no fragmentation
    # A line's privacy addresses rotate within its /64 (RFC 8981): one source per /64, so
    # one line is one entry. ISPs that delegate /56 or /48 say so here.
    source_prefix_v6: int = 64
    # A DNS query never needs fragments or more headers than the program walks; what brings
    # them to a DNS port is a way around the filter, so the defaults close it (docs/datapath.md).
    fragments: str = "drop"
    unparsed: str = "drop"

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name))

    def to_kernel(self) -> shared.Config:
        c = shared.Config()
        c.default_action = ACTION_NAMES[self.default_action]
        c.source_prefix_v6 = self.source_prefix_v6
        c.pass_unjudged = sum(bit for key, bit in _PASS_BITS.items()
                              if getattr(self, key) == "pass")
        c.edns_udp_size = socket.htons(self.edns_udp_size)
        c.answer_ttl = socket.htonl(self.answer_ttl)
        c.negative_ttl = socket.htonl(self.negative_ttl)
        ct.memmove(c.sinkhole_v4, ipaddress.IPv4Address(self.sinkhole_v4).packed, 4)
        ct.memmove(c.sinkhole_v6, ipaddress.IPv6Address(self.sinkhole_v6).packed, 16)
        return c

    @classmethod
    def from_kernel(cls, c: shared.Config) -> Settings:
        try:
            action = shared.Action(c.default_action)
        except ValueError:
            raise SettingError(
                f"the kernel's config map holds unknown action code {c.default_action}"
            ) from None
        return cls(
            default_action=action.name.lower() if action != shared.Action.DEFAULT else "drop",
            sinkhole_v4=str(ipaddress.IPv4Address(bytes(c.sinkhole_v4))),
            sinkhole_v6=str(ipaddress.IPv6Address(bytes(c.sinkhole_v6))),
            answer_ttl=socket.ntohl(c.answer_ttl),
            negative_ttl=socket.ntohl(c.negative_ttl),
            edns_udp_size=socket.ntohs(c.edns_udp_size),
            source_prefix_v6=c.source_prefix_v6 or 128,
            **{key: "pass" if c.pass_unjudged & bit else "drop"
               for key, bit in _PASS_BITS.items()},
        )

    def with_value(self, key: str, text: str) -> Settings:
        """A copy with one setting changed from its text form; errors name the key."""
        if key not in SETTING_KEYS:
            raise SettingError(
                f"unknown setting {key!r}; the settings are: {', '.join(SETTING_KEYS)}"
            )
        current = getattr(self, key)
        if isinstance(current, int):
            try:
                value: object = int(text)
            except ValueError:
                raise SettingError(f"{key}: {text!r} is not a whole number") from None
        else:
            value = text.strip().lower()
            if key == "default_action" and value in ACTION_NAMES:
                value = parse_action(value)
        return replace(self, **{key: value})

    def as_dict(self) -> dict:
        return asdict(self)


SETTING_KEYS = tuple(f.name for f in fields(Settings))
# The settings given as whole numbers (the others are text: an action, an address).
NUMBER_SETTINGS = frozenset(f.name for f in fields(Settings) if f.type == "int")

_TTL_MAX = 2**31 - 1  # RFC 2181 8
# Shorter than an RIR's smallest allocation to an ISP would count whole ISPs as one source.
SOURCE_PREFIX_V6_MIN = 32


def _check(key: str, value: object) -> None:
    if key == "default_action":
        if value not in ACTION_NAMES:
            raise SettingError(
                f"default_action: {value!r} is not an action ({', '.join(BLOCK_ACTIONS)})"
            )
    elif key == "sinkhole_v4":
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise SettingError(f"sinkhole_v4: {value!r} is not an IPv4 address") from None
    elif key == "sinkhole_v6":
        try:
            address = ipaddress.IPv6Address(value)
        except ValueError:
            raise SettingError(f"sinkhole_v6: {value!r} is not an IPv6 address") from None
        if address.ipv4_mapped is not None:
            # An AAAA answer with ::ffff:a.b.c.d sends clients nowhere useful on IPv6.
            raise SettingError(f"sinkhole_v6: {value!r} is an IPv4-mapped address: give "
                               f"{address.ipv4_mapped} as sinkhole_v4 and a real IPv6 "
                               f"address here")
    elif key in ("answer_ttl", "negative_ttl"):
        if not 0 <= value <= _TTL_MAX:
            raise SettingError(f"{key}: {value} is outside 0..{_TTL_MAX}")
    elif key in _PASS_BITS:
        if value not in UNJUDGED_CHOICES:
            raise SettingError(f"{key}: {value!r} is not one of {', '.join(UNJUDGED_CHOICES)}")
    elif key == "edns_udp_size":
        if not 512 <= value <= 65535:
            raise SettingError(f"edns_udp_size: {value} is outside 512..65535")
    elif key == "source_prefix_v6":
        if not SOURCE_PREFIX_V6_MIN <= value <= 128:
            raise SettingError(
                f"source_prefix_v6: {value} is outside {SOURCE_PREFIX_V6_MIN}..128 (a "
                f"delegation is a /48 to /64; 128 counts each address)"
            )
