"""``ccxdp run``: the long-running control plane, driven by a config file (config.py).

It attaches the configured interfaces (adopting the pinned program and maps that are there:
no gap in filtering, no reset of counters), syncs feeds when their file changes or their
refresh interval passes, collects the per-source hits on an interval, serves metrics, and
follows the sessions of opted-out lines (``[sessions]``) to keep their exempt prefixes
current, logs one structured line per event on stderr. SIGHUP reads the file again and applies the
difference; SIGTERM (or SIGINT) stops it, leaving the filter attached unless
``on_stop = "detach"``: filtering never depends on the daemon.

The datapath's lock is taken for each operation only (one sync, one collection, one attach),
never for the daemon's life, so CLI calls keep working beside it. A kill at any point leaves
nothing half done: feeds and collections are transactions of their own (feeds.py,
collector.py), and the next start adopts what is pinned.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import signal
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from ccxdp.datapath import bulk
from ccxdp.datapath.loader import Datapath, Limits, Mode, check_root
from ccxdp.errors import CcxdpError
from ccxdp.hits.location import ShipFailed, StoreLocation, collect, default_resolver, ship
from ccxdp.notify.attribution import Session, Sessions
from ccxdp.ops.attach import apply_settings, attach
from ccxdp.ops.daemon_config import (
    Config,
    ConfigError,
    Feed,
    Interface,
    SessionsConfig,
    load_config,
)
from ccxdp.ops.metrics import DaemonState, FeedState, MetricsServer, make_registry
from ccxdp.policy import plan, transfer
from ccxdp.policy.catalog import Catalog, normalize_category
from ccxdp.policy.download import add_url_feed, redact, retry_delay, sync_url_feed
from ccxdp.policy.exempt import set_line_prefixes
from ccxdp.policy.feeds import FeedError, add_feed, feed_counts, remove_feed, sync_feed
from ccxdp.policy.line_exempt import current_prefixes, read_file, read_radacct
from ccxdp.policy.lists import canonical_action
from ccxdp.utc import utc_now_text, utc_text

POLL = 1.0  # seconds between looks at the feed files
# The catalog's meta key naming the feeds the daemon's config gave (a JSON list): what a
# start compares the config with, as a reload compares it with the config before, so that a
# feed taken out of the file goes either way. Feeds added with 'ccxdp feed add' are not in
# it and stay.
CONFIG_FEEDS_KEY = "daemon_config_feeds"


class DaemonError(CcxdpError):
    pass


class Log:
    """One line per event: logfmt (``key=value``) or JSON, with a time and a level first.
    journald keeps stderr lines as they are."""

    def __init__(self, fmt: str = "logfmt", out: TextIO | None = None, level: str = "info"):
        self.fmt = fmt
        self.out = out or sys.stderr
        self.level = level  # "debug" writes debug lines too; "info" leaves them out

    def __call__(self, event: str, level: str = "info", **fields: object) -> None:
        if level == "debug" and self.level != "debug":
            return
        record = {"time": utc_now_text(), "level": level,
                  "event": event}
        record.update({k: v for k, v in fields.items() if v is not None})
        if self.fmt == "json":
            line = json.dumps(record, default=str)
        else:
            line = " ".join(f"{k}={_logfmt(v)}" for k, v in record.items())
        self.out.write(line + "\n")
        self.out.flush()


BAD_LINES_LOGGED = 5  # of a refused feed's bad lines, in its log line (feed add lists all)


def _logfmt(value: object) -> str:
    if isinstance(value, float):
        value = f"{value:.3f}"
    text = str(value)
    if not text or any(c in text for c in ' ="\n\t\\'):
        return json.dumps(text)
    return text


def check_interfaces(config: Config) -> None:
    """Every configured interface exists (and its namespace): otherwise ConfigError, before
    anything is attached."""
    from pyroute2 import IPRoute

    for i, iface in enumerate(config.interfaces):
        key = f"interfaces[{i}]"
        if iface.netns is not None and not Path(f"/run/netns/{iface.netns}").exists():
            raise ConfigError(config.path, f"{key}.netns",
                              f"no network namespace {iface.netns!r} (see 'ip netns list')")
        with IPRoute(netns=iface.netns) as ipr:
            if not ipr.link_lookup(ifname=iface.name):
                raise ConfigError(config.path, f"{key}.name", f"no interface {iface.where}")


def check_listen_addresses(config: Config) -> None:
    """Every address the config listens on (metrics, NOTIFY) is one this host has, in the
    daemon's namespace: otherwise ConfigError, before anything is attached. Only the
    address is tried (port 0): the port may be the running daemon's own."""
    import socket

    for key, where in (("metrics.listen", config.metrics_listen),
                       ("feeds_notify.listen", config.notify_listen)):
        if where is None:
            continue
        address = where[0]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((address, 0))
            except OSError as e:
                raise ConfigError(config.path, key, f"this host has no address {address} "
                                  f"({e.strerror})") from None


