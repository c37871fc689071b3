"""The daemon's config file (TOML): read, checked whole, and turned into frozen dataclasses.

Every mistake is reported as ``FILE: KEY: what is wrong`` before anything is touched, so a
bad file never attaches, syncs or detaches anything. ``examples/ccxdp.toml`` shows every key.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ccxdp.datapath.loader import Mode, check_interface_name
from ccxdp.datapath.settings import (
    NUMBER_SETTINGS,
    SETTING_KEYS,
    SettingError,
    Settings,
    parse_action,
)
from ccxdp.errors import CcxdpError
from ccxdp.hits.fleet import check_uri, is_fleet
from ccxdp.hits.location import check_resolver
from ccxdp.notify.attribution import DEFAULT_LINE_ID_FIELD, LINE_ID_FIELDS
from ccxdp.policy.catalog import normalize_category
from ccxdp.policy.download import DEFAULT_MAX_BYTES, UrlOrigin, check_ca, check_url
from ccxdp.policy.feeds import check_feed_name
from ccxdp.policy.formats import FORMATS
from ccxdp.policy.line_exempt import (
    DEFAULT_RADACCT_LINE_ID,
    DEFAULT_RADACCT_TABLE,
    Radacct,
    check_conninfo,
    check_identifier,
)
from ccxdp.policy.plan import parse_plan_prefix
from ccxdp.policy.transfer import ZoneOrigin, check_zone, parse_primary, read_tsig

ON_STOP = ("keep", "detach")
LOG_FORMATS = ("logfmt", "json")
# "debug" adds the routine lines: each collection's start, and collections and ships that
# had nothing to move.
LOG_LEVELS = ("info", "debug")
MODES = tuple(m.value for m in Mode)
DEFAULT_FEED_REFRESH = 3600.0
DEFAULT_COLLECT_INTERVAL = 60.0
DEFAULT_SESSIONS_INTERVAL = 5.0
MAX_RETENTION_DAYS = 36500  # a century: beyond it the cut-off date does not exist


class ConfigError(CcxdpError):
    def __init__(self, path: Path, key: str | None, message: str):
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.key = key


@dataclass(frozen=True)
class Interface:
    name: str
    netns: str | None = None
    mode: str = "auto"

    @property
    def where(self) -> str:
        return f"{self.name} in netns {self.netns}" if self.netns else self.name


@dataclass(frozen=True)
class Feed:
    name: str
    path: Path | None  # None: the feed comes from `url`, or from a primary (`zone`)
    format: str = "auto"
    column: str | None = None
    action: str | None = None
    category: str | None = None
    skip_invalid: bool = False
    refresh: float = DEFAULT_FEED_REFRESH  # seconds between reads when the file is unchanged
    max_shrink: float | None = None  # the share of its names a sync may remove; None: 0.5
    match: str | None = None  # "subtree": the file's exact names with everything below
    min_confidence: int | None = None  # ThreatFox CSV: rows below it are skipped
    url: UrlOrigin | None = None  # a feed downloaded over HTTPS (policy/download.py)
    zone: ZoneOrigin | None = None  # a feed by zone transfer: refreshed on its SOA's timers


@dataclass(frozen=True)
class SessionsConfig:
    """[sessions]: where the daemon learns which line holds which address, to keep the
    exempt prefixes of opted-out lines current (policy/line_exempt.py)."""

    radius_csv: tuple[Path, ...] = ()  # line_id,address_or_prefix,start,stop; watched
    leases: tuple[Path, ...] = ()  # dhcpd.leases or Kea CSV; watched
    line_id_from: str = DEFAULT_LINE_ID_FIELD  # the lease field that names the line
    radacct: Radacct | None = None  # FreeRADIUS's accounting table, polled
    # Seconds between reads of radacct and of the opt-out list (files are looked at every
    # second).
    interval: float = DEFAULT_SESSIONS_INTERVAL


@dataclass(frozen=True)
class Config:
    path: Path
    interfaces: tuple[Interface, ...]
    settings: dict[str, Any] = field(default_factory=dict)  # only the keys the file gives
    dns_ports: tuple[int, ...] | None = None
    max_names: int | None = None
    max_sources: int | None = None
    # [filter] plan: the subscriber address plan, made exactly this at start and reload; None
    # (no key): the plan is left as 'ccxdp plan' made it. An empty array: no plan.
    plan: tuple[str, ...] | None = None
    feeds: tuple[Feed, ...] = ()
    collect_interval: float = DEFAULT_COLLECT_INTERVAL  # 0: the daemon never collects
    store: str | None = None  # None: hits.db in the state folder; a path; a PostgreSQL URI
    resolver: str | None = None  # this host's name in the fleet store; None: the host name
    # Per-address hit rows older than this many days are expired after each collection:
    # attributed ones fold into per-line totals first. 0: kept until `ccxdp expire`.
    retention_days: float = 0.0
    expire_unattributed: bool = False  # rows no line claimed go too once that old
    metrics_listen: tuple[str, int] | None = None
    notify_listen: tuple[str, int] | None = None  # [feeds_notify]: NOTIFY from primaries
    sessions: SessionsConfig | None = None  # None: line-derived prefixes are left alone
    on_stop: str = "keep"
    log_format: str = "logfmt"
    log_level: str = "info"


class _Reader:
    """Pops keys from one TOML table, checking each; leftovers are unknown keys."""

    def __init__(self, path: Path, table: dict, prefix: str):
        self.path, self.table, self.prefix = path, dict(table), prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str | None, message: str):
        raise ConfigError(self.path, self.key(name) if name else self.prefix.rstrip(".")
                          or None, message)

    def get(self, name: str, kinds: tuple[type, ...], default: Any = None,
            what: str = "") -> Any:
        if name not in self.table:
            return default
        value = self.table.pop(name)
        # bool is an int in Python, never in TOML: keep them apart.
        if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
            self.fail(name, f"{value!r} is not {what or ' or '.join(k.__name__ for k in kinds)}")
        return value

    def seconds(self, name: str, default: float, allow_zero: bool = False) -> float:
        value = self.get(name, (int, float), default, "a number of seconds")
        if not math.isfinite(value):  # TOML has nan and inf; neither is a time
            self.fail(name, f"{value} is not a finite number of seconds")
        if value < 0 or (value == 0 and not allow_zero):
            self.fail(name, f"{value} must be {'0 or more' if allow_zero else 'more than 0'}")
        return float(value)

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, (str,), default, "a string")
        if value not in choices:
            self.fail(name, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def convert(self, name: str, value: Any, convert: Callable[[Any], Any] | None) -> Any:
        """``convert(value)`` (None passes through): the owner of a rule checks it, and its
        message is reported under this key."""
        if value is None or convert is None:
            return value
        try:
            return convert(value)
        except CcxdpError as e:
            self.fail(name, str(e))

    def done(self) -> None:
        for name in self.table:
            self.fail(name, "unknown key")


def load_config(path: Path) -> Config:
    """Read and check the whole file; ConfigError names the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except OSError as e:
        raise ConfigError(path, None, e.strerror or str(e)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, f"not UTF-8 text: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, None, f"not valid TOML: {e}") from None
    return parse_config(path, data)


def parse_config(path: Path, data: dict) -> Config:
    top = _Reader(path, data, "")
    on_stop = top.choice("on_stop", ON_STOP, "keep")
    log_format = top.choice("log_format", LOG_FORMATS, "logfmt")
    log_level = top.choice("log_level", LOG_LEVELS, "info")
    filt = _Reader(path, top.get("filter", (dict,), {}, "a table"), "filter.")
    interfaces_raw = top.get("interfaces", (list,), [], "an array of tables ([[interfaces]])")
    feeds_raw = top.get("feeds", (list,), [], "an array of tables ([[feeds]])")
    collect = _Reader(path, top.get("collect", (dict,), {}, "a table"), "collect.")
    metrics = _Reader(path, top.get("metrics", (dict,), {}, "a table"), "metrics.")
    notify = _Reader(path, top.get("feeds_notify", (dict,), {}, "a table"), "feeds_notify.")
    sessions_raw = top.get("sessions", (dict,), None, "a table")
    top.done()
    # Checked in the file's order of tables, so that the first mistake is the one reported.
    default_mode, ports, limits, settings, plan = _filter(filt)
    interfaces = _interfaces(path, interfaces_raw, default_mode)
    feeds = _feeds(path, feeds_raw)
    interval = collect.seconds("interval", DEFAULT_COLLECT_INTERVAL, allow_zero=True)
    store = collect.convert("store", collect.get("store", (str,), None, "a string"),
                            _check_store)
    resolver = collect.convert("resolver", collect.get("resolver", (str,), None, "a string"),
                               check_resolver)
    retention = collect.get("retention_days", (int, float), 0, "a number of days")
    if not math.isfinite(retention) or not 0 <= retention <= MAX_RETENTION_DAYS:
        collect.fail("retention_days",
                     f"{retention} must be 0 (keep) or more, up to {MAX_RETENTION_DAYS}")
    expire_unattributed = collect.get("expire_unattributed", (bool,), False, "true or false")
    collect.done()
    listen = metrics.get("listen", (str,), None, 'a string ("ADDRESS:PORT")')
    metrics.done()
    notify_listen = notify.get("listen", (str,), None, 'a string ("ADDRESS:PORT")')
    notify.done()
    sessions = _sessions(path, sessions_raw) if sessions_raw is not None else None
    return Config(
        path=path,
        interfaces=interfaces,
        settings=settings,
        dns_ports=ports,
        max_names=limits["max_names"],
        max_sources=limits["max_sources"],
        plan=plan,
        feeds=feeds,
        collect_interval=interval,
        store=store or None,
        resolver=resolver,
        retention_days=float(retention),
        expire_unattributed=expire_unattributed,
        metrics_listen=_listen(path, listen) if listen is not None else None,
        notify_listen=(_listen(path, notify_listen, "feeds_notify.listen")
                       if notify_listen is not None else None),
        sessions=sessions,
        on_stop=on_stop,
        log_format=log_format,
        log_level=log_level,
    )


def _filter(filt: _Reader) -> tuple[str, tuple[int, ...] | None, dict, dict[str, Any],
                                   tuple[str, ...] | None]:
    """[filter]: the default XDP mode, the DNS ports, the map sizes, the settings and the
    address plan."""
    default_mode = filt.choice("mode", MODES, "auto")
    ports = filt.get("dns_ports", (list,), None, "an array of port numbers")
    if ports is not None:
        if not ports:
            filt.fail("dns_ports", "give at least one port")
        for p in ports:
            if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
                filt.fail("dns_ports", f"{p!r} is not a port number (1-65535)")
        if len(set(ports)) != len(ports):
            filt.fail("dns_ports", "a port is given twice")
        ports = tuple(ports)
    limits = {}
    for name in ("max_names", "max_sources"):
        value = filt.get(name, (int,), None, "a whole number")
        if value is not None and not 1 <= value <= 1 << 28:
            filt.fail(name, f"{value} is outside 1..{1 << 28}")
        limits[name] = value
    settings: dict[str, Any] = {}
    for name in SETTING_KEYS:
        number = name in NUMBER_SETTINGS
        value = filt.get(name, (int,) if number else (str,), None,
                         "a whole number" if number else "a string")  # fmt: skip
        if value is None:
            continue
        settings[name] = filt.convert(name, value, parse_action if name == "default_action"
                                      else None)  # fmt: skip
    try:
        Settings(**settings)
    except SettingError as e:  # its message starts with the key
        raise ConfigError(filt.path, None, f"filter.{e}") from None
    plan = filt.get("plan", (list,), None, "an array of prefixes")
    if plan is not None:
        prefixes = []
        for value in plan:
            if not isinstance(value, str):
                filt.fail("plan", f"{value!r} is not a prefix (a string: \"198.18.0.0/15\")")
            prefix = str(filt.convert("plan", value, parse_plan_prefix))
            if prefix in prefixes:
                filt.fail("plan", f"{prefix} is given twice")
            prefixes.append(prefix)
        plan = tuple(prefixes)
    filt.done()
    return default_mode, ports, limits, settings, plan


def _interfaces(path: Path, tables: list, default_mode: str) -> tuple[Interface, ...]:
    """[[interfaces]]: each once, by name and namespace."""
    interfaces: list[Interface] = []
    for i, raw in enumerate(tables):
        r = _Reader(path, raw if isinstance(raw, dict) else {}, f"interfaces[{i}].")
        if not isinstance(raw, dict):
            r.fail(None, f"{raw!r} is not a table (write [[interfaces]] with name = ...)")
        name = r.get("name", (str,), None, "a string")
        if name is None:
            r.fail("name", "missing (the interface to attach to)")
        r.convert("name", name, check_interface_name)
        netns = r.get("netns", (str,), None, "a string")
        mode = r.choice("mode", MODES, default_mode)
        r.done()
        iface = Interface(name, netns, mode)
        if any((x.name, x.netns) == (name, netns) for x in interfaces):
            r.fail("name", f"{iface.where} is listed twice")
        interfaces.append(iface)
    return tuple(interfaces)


def _feeds(path: Path, tables: list) -> tuple[Feed, ...]:
    """[[feeds]]: the options of 'ccxdp feed add', checked by the rules the catalog applies."""
    feeds: list[Feed] = []
    for i, raw in enumerate(tables):
        r = _Reader(path, raw if isinstance(raw, dict) else {}, f"feeds[{i}].")
        if not isinstance(raw, dict):
            r.fail(None, f"{raw!r} is not a table (write [[feeds]] with name = ...)")
        name = r.get("name", (str,), None, "a string")
        if name is None:
            r.fail("name", "missing")
        name = r.convert("name", name, check_feed_name)
        if any(f.name == name for f in feeds):
            r.fail("name", f"feed {name!r} is listed twice")
        if "primary" not in r.table and ({"zone", "tsig"} & set(r.table)):
            r.fail("primary", "missing (the server to transfer the zone from)")
        if "primary" in r.table:
            if "path" in r.table or "url" in r.table:
                r.fail("primary", "give path (a file), url or primary (a zone transfer): one "
                                  "of them, not both")
            zone = _zone_origin(r)
            if {"format", "column", "refresh"} & set(r.table):
                key = min({"format", "column", "refresh"} & set(r.table))
                r.fail(key, "not for a zone feed: its format is RPZ, and its SOA's refresh, "
                       "retry and expire (and NOTIFY) say when it is transferred")
            file_path, url = None, None
        else:
            zone = None
            file_path, url = _feed_source(r)
        fmt = r.choice("format", ("auto", *FORMATS), "auto")
        column = r.get("column", (str,), None, "a string")
        action = r.convert("action", r.get("action", (str,), None, "a string"), parse_action)
        category = r.convert("category", r.get("category", (str,), None, "a string"),
                             normalize_category)  # fmt: skip
        skip = r.get("skip_invalid", (bool,), False, "true or false")
        refresh = r.seconds("refresh", DEFAULT_FEED_REFRESH)
        match = r.get("match", (str,), None, "a string")
        if match not in (None, "subtree"):
            r.fail("match", f"{match!r}: the only choice is \"subtree\" (leave it out for "
                            f"the format's own)")
        confidence = r.get("min_confidence", (int,), None, "a number from 0 to 100")
        if confidence is not None and not 0 <= confidence <= 100:
            r.fail("min_confidence", f"{confidence} is not a number from 0 to 100")
        shrink = r.get("max_shrink", (int,), None, "a percentage (0 to 100)")
        if shrink is not None and not 0 <= shrink <= 100:
            r.fail("max_shrink", f"{shrink} is not a percentage from 0 to 100")
        r.done()
        feeds.append(Feed(name, file_path, fmt, column, action, category, skip, refresh,
                          shrink / 100 if shrink is not None else None, match, confidence,
                          url, zone))
    return tuple(feeds)


def _feed_source(r: _Reader) -> tuple[Path | None, UrlOrigin | None]:
    """Where a [[feeds]] table's feed comes from: `path`, or `url` with its options."""
    file = r.get("path", (str,), None, "a string")
    url = r.get("url", (str,), None, "a string")
    url_keys = [k for k in ("ca", "max_bytes", "insecure_http") if k in r.table]
    if file is None and url is None:
        r.fail("path", "missing (the feed's file; or url, where to download it)")
    if file is not None and url is not None:
        r.fail("url", "give path or url, not both")
    if file is not None:
        if url_keys:
            r.fail(url_keys[0], "goes with url, not path")
        file_path = Path(file)
        if not file_path.is_absolute():
            file_path = r.path.parent / file_path
        if not file_path.is_file():
            r.fail("path", f"{file_path}: no such file")
        return file_path.resolve(), None
    insecure = r.get("insecure_http", (bool,), False, "true or false")
    r.convert("url", url, partial(check_url, insecure_http=insecure))
    ca = r.get("ca", (str,), None, "a string (a PEM file)")
    if ca is not None:
        ca_path = Path(ca) if Path(ca).is_absolute() else r.path.parent / ca
        ca = str(r.convert("ca", ca_path, check_ca))
    max_bytes = r.get("max_bytes", (int,), DEFAULT_MAX_BYTES, "a whole number of bytes")
    if max_bytes < 1:
        r.fail("max_bytes", f"{max_bytes} must be 1 or more")
    return None, UrlOrigin(url, ca, max_bytes, insecure)


def _zone_origin(r: _Reader) -> ZoneOrigin:
    """A feed without a path: primary and zone (and tsig, a key file), or a mistake."""
    if "primary" not in r.table:
        if "zone" in r.table or "tsig" in r.table:
            r.fail("primary", "missing (the server to transfer the zone from)")
        r.fail("path", "missing (the feed's file; or primary and zone, for a zone transfer)")
    primary = r.convert("primary", r.get("primary", (str,), None, 'a string '
                                         '("ADDRESS[:PORT]")'), parse_primary)
    zone = r.get("zone", (str,), None, "a string")
    if zone is None:
        r.fail("zone", "missing (the RPZ zone to transfer from the primary)")
    zone = r.convert("zone", zone, check_zone)
    tsig = r.get("tsig", (str,), None, "a string (a key file)")
    if tsig is not None:
        key_path = Path(tsig) if Path(tsig).is_absolute() else r.path.parent / tsig
        tsig = r.convert("tsig", key_path, read_tsig).path
    return ZoneOrigin(primary, zone, tsig)


def _paths(r: _Reader, name: str) -> tuple[Path, ...]:
    """An array of file paths, relative ones from the config file's folder. They need not
    exist yet: a sessions export may appear after the daemon started (it is read when it
    does)."""
    values = r.get(name, (list,), [], "an array of file paths")
    out = []
    for v in values:
        if not isinstance(v, str) or not v:
            r.fail(name, f"{v!r} is not a file path")
        p = Path(v)
        out.append(p if p.is_absolute() else r.path.parent / p)
    if len(set(out)) != len(out):
        r.fail(name, "a file is given twice")
    return tuple(out)


def _sessions(path: Path, table: dict) -> SessionsConfig:
    """[sessions] and [sessions.radacct]."""
    r = _Reader(path, table, "sessions.")
    radius_csv = _paths(r, "radius_csv")
    leases = _paths(r, "leases")
    line_id_from = r.choice("line_id_from", LINE_ID_FIELDS, DEFAULT_LINE_ID_FIELD)
    interval = r.seconds("interval", DEFAULT_SESSIONS_INTERVAL)
    raw = r.get("radacct", (dict,), None, "a table ([sessions.radacct])")
    r.done()
    radacct = None
    if raw is not None:
        db = _Reader(path, raw, "sessions.radacct.")
        uri = db.get("uri", (str,), None, "a string")
        if uri is None:
            db.fail("uri", "missing (a libpq connection URI, without a password)")
        db.convert("uri", uri, check_conninfo)
        line_id = db.convert("line_id", db.get("line_id", (str,), DEFAULT_RADACCT_LINE_ID,
                                               "a string"), partial(check_identifier, "column"))
        table_name = db.convert("table", db.get("table", (str,), DEFAULT_RADACCT_TABLE,
                                                "a string"), partial(check_identifier, "table"))
        db.done()
        radacct = Radacct(uri, line_id, table_name)
    if not (radius_csv or leases or radacct):
        r.fail(None, "give at least one sessions source: radius_csv, leases or "
                     "[sessions.radacct]")
    return SessionsConfig(radius_csv, leases, line_id_from, radacct, interval)


def _listen(path: Path, text: str, key: str = "metrics.listen") -> tuple[str, int]:
    """"198.18.0.10:9108" or "[fd00::10]:9108" -> (address, port)."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not m:
        raise ConfigError(path, key, f"{text!r} is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)")
    host, port = (m[1], m[2]) if m[1] else (m[3], m[4])
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(path, key, f"{host!r} is not an IP address") from None
    if not 1 <= int(port) <= 65535:
        raise ConfigError(path, key, f"port {port} is outside 1..65535")
    return host, int(port)


def _check_store(spec: str) -> str:
    if is_fleet(spec):
        check_uri(spec)
    return spec
