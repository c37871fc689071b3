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


def _table(title: str) -> Table:
    # No outer edge: a table then costs three rows (title, header, rule) besides its own.
    return Table(title=title, title_justify="left", show_edge=False, expand=False)


def _fill_line(fill: tuple[MapFill, ...]) -> Text:
    line = Text("map fill", style="bold")
    for f in fill:
        pct = 100 * f.entries / f.capacity if f.capacity else 0.0
        line.append(f"  {f.name} {f.entries:,}/{f.capacity:,} {pct:.1f}%")
    return line


def render_top(cur: TopSnapshot, prev: TopSnapshot | None = None, top: int = 10,
               height: int | None = None, width: int = 80) -> Group:
    """The dashboard for ``cur``, with rates from ``prev`` (none on the first frame).

    Top to bottom: two head lines, the map fill, the actions beside the top categories,
    the top sources, a foot line. With ``height`` (the terminal's rows, of ``width``
    columns), the lists are shortened so that the frame fits whole (24 rows leave 7
    sources), and the foot says how many did not fit."""
    seconds = cur.taken - prev.taken if prev is not None else None
    s, p = cur.stats, prev.stats if prev is not None else None
    blocked = s.outcomes["blocked"]
    head = Text.assemble(
        ("ccxdp top", "bold"),
        f"  queries/s {_rate(s.judged, p.judged if p else None, seconds)}",
        f"  blocked/s {_rate(blocked, p.outcomes['blocked'] if p else None, seconds)}\n",
        f"frames {s.frames:,}  queries {s.judged:,}  blocked {blocked:,}  names {s.names:,}",
    )
    fill = _fill_line(cur.fill)
    top_sources = top_cats = top
    if height is not None:
        fill_rows = -(-len(fill.plain) // max(width, 1))
        fixed = 2 + fill_rows + (3 + len(ACTIONS)) + 3 + 1  # head, fill, band, table, foot
        top_sources = max(1, min(top, height - fixed))
        # No taller than the actions beside them, but for rows the sources leave over.
        top_cats = min(top, len(ACTIONS) + max(0, height - fixed - top_sources))

    actions = _table("per action")
    actions.add_column("action")
    actions.add_column("total", justify="right")
    actions.add_column("/s", justify="right")
    for a in ACTIONS:
        actions.add_row(a, f"{s.actions.get(a, 0):,}",
                        _rate(s.actions.get(a, 0), p.actions.get(a, 0) if p else None, seconds))

    per_cat: dict[str, list[int]] = {}
    for src in s.sources:
        name = category_label(src.category, cur.categories)
        row = per_cat.setdefault(name, [0, 0])
        row[0] += src.hits
        row[1] += 1
    cats = _table("top categories")
    cats.add_column("category")
    cats.add_column("hits", justify="right")
    cats.add_column("sources", justify="right")
    for name, (hits, n) in sorted(per_cat.items(),
                                  key=lambda kv: (-kv[1][0], kv[0]))[:top_cats]:
        cats.add_row(Text(name), f"{hits:,}", f"{n:,}")
    band = Table.grid(padding=(0, 4))
    band.add_row(actions, cats)

    sources = _table("top sources")
    sources.add_column("address")
    sources.add_column("category")
    sources.add_column("hits since collect", justify="right")
    for src in s.sources[:top_sources]:
        # Text cells: an address is never read as markup or emoji (":1234:" is one).
        sources.add_row(Text(src.address), Text(category_label(src.category, cur.categories)),
                        f"{src.hits:,}")

    lost = s.events.get("source_lost", 0)
    foot = Text(f"source_lost {lost:,}", style="bold red" if lost else "dim")
    hidden = [f"{n:,} {what}" for n, what in (
        (len(s.sources) - top_sources, "sources"), (len(per_cat) - top_cats, "categories"))
        if n > 0]
    if hidden:
        foot.append(f"  not shown: {', '.join(hidden)}", style="dim")
    return Group(head, fill, band, sources, foot)


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

    def frame(cur: TopSnapshot, prev: TopSnapshot | None) -> Group:
        # The terminal's size at each frame (it may be resized); piped, every row asked for.
        if not out.is_terminal:
            return render_top(cur, prev, top_n)
        return render_top(cur, prev, top_n, out.size.height, out.size.width)

    done = 0
    try:
        with Live(frame(prev, None), console=out, auto_refresh=False,
                  transient=False) as live:
            while iterations is None or done < iterations:
                time.sleep(interval)
                cur = take_snapshot(dp, categories())
                live.update(frame(cur, prev), refresh=True)
                prev = cur
                done += 1
    except KeyboardInterrupt:
        pass


def register(group: click.Group) -> None:
    group.add_command(top)
