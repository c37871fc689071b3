"""Prometheus metrics: read from the pinned maps at each scrape, plus what the daemon knows
(feed syncs, collections, attachments). Served only on the address the config gives.

Every value is exact: counters are the kernel's per-CPU sums, fill levels are entry counts.
"""

from __future__ import annotations

import ctypes as ct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ccxdp.datapath import shared
from ccxdp.datapath.loader import Datapath
from ccxdp.errors import CcxdpError
from ccxdp.hits.stats import read_stats
from ccxdp.policy.catalog import category_label

PREFIX = "ccxdp"


@dataclass
class FeedState:
    names: dict[str, int] = field(default_factory=dict)  # per kind
    last_sync: float | None = None  # Unix time of the last sync attempt
    last_ok: bool | None = None
    syncs: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})


@dataclass
class DaemonState:
    """What the daemon records for the metrics; guarded by ``lock`` (scrapes run in the
    server's thread)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    feeds: dict[str, FeedState] = field(default_factory=dict)
    collect_seconds: float | None = None
    collect_last: float | None = None
    collections: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    collected_hits: int = 0
    category_stored: dict[str, int] = field(default_factory=dict)
    # The fleet (collect.store is PostgreSQL): what waits on this host to be shipped, and
    # ships by result. None: this daemon does not ship.
    backlog: tuple[int, int, int] | None = None  # batches, counters, hits
    ships: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    ship_last_ok: float | None = None
    line_exempt_prefixes: int | None = None  # None: the daemon follows no sessions
    opted_out_lines: int | None = None


@dataclass(frozen=True)
class MapFill:
    name: str
    entries: int
    capacity: int


def map_fill(dp: Datapath) -> list[MapFill]:
    """Entries against capacity of the maps that can fill up. The name table and the
    per-source map hold two buffers; the capacity is that of one."""
    from ccxdp.datapath.nametable import NameTable

    out = []
    with NameTable(dp) as table:
        out.append(MapFill("names", table.count(), table.capacity))
    with dp.open_map(shared.MAP_SOURCES) as srcs:
        live = _live_buffer(dp)
        n = sum(1 for k, _ in srcs.lookup_batch() if k.buffer == live)
        out.append(MapFill("sources", n, srcs.info.max_entries // 2))
    with dp.open_map(shared.MAP_EXEMPT) as ex:
        out.append(MapFill("exempt", sum(1 for _ in ex.keys()), ex.info.max_entries))
    return out


def _live_buffer(dp: Datapath) -> int:
    with dp.open_map(shared.MAP_SOURCE_EPOCH) as epoch:
        value = epoch.lookup(ct.c_uint32(0))
    return (value.value if value is not None else 0) & 1


class DaemonMetrics(Collector):
    """A prometheus_client collector: one pass over the maps per scrape."""

    def __init__(self, dp: Datapath, state: DaemonState,
                 categories: Callable[[], dict[int, str]] | None = None):
        self.dp = dp
        self.state = state
        self.categories = categories or dict

    def collect(self) -> Iterator:
        started = time.monotonic()
        up = GaugeMetricFamily(f"{PREFIX}_loaded", "1 when the pinned program and maps are "
                               "there and readable")
        try:
            snap = read_stats(self.dp)
            fill = map_fill(self.dp)
        except (CcxdpError, OSError):
            snap, fill = None, []
        up.add_metric([], 1 if snap is not None else 0)
        yield up
        if snap is not None:
            yield from self._kernel(snap, fill)
        yield from self._attachments()
        yield from self._daemon()
        took = GaugeMetricFamily(f"{PREFIX}_scrape_seconds", "Time this scrape took")
        took.add_metric([], time.monotonic() - started)
        yield took

    def _kernel(self, snap, fill) -> Iterator:
        frames = CounterMetricFamily(f"{PREFIX}_frames", "Frames seen, per outcome",
                                     labels=["outcome"])
        for k, v in snap.outcomes.items():
            frames.add_metric([k], v)
        yield frames
        actions = CounterMetricFamily(f"{PREFIX}_actions", "Judged queries per action taken",
                                      labels=["action"])
        for k, v in snap.actions.items():
            actions.add_metric([k], v)
        yield actions
        malformed = CounterMetricFamily(f"{PREFIX}_malformed", "Malformed queries per reason",
                                        labels=["reason"])
        for k, v in snap.malformed.items():
            malformed.add_metric([k], v)
        yield malformed
        events = CounterMetricFamily(
            f"{PREFIX}_events", "Events: source_lost (a hit not counted per source: the "
            "per-source map was full; the kernel never evicts), answer_failed (the frame "
            "could not grow to the answer's size), outside_plan (a hit from a source outside "
            "the address plan: counted only here), fragment_dropped, unparsed_dropped, "
            "tcp_closed (a blocked TCP query's connection closed), not_unicast",
            labels=["event"])
        for k, v in snap.events.items():
            events.add_metric([k], v)
        yield events
        lost = CounterMetricFamily(f"{PREFIX}_source_lost", "Hits not counted per source "
                                   "because the per-source map was full")
        lost.add_metric([], snap.events.get("source_lost", 0))
        yield lost
        names = self.categories()
        pending: dict[str, int] = {}
        for s in snap.sources:
            key = category_label(s.category, names)
            pending[key] = pending.get(key, 0) + s.hits
        cat = GaugeMetricFamily(f"{PREFIX}_category_pending_hits", "Hits per category the "
                                "kernel holds now (since the last collection)",
                                labels=["category"])
        for k, v in sorted(pending.items()):
            cat.add_metric([k], v)
        yield cat
        entries = GaugeMetricFamily(f"{PREFIX}_map_entries", "Entries in a map",
                                    labels=["map"])
        capacity = GaugeMetricFamily(f"{PREFIX}_map_capacity", "Entries a map can hold",
                                     labels=["map"])
        ratio = GaugeMetricFamily(f"{PREFIX}_map_fill_ratio", "entries / capacity",
                                  labels=["map"])
        for f in fill:
            entries.add_metric([f.name], f.entries)
            capacity.add_metric([f.name], f.capacity)
            ratio.add_metric([f.name], f.entries / f.capacity if f.capacity else 0.0)
        yield from (entries, capacity, ratio)

    def _attachments(self) -> Iterator:
        attached = GaugeMetricFamily(
            f"{PREFIX}_attached", "1 when the program is attached to the interface, 0 when "
            "ccxdp was attached there and is not any more", labels=["interface", "netns", "mode"])
        try:
            found = self.dp.attachments()
        except (CcxdpError, OSError):
            found = []
        for a in found:
            attached.add_metric([a.ifname, a.netns or "", str(a.mode) if a.mode else ""],
                                1 if a.prog_id else 0)
        yield attached

    def _daemon(self) -> Iterator:
        s = self.state
        with s.lock:
            feed_names = GaugeMetricFamily(f"{PREFIX}_feed_names", "Names a feed lists",
                                           labels=["feed", "kind"])
            last = GaugeMetricFamily(f"{PREFIX}_feed_last_sync_timestamp_seconds",
                                     "Unix time of the feed's last sync", labels=["feed"])
            ok = GaugeMetricFamily(f"{PREFIX}_feed_last_sync_success",
                                   "1 when the feed's last sync succeeded", labels=["feed"])
            syncs = CounterMetricFamily(f"{PREFIX}_feed_syncs", "Feed syncs by result",
                                        labels=["feed", "result"])
            for name, f in sorted(s.feeds.items()):
                for kind, n in sorted(f.names.items()):
                    feed_names.add_metric([name, kind], n)
                if f.last_sync is not None:
                    last.add_metric([name], f.last_sync)
                if f.last_ok is not None:
                    ok.add_metric([name], 1 if f.last_ok else 0)
                for result, n in sorted(f.syncs.items()):
                    syncs.add_metric([name, result], n)
            yield from (feed_names, last, ok, syncs)
            dur = GaugeMetricFamily(f"{PREFIX}_collect_duration_seconds",
                                    "How long the last collection took")
            when = GaugeMetricFamily(f"{PREFIX}_collect_last_timestamp_seconds",
                                     "Unix time of the last collection")
            if s.collect_seconds is not None:
                dur.add_metric([], s.collect_seconds)
                when.add_metric([], s.collect_last)
            yield from (dur, when)
            runs = CounterMetricFamily(f"{PREFIX}_collections", "Collections by result",
                                       labels=["result"])
            for result, n in sorted(s.collections.items()):
                runs.add_metric([result], n)
            yield runs
            hits = CounterMetricFamily(f"{PREFIX}_collected_hits",
                                       "Hits this daemon moved into the store")
            hits.add_metric([], s.collected_hits)
            yield hits
            stored = GaugeMetricFamily(f"{PREFIX}_category_stored_hits",
                                       "Hits per category in the store (raw and folded)",
                                       labels=["category"])
            for k, v in sorted(s.category_stored.items()):
                stored.add_metric([k], v)
            yield stored
            if s.backlog is not None:
                batches, _counters, backlog_hits = s.backlog
                held = GaugeMetricFamily(
                    f"{PREFIX}_store_backlog_hits",
                    "Hits collected on this host and not yet in the fleet store")
                held.add_metric([], backlog_hits)
                held_batches = GaugeMetricFamily(
                    f"{PREFIX}_store_backlog_batches",
                    "Collections' batches on this host not yet in the fleet store")
                held_batches.add_metric([], batches)
                ships = CounterMetricFamily(f"{PREFIX}_store_ships",
                                            "Ships of the backlog to the fleet store by result",
                                            labels=["result"])
                for result, n in sorted(s.ships.items()):
                    ships.add_metric([result], n)
                yield from (held, held_batches, ships)
                if s.ship_last_ok is not None:
                    last_ship = GaugeMetricFamily(
                        f"{PREFIX}_store_ship_last_ok_timestamp_seconds",
                        "Unix time of the last ship that emptied the backlog")
                    last_ship.add_metric([], s.ship_last_ok)
                    yield last_ship
            held = GaugeMetricFamily(f"{PREFIX}_line_exempt_prefixes",
                                     "Exempt prefixes that opted-out lines hold now (from "
                                     "their sessions), beside the static ones")
            lines = GaugeMetricFamily(f"{PREFIX}_opted_out_lines",
                                      "Lines opted out in the store")
            if s.line_exempt_prefixes is not None:
                held.add_metric([], s.line_exempt_prefixes)
            if s.opted_out_lines is not None:
                lines.add_metric([], s.opted_out_lines)
            yield from (held, lines)


def make_registry(dp: Datapath, state: DaemonState,
                  categories: Callable[[], dict[int, str]] | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonMetrics(dp, state, categories))
    return registry


class MetricsServer:
    """The HTTP endpoint on one address; stop() closes its socket."""

    def __init__(self, registry: CollectorRegistry, address: str, port: int):
        from prometheus_client import start_http_server

        self.address, self.port = address, port
        self._server, self._thread = start_http_server(port, addr=address, registry=registry)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