class Daemon:
    def __init__(self, config_path: Path, pin_dir: Path, state_dir: Path,
                 log_out: TextIO | None = None):
        self.config_path = Path(config_path)
        self.dp = Datapath(pin_dir, state_dir)
        self.state = DaemonState()
        self._expired_for: tuple | None = None  # the hour and retention last expired for
        self.log = Log(out=log_out)
        bulk.report = lambda message: self.log("bulk_helper", level="warning", error=message)
        self.config: Config | None = None
        self.metrics: MetricsServer | None = None
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self._next_sync: dict[str, float] = {}
        self._failures: dict[str, int] = {}  # failed syncs in a row, per feed: the backoff
        self._file_stat: dict[str, tuple | None] = {}
        self._next_collect: float | None = None
        self._pid_fd: int | None = None
        # Sessions of opted-out lines: each source's last good read (a bad read keeps it).
        self._session_files: dict[Path, tuple[tuple | None, list[Session]]] = {}
        self._radacct_sessions: list[Session] = []
        self._sessions: Sessions | None = None  # built from the above; None: build again
        self._opted_out: set[str] | None = None  # None: the store was never read
        self._next_sessions_poll = 0.0
        self._line_prefixes: dict[str, str] | None = None  # as last applied
        self._sessions_errors: dict[str, str] = {}  # per step: logged once, not every second
        # NOTIFY: the listener's thread queues what it answered; the loop logs and acts.
        self._notify: transfer.NotifyListener | None = None
        self._notices: queue.SimpleQueue[transfer.NotifyEvent] = queue.SimpleQueue()
        self._watched: list[transfer.Watched] = []
        self._tsig_warned: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Check the config whole, then apply it. Raises ConfigError with nothing changed."""
        config = load_config(self.config_path)
        check_root()
        check_interfaces(config)
        check_listen_addresses(config)
        self._claim_state_dir()
        self.log.fmt, self.log.level = config.log_format, config.log_level
        self.log("start", config=str(config.path), pid=os.getpid(), pin_dir=str(self.dp.pin_dir),
                 state_dir=str(self.dp.state_dir))
        self.config = config
        for iface in config.interfaces:
            self._attach(iface)
        self._apply_filter(config)
        self._remove_feeds(config)
        for feed in config.feeds:
            self._ensure_feed(feed)
        self._remember_feeds(config)
        self._start_metrics(config)
        self._start_notify(config)
        self._schedule_collect(config)
        self._follow_sessions()

    def _claim_state_dir(self) -> None:
        """One daemon per state folder: a lock of its own (never the datapath's, which is
        taken per operation), held while the process lives and released by the kernel
        however it ends."""
        state = self.dp.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state / "daemon.pid", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DaemonError(
                f"another 'ccxdp run' (pid {other}) uses the state folder {state}: stop it "
                f"first, or send it SIGHUP to reload its config"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._pid_fd = fd

    def run(self) -> None:
        """start(), then serve until SIGTERM/SIGINT."""
        for sig, handler in ((signal.SIGHUP, self._on_hup), (signal.SIGTERM, self._on_term),
                             (signal.SIGINT, self._on_term)):
            signal.signal(sig, handler)
        self.start()
        self.log("ready")
        try:
            while not self._stop:
                if self._reload:
                    self._reload = False
                    self.reload()
                self.tick()
                self._wake.wait(self._timeout())
                self._wake.clear()
        finally:
            self.stop()

    def _on_hup(self, signum, frame) -> None:
        self._reload = True
        self._wake.set()

    def _on_term(self, signum, frame) -> None:
        self._stop = True
        self._wake.set()

    def stop(self) -> None:
        config = self.config
        if config is None:
            return
        if config.collect_interval > 0:
            self.collect()  # the hits counted so far reach the store before we go
        if config.on_stop == "detach":
            for iface in config.interfaces:
                self._detach(iface)
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        if self._notify is not None:
            self._notify.stop()
            self._notify = None
        self.log("stop", on_stop=config.on_stop)
        self.config = None
        if self._pid_fd is not None:
            os.close(self._pid_fd)  # releases the claim
            self._pid_fd = None

    # -- the schedule -------------------------------------------------------------------
    def _timeout(self) -> float:
        now = time.monotonic()
        due = [now + POLL, *self._next_sync.values()]
        if self._next_collect is not None:
            due.append(self._next_collect)
        return max(0.0, min(due) - now)

    def tick(self) -> None:
        self._notified()
        now = time.monotonic()
        for feed in self.config.feeds:
            if feed.zone is not None:  # on the SOA's timers (and NOTIFY)
                if now >= self._next_sync.get(feed.name, 0):
                    self._sync(feed, "refresh")
                continue
            stat = _file_stat(feed.path)
            if now >= self._next_sync.get(feed.name, 0) or stat != self._file_stat.get(feed.name):
                self._sync(feed, "changed" if stat != self._file_stat.get(feed.name)
                           else "retry" if self._failures.get(feed.name) else "interval")
        self._follow_sessions()
        if self._next_collect is not None and now >= self._next_collect:
            self.collect()
            self._next_collect = time.monotonic() + self.config.collect_interval

    def _schedule_collect(self, config: Config) -> None:
        if config.collect_interval <= 0:
            self._next_collect = None
        else:
            self._next_collect = time.monotonic() + config.collect_interval

    # -- attachments and settings ---------------------------------------------------------
    def _limits(self) -> Limits:
        c = self.config
        return Limits(c.max_names or Limits.max_names, c.max_sources or Limits.max_sources)

    def _attach(self, iface: Interface) -> None:
        config = self.config
        with self.dp, Catalog(self.dp.catalog_path) as catalog:
            before = {(a.ifname, a.netns): a.prog_id for a in self.dp.attachments()}
            self._apply_plan(catalog, config)
            a = attach(self.dp, catalog, iface.name, Mode(iface.mode), netns=iface.netns,
                       limits=self._limits(), dns_ports=config.dns_ports,
                       settings=config.settings)  # fmt: skip
        adopted = before.get((iface.name, iface.netns)) == a.prog_id
        self.log("adopt" if adopted else "attach", interface=iface.name, netns=iface.netns,
                 mode=str(a.mode), prog_id=a.prog_id)

    def _detach(self, iface: Interface) -> None:
        try:
            with self.dp:
                self.dp.detach(iface.name, iface.netns)
            self.log("detach", interface=iface.name, netns=iface.netns)
        except (CcxdpError, OSError) as e:
            self.log("detach", level="error", interface=iface.name, netns=iface.netns,
                     error=str(e))

    def _apply_plan(self, catalog: Catalog, config: Config) -> None:
        """The config's address plan, when it gives one, into the catalog (and the kernel
        where the program is loaded)."""
        if config.plan is None:
            return
        changes = [c for c in plan.set_prefixes(self.dp, catalog, config.plan)
                   if c.status != "unchanged"]
        for c in changes:
            self.log("plan", prefix=c.prefix, change=c.status)

    def _apply_filter(self, config: Config) -> None:
        """Settings, ports and the address plan, where the program is loaded (attach applied
        them already when it loaded it; this covers a reload)."""
        with self.dp:
            if not self.dp.is_loaded():
                return
            with Catalog(self.dp.catalog_path) as catalog:
                self._apply_plan(catalog, config)
            changed = apply_settings(self.dp, config.settings)
            if config.dns_ports is not None and set(self.dp.dns_ports()) != set(config.dns_ports):
                self.dp.set_dns_ports(config.dns_ports)
                changed = True
            settings = self.dp.settings().as_dict()
            ports = sorted(self.dp.dns_ports())
        if changed:
            self.log("settings", dns_ports=",".join(map(str, ports)), **settings)

    # -- feeds --------------------------------------------------------------------------
    def _feed_matches(self, feed: Feed, catalog: Catalog) -> bool:
        source = catalog.source(feed.name)
        if source is None:
            return False
        category = catalog.categories().get(source.category)
        action = canonical_action(feed.action) if feed.action else "default"
        if feed.zone is not None:
            same_source = source.origin == feed.zone.as_dict()
        elif feed.url is not None:
            same_source = (source.origin == feed.url.as_dict()
                           and (source.format or "auto") == feed.format
                           and source.column == feed.column)
        else:
            same_source = (source.path == str(feed.path) and source.origin is None
                           and (source.format or "auto") == feed.format
                           and source.column == feed.column)
        return (same_source and source.action == action
                and source.match == feed.match and source.min_confidence == feed.min_confidence
                and category == normalize_category(feed.category or feed.name)
                and bool(source.skip_invalid) == feed.skip_invalid)

    @staticmethod
    def _config_feeds(catalog: Catalog) -> dict[str, str]:
        """The feeds the config last applied gave (by this daemon or one before it), each
        as registered then (source id and time): a feed of that name added by hand since is
        not one."""
        try:
            data = json.loads(catalog.meta(CONFIG_FEEDS_KEY) or "{}")
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
        return {n: a for n, a in data.items() if isinstance(n, str) and isinstance(a, str)}

    @staticmethod
    def _registered(source) -> str:
        return f"{source.id}@{source.added_at}"

    def _remember_feeds(self, config: Config) -> None:
        """Record the config's feeds as registered now (after a start, a reload, an add)."""
        try:
            with Catalog(self.dp.catalog_path) as catalog:
                recorded = {}
                for feed in config.feeds:
                    source = catalog.source(feed.name)
                    if source is not None:
                        recorded[feed.name] = self._registered(source)
                catalog.set_meta(CONFIG_FEEDS_KEY, json.dumps(recorded, sort_keys=True))
        except (CcxdpError, OSError, sqlite3.Error) as e:
            self.log("feed_remove", level="error", error=str(e))

    def _remove_feeds(self, config: Config, also: set[str] = frozenset()) -> None:
        """Feeds not in ``config`` any more: those the config last applied gave (still as
        registered then) and ``also`` (the config before a reload), out of the catalog and
        the kernel. Feeds added by hand are never the config's to remove."""
        wanted = {f.name for f in config.feeds}
        try:
            with Catalog(self.dp.catalog_path) as catalog:
                recorded = self._config_feeds(catalog)
                gone = {n for n, added in recorded.items()
                        if (s := catalog.source(n)) is not None
                        and self._registered(s) == added}
        except (CcxdpError, OSError, sqlite3.Error) as e:
            self.log("feed_remove", level="error", error=str(e))
            gone = set()
        for name in sorted((gone | set(also)) - wanted):
            try:
                with self.dp, Catalog(self.dp.catalog_path) as catalog:
                    if catalog.source(name) is not None:
                        remove_feed(self.dp, catalog, name)
                        self.log("feed_remove", feed=name, reason="not in the config")
            except (CcxdpError, OSError, sqlite3.Error) as e:
                self.log("feed_remove", level="error", feed=name, error=str(e))
            self._next_sync.pop(name, None)
            self._failures.pop(name, None)
            self._file_stat.pop(name, None)
            with self.state.lock:
                self.state.feeds.pop(name, None)

    def _ensure_feed(self, feed: Feed) -> None:
        self._sync(feed, "start")

    def _sync(self, feed: Feed, why: str) -> None:
        """Sync a feed, registering it first with the config's options: added when it is not
        registered (its file may have been refused before), removed and added again when its
        options in the config changed."""
        if feed.zone is not None:
            self._sync_zone(feed, why)
            return
        self._file_stat[feed.name] = _file_stat(feed.path)
        if feed.url is not None:
            self._sync_url(feed, why)
            return
        try:
            with self.dp, Catalog(self.dp.catalog_path) as catalog:
                if catalog.source(feed.name) is not None and not self._feed_matches(feed,
                                                                                    catalog):
                    remove_feed(self.dp, catalog, feed.name, reclaim=False)
                    self.log("feed_remove", feed=feed.name, reason="options changed")
                    why = "options changed"
                if catalog.source(feed.name) is None:
                    r = add_feed(self.dp, catalog, feed.name, feed.path, feed.format,
                                 feed.column, feed.action, feed.category, feed.skip_invalid,
                                 max_shrink=feed.max_shrink, match=feed.match,
                                 min_confidence=feed.min_confidence)
                    why = "added"
                else:
                    if catalog.source(feed.name).max_shrink != feed.max_shrink:
                        catalog.set_max_shrink(feed.name, feed.max_shrink)  # no resync
                    r = sync_feed(self.dp, catalog, feed.name)
                self._synced(feed, catalog, r, why)
        except (CcxdpError, OSError, sqlite3.Error) as e:  # OSError: BpfError too
            self._sync_failed(feed, e, why)

    def _sync_url(self, feed: Feed, why: str) -> None:
        """A URL feed, as _sync does a file, but downloaded without the datapath's lock
        (download.py takes it to apply the copy): a slow server holds up no CLI call and no
        collection. One attempt per turn; a failure is retried with backoff (_sync_failed)."""
        try:
            with Catalog(self.dp.catalog_path) as catalog:
                if catalog.source(feed.name) is not None and not self._feed_matches(feed,
                                                                                    catalog):
                    with self.dp:
                        remove_feed(self.dp, catalog, feed.name, reclaim=False)
                    self.log("feed_remove", feed=feed.name, reason="options changed")
                    why = "options changed"
                if catalog.source(feed.name) is None:
                    r = add_url_feed(self.dp, catalog, feed.name, feed.url, feed.format,
                                     feed.column, feed.action, feed.category,
                                     feed.skip_invalid, attempts=1, feed_options={
                                         "max_shrink": feed.max_shrink, "match": feed.match,
                                         "min_confidence": feed.min_confidence})
                    why = "added"
                else:
                    r = sync_url_feed(self.dp, catalog, feed.name, attempts=1)
                self._synced(feed, catalog, r, why)
        except (CcxdpError, OSError, sqlite3.Error) as e:
            self._sync_failed(feed, e, why)

    def _sync_zone(self, feed: Feed, why: str) -> None:
        """A zone feed: transferred without the datapath's lock (an AXFR of a million names
        takes a while), then applied under it."""
        try:
            with Catalog(self.dp.catalog_path) as catalog:
                source = catalog.source(feed.name)
                matches = source is not None and self._feed_matches(feed, catalog)
            fetched = transfer.fetch(feed.zone, source if matches else None)
            if fetched.warning and feed.name not in self._tsig_warned:
                self._tsig_warned.add(feed.name)
                self.log("feed_tsig", level="warning", feed=feed.name, warning=fetched.warning)
            with self.dp, Catalog(self.dp.catalog_path) as catalog:
                if catalog.source(feed.name) is not None and not matches:
                    remove_feed(self.dp, catalog, feed.name, reclaim=False)
                    self.log("feed_remove", feed=feed.name, reason="options changed")
                    why = "options changed"
                add = None
                if catalog.source(feed.name) is None:
                    add = {"action": feed.action, "category": feed.category,
                           "skip_invalid": feed.skip_invalid, "max_shrink": feed.max_shrink}
                    why = "added"
                r = transfer.apply(self.dp, catalog, feed.name, fetched, add=add)
                self._synced(feed, catalog, r, why)
        except (CcxdpError, OSError, sqlite3.Error) as e:
            self._sync_failed(feed, e, why)

    def _synced(self, feed: Feed, catalog: Catalog, r, why: str) -> None:
        self._failures.pop(feed.name, None)
        if why in ("added", "options changed") and self.config is not None:
            self._remember_feeds(self.config)  # a feed refused at start and added later too
        source = catalog.source(feed.name)
        self._next_sync[feed.name] = time.monotonic() + (
            transfer.next_refresh(source, ok=True) if feed.zone else feed.refresh)
        counts = feed_counts(catalog).get(source.id, {}) if source else {}
        with self.state.lock:
            fs = self.state.feeds.setdefault(feed.name, FeedState())
            fs.names = {"block": counts.get("block", 0), "allow": counts.get("allow", 0)}
            fs.last_sync, fs.last_ok = time.time(), True
            fs.syncs["ok"] += 1
        fields = {"feed": feed.name, "why": why, "result": "unchanged" if r.unchanged else "ok",
                  "url": redact(feed.url.url) if feed.url else None,
                  "names": counts.get("block", 0), "seconds": r.seconds}
        if r.applied is not None:
            fields.update(added=sum(r.applied.added.values()),
                          removed=sum(r.applied.removed.values()))
        if r.bad:
            fields["bad_lines"] = len(r.bad)
        if r.provenance and "serial" in r.provenance:
            fields.update(zone=r.provenance["zone"], serial=r.provenance["serial"],
                          transfer=None if r.unchanged else r.provenance["transfer"])
        self.log("feed_sync", **fields)

    def _sync_failed(self, feed: Feed, e: Exception, why: str) -> None:
        result, fields, delay = "error", {}, None
        failures = self._failures[feed.name] = self._failures.get(feed.name, 0) + 1
        if feed.zone is None:
            # A file is read again as soon as it changes; a server is asked again with backoff.
            delay = feed.refresh if feed.url is None else retry_delay(failures, feed.refresh)
            self._next_sync[feed.name] = time.monotonic() + delay
        else:
            try:
                with Catalog(self.dp.catalog_path) as catalog:
                    source = catalog.source(feed.name)
            except (CcxdpError, OSError, sqlite3.Error):
                source = None
            self._next_sync[feed.name] = time.monotonic() + transfer.next_refresh(source,
                                                                                 ok=False)
            if transfer.expired(source):
                # Past the SOA's expire a secondary stops answering; ccxdp keeps blocking
                # with the last good list instead, and says so at every retry.
                p = source.provenance
                result = "expired"
                fields = {"serial": p["serial"], "checked_at": p["checked_at"],
                          "kept": "the last good list stays applied"}
        with self.state.lock:
            fs = self.state.feeds.setdefault(feed.name, FeedState())
            fs.last_sync, fs.last_ok = time.time(), False
            fs.syncs["error"] += 1
        if isinstance(e, FeedError) and e.bad:  # the error's first line only announces them
            fields.update(bad_lines=len(e.bad), first_bad_lines=" | ".join(
                str(b) for b in e.bad[:BAD_LINES_LOGGED]))
        self.log("feed_sync", level="error", feed=feed.name, why=why, result=result,
                 url=redact(feed.url.url) if feed.url else None,
                 retry_in=delay if feed.url else None,
                 error=str(e).splitlines()[0].removesuffix(":"), **fields)

    # -- NOTIFY -------------------------------------------------------------------------
    def _watch(self, config: Config) -> None:
        """The zones NOTIFY is accepted for, with their keys (read once per config)."""
        watched = []
        for feed in config.feeds:
            if feed.zone is None:
                continue
            try:
                key = transfer.read_tsig(feed.zone.tsig) if feed.zone.tsig else None
            except CcxdpError as e:
                self.log("notify", level="error", feed=feed.name, error=str(e))
                continue
            watched.append(transfer.Watched(feed.name, feed.zone.zone, feed.zone.primary, key))
        self._watched = watched

    def _start_notify(self, config: Config) -> None:
        self._watch(config)
        if config.notify_listen is None:
            return
        address, port = config.notify_listen
        try:
            self._notify = transfer.NotifyListener(address, port, lambda: self._watched,
                                                   self._on_notify)
        except OSError as e:
            raise ConfigError(config.path, "feeds_notify.listen",
                              f"cannot listen on {address}:{port}: {e.strerror}") from None
        self.log("notify_listen", listen=f"{address}:{port}")

    def _on_notify(self, event: transfer.NotifyEvent) -> None:
        """In the listener's thread: hand the event to the loop, waking it for a transfer."""
        self._notices.put(event)
        if event.feed is not None:
            self._wake.set()

    def _notified(self) -> None:
        due = []
        while True:
            try:
                e = self._notices.get_nowait()
            except queue.Empty:
                break
            self.log("notify", level="info" if e.feed else "warning", sender=e.sender,
                     zone=e.zone, serial=e.serial, rcode=e.rcode, feed=e.feed,
                     result="accepted" if e.feed else "refused", reason=e.reason)
            if e.feed:
                due += e.feed.split(",")
        for feed in self.config.feeds:
            if feed.name in due:
                self._sync(feed, "notify")

    # -- collection ---------------------------------------------------------------------
    def _store(self) -> StoreLocation:
        return StoreLocation(self.config.store, self.dp.state_dir)

    def collect(self) -> None:
        self.log("collect_start", level="debug")
        started = time.monotonic()
        where = self._store()
        try:
            r = collect(self.dp, where)
            stored = None
            if not where.fleet:
                with where.open() as store:
                    stored = store.stored_per_category()
        except (CcxdpError, OSError, sqlite3.Error) as e:
            with self.state.lock:
                self.state.collections["error"] += 1
            self.log("collect", level="error", result="error", error=str(e))
            return
        seconds = time.monotonic() - started
        with self.state.lock:
            self.state.collections["ok"] += 1
            self.state.collect_seconds = seconds
            self.state.collect_last = time.time()
            self.state.collected_hits += r.hits
            if stored is not None:
                self.state.category_stored = stored
        # A collection that moved nothing is routine: a line at every interval would bury
        # the ones that matter.
        idle = not (r.hits or r.rows or r.counters or r.recovered or r.lost)
        self.log("collect", level="warning" if r.lost else "debug" if idle else "info",
                 result="ok", epoch=r.epoch,
                 hits=r.hits, sources=r.sources, rows=r.rows, recovered=r.recovered,
                 lost=r.lost, seconds=seconds)
        if where.fleet:
            self.ship(where)
        self.expire()

    def ship(self, where: StoreLocation) -> None:
        """This host's backlog to the fleet store, after each collection."""
        resolver = self.config.resolver or default_resolver()
        try:
            shipped = ship(where, resolver)
        except ShipFailed as e:
            self._shipped(resolver, None, e)
            return
        self._shipped(resolver, shipped, None)
        try:  # this resolver's totals per category, for the metrics; a failure is no loss
            with where.open() as store:
                stored = store.stored_per_category(resolver)
        except CcxdpError:
            return
        with self.state.lock:
            self.state.category_stored = stored

    def _shipped(self, resolver: str, shipped, failed: ShipFailed | None) -> None:
        """The ship after a fleet collection: logged, and the backlog exported."""
        with self.state.lock:
            self.state.backlog = failed.backlog if failed else (
                shipped.backlog_batches, shipped.backlog_counters, shipped.backlog_hits)
            self.state.ships["error" if failed else "ok"] += 1
            if not failed:
                self.state.ship_last_ok = time.time()
        batches, _counters, hits = self.state.backlog
        if failed:
            # The hits are safe in this host's backlog; the log says how much waits.
            self.log("ship", level="error", result="error", resolver=resolver,
                     backlog_hits=hits, backlog_batches=batches, error=str(failed))
        else:
            idle = not (shipped.batches or shipped.hits or shipped.skipped or hits or batches)
            self.log("ship", level="debug" if idle else "info", result="ok",
                     resolver=resolver, batches=shipped.batches,
                     hits=shipped.hits, skipped=shipped.skipped, backlog_hits=hits,
                     backlog_batches=batches, seconds=shipped.seconds)

    def expire(self) -> None:
        """Apply the retention (collect.retention_days) to the per-address rows, after a
        collection. Its own step: the collection is stored and counted whatever happens here,
        and a failure (the store locked by a long notify) is logged and retried next time.
        Rows become old enough by the hour, so it runs once an hour (or when the retention
        changes), not at every collection: each run takes the store's write lock."""
        config = self.config
        if config.retention_days <= 0:
            return
        before = datetime.now(UTC) - timedelta(days=config.retention_days)
        due = (int(before.timestamp()) // 3600, config.retention_days,
               config.expire_unattributed)
        if due == self._expired_for:
            return
        try:
            with self._store().open() as store:
                rows = store.expire(before, attributed_only=not config.expire_unattributed)
        except (CcxdpError, OSError, sqlite3.Error) as e:
            self.log("expire", level="error", result="error", error=str(e))
            return
        self._expired_for = due
        if rows:
            self.log("expire", result="ok", rows=rows,
                     before=utc_text(before),
                     unattributed=config.expire_unattributed)

    # -- sessions: the exempt prefixes of opted-out lines ---------------------------------
    def _follow_sessions(self) -> None:
        """Read the sessions files that changed, poll radacct and the opt-out list when
        due, and make the line-derived exempt prefixes those opted-out lines hold now. Runs
        every tick: a session's start or stop time passing counts as a change too."""
        sc = self.config.sessions
        if sc is None:
            return
        for kind, paths in (("sessions", sc.radius_csv), ("leases", sc.leases)):
            for path in paths:
                stat = _file_stat(path)
                if path not in self._session_files or self._session_files[path][0] != stat:
                    self._read_sessions_file(path, kind, stat, sc)
        if time.monotonic() >= self._next_sessions_poll:
            self._next_sessions_poll = time.monotonic() + sc.interval
            self._poll_sessions(sc)
        if self._opted_out is None:
            return  # not knowing who opted out, change nothing
        if self._sessions is None:
            found = [s for _, got in self._session_files.values() for s in got]
            self._sessions = Sessions.build(found + self._radacct_sessions)
        try:
            wanted = current_prefixes(self._sessions, self._opted_out)
        except CcxdpError as e:
            self._sessions_failed("line_exempt", e)
            return
        self._sessions_errors.pop("line_exempt", None)
        if wanted != self._line_prefixes:
            self._apply_line_prefixes(wanted)

    def _read_sessions_file(self, path: Path, kind: str, stat: tuple | None,
                            sc: SessionsConfig) -> None:
        before = self._session_files.get(path, (None, []))[1]
        try:
            got = read_file(path, kind, sc.line_id_from)
        except (CcxdpError, OSError) as e:
            self._session_files[path] = (stat, before)  # the last good read stays
            self.log("sessions_read", level="error", source=str(path), result="error",
                     error=str(e).splitlines()[0])
            return
        self._session_files[path] = (stat, got)
        self._sessions = None
        self.log("sessions_read", source=str(path), result="ok", sessions=len(got))

    def _poll_sessions(self, sc: SessionsConfig) -> None:
        if sc.radacct is not None:
            try:
                got = read_radacct(sc.radacct)
            except CcxdpError as e:
                self._sessions_failed("sessions_read", e, source="radacct")
            else:
                self._sessions_errors.pop("sessions_read", None)
                if got != self._radacct_sessions:
                    self._radacct_sessions = got
                    self._sessions = None
                    self.log("sessions_read", source="radacct", result="ok",
                             sessions=len(got))
        try:
            with self._store().open() as store:
                opted = set(store.opted_out())
        except (CcxdpError, OSError, sqlite3.Error) as e:
            self._sessions_failed("opt_outs", e)
            return
        self._sessions_errors.pop("opt_outs", None)
        if opted != self._opted_out:
            self.log("opt_outs", lines=len(opted))
            self._opted_out = opted
            with self.state.lock:
                self.state.opted_out_lines = len(opted)
        # Compare with the catalog itself at this pace, not only with what was last applied:
        # a CLI call ('exempt line remove', 'sync') may have changed it meanwhile.
        self._line_prefixes = None

    def _sessions_failed(self, event: str, e: Exception, key: str | None = None,
                         **fields: object) -> None:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        last = self._sessions_errors.get(key or event)
        if text != last:
            self._sessions_errors[key or event] = text
            # One error an outage: a server going away fails first with "closed the
            # connection", then with "connection refused"; the change is worth a warning.
            self.log(event, level="error" if last is None else "warning",
                     result="error" if last is None else "still_failing", error=text, **fields)

    def _apply_line_prefixes(self, wanted: dict[str, str]) -> None:
        try:
            with self.dp, Catalog(self.dp.catalog_path) as catalog:
                changes = set_line_prefixes(self.dp, catalog, wanted)
        except (CcxdpError, OSError, sqlite3.Error) as e:  # retried next tick
            self._sessions_failed("line_exempt", e, key="line_exempt_write")
            return
        self._line_prefixes = wanted
        self._sessions_errors.pop("line_exempt_write", None)
        for c in changes:
            self.log("line_exempt", prefix=c.prefix, line=c.line, change=c.status)
        with self.state.lock:
            self.state.line_exempt_prefixes = len(wanted)

    def _sessions_changed(self, sessions: SessionsConfig | None) -> None:
        """After a reload: forget sources no longer configured and read the rest again at
        once. Without [sessions] nobody follows the lines any more, so the prefixes the
        daemon kept go: left alone, they would exempt whoever gets the address next."""
        self._session_files.clear()
        self._radacct_sessions = []
        self._sessions = None
        self._next_sessions_poll = 0.0
        self._sessions_errors.clear()
        if sessions is None:
            self._apply_line_prefixes({})
            self._opted_out = None

    # -- metrics ------------------------------------------------------------------------
    def _categories(self) -> dict[int, str]:
        with Catalog(self.dp.catalog_path) as catalog:
            return catalog.categories()

    def _start_metrics(self, config: Config) -> None:
        if config.metrics_listen is None:
            return
        address, port = config.metrics_listen
        try:
            self.metrics = MetricsServer(make_registry(self.dp, self.state, self._categories),
                                         address, port)
        except OSError as e:
            raise ConfigError(config.path, "metrics.listen",
                              f"cannot listen on {address}:{port}: {e.strerror}") from None
        self.log("metrics", listen=f"{address}:{port}")

    # -- reload -------------------------------------------------------------------------
    def reload(self) -> None:
        """Read the file again and apply the difference; a bad file changes nothing."""
        old = self.config
        try:
            new = load_config(self.config_path)
            check_interfaces(new)
            check_listen_addresses(new)
        except ConfigError as e:
            self.log("reload", level="error", result="error", error=str(e))
            return
        self.log.fmt, self.log.level = new.log_format, new.log_level
        self.config = new
        old_ifaces = {(i.name, i.netns): i for i in old.interfaces}
        new_ifaces = {(i.name, i.netns): i for i in new.interfaces}
        for key, iface in old_ifaces.items():
            if key not in new_ifaces:
                self._detach(iface)
        for key, iface in new_ifaces.items():
            if old_ifaces.get(key) != iface:
                try:
                    self._attach(iface)
                except (CcxdpError, OSError) as e:
                    self.log("attach", level="error", interface=iface.name, netns=iface.netns,
                             error=str(e))
        try:
            self._apply_filter(new)
        except (CcxdpError, OSError) as e:
            self.log("settings", level="error", error=str(e))
        old_feeds = {f.name: f for f in old.feeds}
        self._remove_feeds(new, also=set(old_feeds))
        for feed in new.feeds:
            if old_feeds.get(feed.name) != feed:
                self._ensure_feed(feed)
        self._remember_feeds(new)
        if new.collect_interval != old.collect_interval:
            self._schedule_collect(new)
        if new.sessions != old.sessions:
            self._sessions_changed(new.sessions)
        self._watch(new)
        if new.notify_listen != old.notify_listen:
            if self._notify is not None:
                self._notify.stop()
                self._notify = None
            try:
                self._start_notify(new)
            except ConfigError as e:
                self.log("notify_listen", level="error", error=str(e))
        if new.metrics_listen != old.metrics_listen:
            if self.metrics is not None:
                self.metrics.stop()
                self.metrics = None
            try:
                self._start_metrics(new)
            except ConfigError as e:
                self.log("metrics", level="error", error=str(e))
        self.log("reload", result="ok", config=str(new.path))


def _file_stat(path: Path | None) -> tuple | None:
    if path is None:  # a URL feed: no file of the operator's to watch
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
