"""Snapshots of the kernel's counters: frozen dataclasses of exact integers."""

from __future__ import annotations

import ctypes as ct
import time
from dataclasses import dataclass, field

from ccxdp.datapath import shared
from ccxdp.datapath.loader import Datapath
from ccxdp.datapath.nametable import count_names
from ccxdp.hits.store import packed_address_text
from ccxdp.utc import utc_text


@dataclass(frozen=True)
class SourceStat:
    address: str
    category: int
    hits: int
    first_seen: float  # Unix time
    last_seen: float


@dataclass(frozen=True)
class StatsSnapshot:
    outcomes: dict[str, int]
    malformed: dict[str, int]
    events: dict[str, int]
    actions: dict[str, int]
    sources: tuple[SourceStat, ...] = field(default=())
    names: int = 0

    @property
    def frames(self) -> int:
        return sum(self.outcomes.values())

    @property
    def judged(self) -> int:
        o = self.outcomes
        return o["passed"] + o["blocked"] + o["allowed"] + o["monitored"]

    def to_json(self) -> dict:
        return {
            "frames": self.frames,
            "judged": self.judged,
            "outcomes": dict(self.outcomes),
            "malformed": dict(self.malformed),
            "events": dict(self.events),
            "actions": dict(self.actions),
            "names": self.names,
            "sources": [
                {
                    "address": s.address,
                    "category": s.category,
                    "hits": s.hits,
                    "first_seen": _iso(s.first_seen),
                    "last_seen": _iso(s.last_seen),
                }
                for s in self.sources
            ],
        }


def _iso(t: float) -> str:
    return utc_text(int(t))




def hit_clock_offset_ns() -> int:
    """Nanoseconds to add to CLOCK_MONOTONIC (the program stamps hits with its coarse
    reading) to get Unix time: the one conversion of the kernel's hit times, for stats and
    collections alike. Take it once per snapshot or collection: two readings differ a
    little, and first_seen <= last_seen must survive the conversion."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def read_stats(dp: Datapath) -> StatsSnapshot:
    with dp.open_map(shared.MAP_STATS) as stats:
        totals = [stats.lookup_sum(ct.c_uint32(i)).value for i in range(shared.STAT_MAX)]
    outcomes = {o.name.lower(): int(totals[o]) for o in shared.Outcome}
    malformed = {
        m.name.lower(): int(totals[shared.STAT_MALFORMED_BASE + m]) for m in shared.Malformed
    }
    events = {e.name.lower(): int(totals[shared.STAT_EVENT_BASE + e]) for e in shared.Event}
    actions = {
        a.name.lower(): int(totals[shared.STAT_ACTION_BASE + a])
        for a in shared.Action
        if a != shared.Action.DEFAULT
    }
    # Both collection buffers (maps.h): what the kernel holds now is every hit since the last
    # collection, in the live buffer and, while a collection runs, in the one it drains.
    merged: dict[tuple[bytes, int], list[int]] = {}
    with dp.open_map(shared.MAP_SOURCES) as srcs:
        for k, v in srcs.lookup_batch():
            # Two CPUs may stamp a new entry out of order by a few ns: last is at least first.
            hits, first, last = v.hits, v.first_seen_ns, max(v.first_seen_ns, v.last_seen_ns)
            source = (bytes(k.addr), k.prefix_len)
            seen = merged.setdefault((source, k.category), [0, first, last])
            seen[0] += hits
            seen[1] = min(seen[1], first)
            seen[2] = max(seen[2], last)
    offset = hit_clock_offset_ns()
    sources = [
        SourceStat(packed_address_text(*source), category, hits, (offset + first) / 1e9,
                   (offset + last) / 1e9)
        for (source, category), (hits, first, last) in merged.items()
    ]
    sources.sort(key=lambda s: (-s.hits, s.address, s.category))
    count = count_names(dp)
    return StatsSnapshot(outcomes, malformed, events, actions, tuple(sources), count)
