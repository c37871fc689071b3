"""Parameter types: bad values are refused by click, naming the parameter."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from ccxdp.datapath.loader import check_interface_name
from ccxdp.datapath.settings import BLOCK_ACTIONS, SETTING_KEYS, SettingError, parse_action
from ccxdp.errors import CcxdpError, DatapathError, InvalidNameError
from ccxdp.notify import attribution
from ccxdp.policy.catalog import CatalogError, normalize_category
from ccxdp.policy.exempt import PrefixError, parse_prefix
from ccxdp.policy.line_exempt import LineExemptError, check_line_id
from ccxdp.policy.names import normalize
from ccxdp.policy.plan import parse_plan_prefix
from ccxdp.policy.transfer import check_zone, parse_primary


class DomainNameType(click.ParamType):
    name = "domain"

    def convert(self, value, param, ctx):
        try:
            return normalize(value)
        except InvalidNameError as e:
            self.fail(str(e), param, ctx)


class InterfaceType(click.ParamType):
    name = "interface"

    def convert(self, value, param, ctx):
        try:
            return check_interface_name(value)
        except DatapathError as e:
            self.fail(str(e), param, ctx)


class ActionType(click.ParamType):
    """A block action; ``redirect`` is RPZ's other name for ``sinkhole``."""

    name = "action"

    def convert(self, value, param, ctx):
        try:
            return parse_action(value)
        except SettingError as e:
            self.fail(str(e), param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(a) for a in BLOCK_ACTIONS if a.startswith(incomplete)]


class CategoryType(click.ParamType):
    name = "category"

    def convert(self, value, param, ctx):
        try:
            return normalize_category(value)
        except CatalogError as e:
            self.fail(str(e), param, ctx)


class PrefixType(click.ParamType):
    """An IPv4 or IPv6 source prefix (a bare address is a /32 or /128), host bits clear."""

    name = "prefix"

    def convert(self, value, param, ctx):
        try:
            return str(parse_prefix(value))
        except PrefixError as e:
            self.fail(str(e), param, ctx)


class PlanPrefixType(PrefixType):
    """A prefix of the subscriber address plan: as PrefixType, and not a /0."""

    def convert(self, value, param, ctx):
        try:
            return str(parse_plan_prefix(value))
        except PrefixError as e:
            self.fail(str(e), param, ctx)


class LineIdType(click.ParamType):
    """A subscriber line id (L-1001, a circuit id): printable, no spaces."""

    name = "line"

    def convert(self, value, param, ctx):
        try:
            return check_line_id(value)
        except LineExemptError as e:
            self.fail(str(e), param, ctx)


class AddressType(click.ParamType):
    def __init__(self, version: int):
        self.version = version
        self.name = f"ipv{version}"

    def convert(self, value, param, ctx):
        cls = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        try:
            return str(cls(value.strip()))
        except ValueError:
            self.fail(f"{value!r} is not an IPv{self.version} address", param, ctx)


class PrimaryType(click.ParamType):
    """A zone's primary server: ADDRESS[:PORT]."""

    name = "address[:port]"

    def convert(self, value, param, ctx):
        try:
            return parse_primary(value)
        except CcxdpError as e:
            self.fail(str(e), param, ctx)


class ZoneType(click.ParamType):
    name = "zone"

    def convert(self, value, param, ctx):
        try:
            return check_zone(value)
        except CcxdpError as e:
            self.fail(str(e), param, ctx)


class SettingKeyType(click.ParamType):
    name = "key"

    def convert(self, value, param, ctx):
        if value not in SETTING_KEYS:
            self.fail(f"unknown setting {value!r}; the settings are: {', '.join(SETTING_KEYS)}",
                      param, ctx)
        return value

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(k) for k in SETTING_KEYS if k.startswith(incomplete)]


DOMAIN = DomainNameType()
INTERFACE = InterfaceType()
ACTION = ActionType()
CATEGORY = CategoryType()
PREFIX = PrefixType()
PLAN_PREFIX = PlanPrefixType()
LINE_ID = LineIdType()
IPV4 = AddressType(4)
IPV6 = AddressType(6)
SETTING_KEY = SettingKeyType()
PRIMARY = PrimaryType()
ZONE = ZoneType()


# An operator's input file: existence is checked when it is read (a clear error, before
# anything is written).
INPUT = click.Path(dir_okay=False, path_type=Path)


def sessions_options(f):
    """--sessions, --leases and --line-id-from: who held an address when, for notify and
    exempt line sync alike."""
    for option in reversed((
        click.option("--sessions", "sessions", type=INPUT, multiple=True,
                     help="Sessions CSV: line_id,address_or_prefix,start,stop (repeatable)."),
        click.option("--leases", "leases", type=INPUT, multiple=True,
                     help="ISC dhcpd.leases or Kea lease CSV (repeatable; told apart by "
                          "content)."),
        click.option("--line-id-from", type=click.Choice(attribution.LINE_ID_FIELDS),
                     default=attribution.DEFAULT_LINE_ID_FIELD, show_default=True,
                     help="The lease field that names the line."),
    )):
        f = option(f)
    return f
