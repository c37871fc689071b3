"""top: a live dashboard from the pinned maps (no daemon needed).

Snapshots are frozen dataclasses of exact integers; ``render_top`` turns two of them into a
renderable without touching a map; one ``Live`` loop polls and renders.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ccxdp.cli.app import pass_app
from ccxdp.cli.output import console
from ccxdp.datapath.settings import ACTIONS
from ccxdp.hits.stats import StatsSnapshot, read_stats
from ccxdp.ops.metrics import MapFill, map_fill
from ccxdp.policy.catalog import category_label


@dataclass(frozen=True)
class TopSnapshot:
    taken: float  # time.monotonic() when read
    stats: StatsSnapshot
    fill: tuple[MapFill, ...]
    categories: dict[int, str]


def take_snapshot(dp, categories: dict[int, str]) -> TopSnapshot:
    return TopSnapshot(time.monotonic(), read_stats(dp), tuple(map_fill(dp)), categories)


def _rate(cur: int, prev: int | None, seconds: float | None) -> str:
    if prev is None or not seconds:
        return "–"
    return f"{max(0, cur - prev) / seconds:,.1f}"


def render_top(cur: TopSnapshot, prev: TopSnapshot | None = None, top: int = 10) -> Group:
    """The dashboard for ``cur``, with rates from ``prev`` (none on the first frame)."""
    seconds = cur.taken - prev.taken if prev is not None else None
    s, p = cur.stats, prev.stats if prev is not None else None
    blocked = s.outcomes["blocked"]
    head = Text.assemble(
        ("ccxdp top", "bold"),
        f"  queries/s {_rate(s.judged, p.judged if p else None, seconds)}",
        f"  blocked/s {_rate(blocked, p.outcomes['blocked'] if p else None, seconds)}\n",
        f"frames {s.frames:,}  queries {s.judged:,}  blocked {blocked:,}  names {s.names:,}",
    )

    actions = Table(title="per action", title_justify="left", expand=False)
    actions.add_column("action")
    actions.add_column("total", justify="right")
    actions.add_column("/s", justify="right")
    for a in ACTIONS:
        actions.add_row(a, f"{s.actions.get(a, 0):,}",
                        _rate(s.actions.get(a, 0), p.actions.get(a, 0) if p else None, seconds))

    sources = Table(title="top sources", title_justify="left",
                    caption="hits since the last collect", caption_justify="left")
    sources.add_column("address")
    sources.add_column("category")
    sources.add_column("hits", justify="right")
    for src in s.sources[:top]:
        sources.add_row(src.address, category_label(src.category, cur.categories),
                        f"{src.hits:,}")

    per_cat: dict[str, list[int]] = {}
    for src in s.sources:
        name = category_label(src.category, cur.categories)
        row = per_cat.setdefault(name, [0, 0])
        row[0] += src.hits
        row[1] += 1
    cats = Table(title="top categories", title_justify="left")
    cats.add_column("category")
    cats.add_column("hits", justify="right")
    cats.add_column("sources", justify="right")
    for name, (hits, n) in sorted(per_cat.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]:
        cats.add_row(name, f"{hits:,}", f"{n:,}")

    fill = Table(title="map fill", title_justify="left")
    fill.add_column("map")
    fill.add_column("entries", justify="right")
    fill.add_column("capacity", justify="right")
    fill.add_column("fill", justify="right")
    for f in cur.fill:
        pct = 100 * f.entries / f.capacity if f.capacity else 0.0
        fill.add_row(f.name, f"{f.entries:,}", f"{f.capacity:,}", f"{pct:.1f}%")
    lost = s.events.get("source_lost", 0)
    foot = Text(f"source_lost {lost:,}", style="bold red" if lost else "dim")
    return Group(head, actions, sources, cats, fill, foot)


@click.command()
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--top", "top_n", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Rows of sources and categories shown.")
@click.option("--iterations", type=click.IntRange(1), help="Stop after N refreshes.")
@click.option("--once", is_flag=True, help="One refresh (rates over one interval), then exit.")
@pass_app
def top(app, interval, top_n, iterations, once):
    """Live dashboard: queries/s and blocks/s per action, top sources and categories, map fill.

    Reads the pinned maps (no daemon needed) and never takes the datapath's lock, so other
    commands run beside it. Ctrl-C quits.

    \b
    Examples:
      ccxdp top
      ccxdp top --interval 5 --top 20
      ccxdp top --once
    """
    from ccxdp.datapath.loader import Datapath, check_root
    from ccxdp.policy.catalog import Catalog

    check_root()
    dp = Datapath(app.pin_dir, app.state_dir)  # never entered: reading needs no lock

    def categories() -> dict[int, str]:
        if not dp.catalog_path.exists():
            return {}
        with Catalog(dp.catalog_path) as catalog:
            return catalog.categories()

    if once:
        iterations = 1
    prev = take_snapshot(dp, categories())
    out = console()
    done = 0
    try:
        with Live(render_top(prev, None, top_n), console=out, auto_refresh=False,
                  transient=False) as live:
            while iterations is None or done < iterations:
                time.sleep(interval)
                cur = take_snapshot(dp, categories())
                live.update(render_top(cur, prev, top_n), refresh=True)
                prev = cur
                done += 1
    except KeyboardInterrupt:
        pass


def register(group: click.Group) -> None:
    group.add_command(top)
