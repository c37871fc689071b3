"""collect: the kernel's per-source counters into the hits store, each hit exactly once."""

from __future__ import annotations

import click
from rich.table import Table

from ccxdp.cli.app import pass_app
from ccxdp.cli.output import emit, err_console, json_option
from ccxdp.datapath.loader import Datapath, check_root
from ccxdp.hits.collector import CollectResult, collect_then_fold
from ccxdp.hits.store import store_path


def render_collect(r: CollectResult) -> Table:
    table = Table(title=f"collected epoch {r.epoch} in {r.seconds:.2f} s", title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("meaning", style="dim")
    table.add_row("rows", f"{r.rows:,}", "store rows taken (source address, category, hour)")
    table.add_row("hits", f"{r.hits:,}", "blocked queries stored")
    table.add_row("sources", f"{r.sources:,}", "distinct source addresses")
    if r.recovered:
        table.add_row("recovered", f"{r.recovered:,}", "of the hits, left by a killed collect")
    table.add_row("lost", f"{r.lost:,}", "blocked queries not counted: per-source map full")
    return table


@click.command("collect")
@json_option
@pass_app
def collect_cmd(app, as_json):
    """Move the per-source hits from the kernel into the hits store, once.

    Every blocked query counted in the kernel since the last collection is added to the
    store exactly once, even when a collection is killed midway or several run at once. A
    query whose source could not be counted because the per-source map was full is
    reported as lost, with a warning.

    \b
    Examples:
      ccxdp collect
      ccxdp collect --json | jq .hits
    """
    # Not app.datapath(): that holds the lock until the command ends, fold included.
    check_root()
    result = collect_then_fold(Datapath(app.pin_dir, app.state_dir), store_path(app.state_dir))
    emit(as_json, result.to_json(), lambda: render_collect(result))
    if result.lost:
        err_console().print(
            f"warning: {result.lost:,} blocked queries since the last collection could not be "
            f"counted per source: the per-source map was full. Collect more often, or make "
            f"the maps again with a larger --max-sources (detach --purge, attach).",
            markup=False, highlight=False,
        )


def register(group: click.Group) -> None:
    group.add_command(collect_cmd)
