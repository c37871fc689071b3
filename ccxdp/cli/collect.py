"""collect: the kernel's per-source counters into the hits store, each hit exactly once."""

from __future__ import annotations

import click
from rich.console import Group
from rich.table import Table

from ccxdp.cli.app import pass_app, store_option
from ccxdp.cli.output import emit, err_console, json_option
from ccxdp.datapath.loader import Datapath, check_root
from ccxdp.hits.collector import CollectResult
from ccxdp.hits.fleet import ShipResult
from ccxdp.hits.location import ShipFailed, check_resolver, collect, default_resolver, ship


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


def render_ship(s: ShipResult, resolver: str) -> Table:
    table = Table(title=f"shipped to the fleet store as {resolver} in {s.seconds:.2f} s",
                  title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("meaning", style="dim")
    table.add_row("batches", f"{s.batches:,}", "collections' batches stored in the fleet")
    table.add_row("hits", f"{s.hits:,}", "blocked queries stored in the fleet")
    table.add_row("rows", f"{s.rows:,}", "fleet rows taken (source address, category, hour)")
    if s.skipped:
        table.add_row("skipped", f"{s.skipped:,}", "batches the fleet held already (a kill)")
    table.add_row("backlog", f"{s.backlog_hits:,}", "hits still on this host, to ship")
    return table


def _collect_json(r: CollectResult, shipped: ShipResult | None, resolver: str | None) -> dict:
    data = r.to_json()
    if resolver is not None:
        data["resolver"] = resolver
        data["shipped"] = shipped.to_json() if shipped else None
    return data


@click.command("collect")
@store_option
@click.option("--resolver", envvar="CCXDP_RESOLVER", metavar="NAME",
              help="This host's name in the fleet store (default: the host name). Env: "
                   "CCXDP_RESOLVER.")
@json_option
@pass_app
def collect_cmd(app, store_spec, resolver, as_json):
    """Move the per-source hits from the kernel into the hits store, once.

    Every blocked query counted in the kernel since the last collection is added to the
    store exactly once, even when a collection is killed midway or several run at once. A
    query whose source could not be counted because the per-source map was full is
    reported as lost, with a warning.

    With a PostgreSQL --store (the fleet), the hits go into this host's backlog (hits.db in
    the state folder) first, then the whole backlog is shipped under this host's resolver
    name. When the database cannot be reached, the hits stay in the backlog, nothing is
    lost, and the command fails saying how much waits; the next collect ships it.

    \b
    Examples:
      ccxdp collect
      ccxdp collect --json | jq .hits
      ccxdp collect --store postgresql://ccxdp@db.isp.example/ccxdp --resolver rs1
    """
    # Not app.datapath(): that holds the lock until the command ends, fold included.
    check_root()
    where = app.store(store_spec)
    name = check_resolver(resolver or default_resolver()) if where.fleet else None
    result = collect(Datapath(app.pin_dir, app.state_dir), where)
    shipped = None
    if name is not None:
        try:
            shipped = ship(where, name)
        except ShipFailed as e:
            emit(as_json, _collect_json(result, None, name), lambda: render_collect(result))
            batches, _counters, hits = e.backlog
            raise click.ClickException(
                f"the hits are in this host's backlog ({hits:,} hits in {batches:,} batches, "
                f"kept until shipped): {e}") from e
    emit(as_json, _collect_json(result, shipped, name), lambda: Group(
        render_collect(result), *([render_ship(shipped, name)] if shipped else [])))
    if result.lost:
        err_console().print(
            f"warning: {result.lost:,} blocked queries since the last collection could not be "
            f"counted per source: the per-source map was full. Collect more often, or make "
            f"the maps again with a larger --max-sources (detach --purge, attach).",
            markup=False, highlight=False,
        )


def register(group: click.Group) -> None:
    group.add_command(collect_cmd)
