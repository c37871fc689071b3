"""store init / migrate / status / forget-resolver: the hits store itself, above all the
fleet's PostgreSQL, whose schema only these commands make or change."""

from __future__ import annotations

import click
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ccxdp.cli.app import pass_app, store_option
from ccxdp.cli.output import emit, json_option
from ccxdp.hits.fleet import SCHEMA_VERSION, FleetStore
from ccxdp.hits.location import check_resolver
from ccxdp.hits.store import Store


@click.group("store")
def store_group():
    """The hits store: one resolver's SQLite file, or the fleet's PostgreSQL.

    A fleet store's schema is made by 'store init' and upgraded by 'store migrate', never
    by a collection. Every resolver ships its hits there under its own name ('collect
    --resolver', the daemon's collect.resolver); 'store status' lists them.

    \b
    Examples:
      ccxdp store init --store postgresql://ccxdp@db.isp.example/ccxdp
      ccxdp store status --store postgresql://ccxdp@db.isp.example/ccxdp
    """


def _fleet(app, store_spec: str | None, command: str):
    where = app.store(store_spec)
    if not where.fleet:
        raise click.UsageError(
            f"'store {command}' is for the fleet store: give --store postgresql://… (a SQLite "
            f"store makes and upgrades its schema itself)")
    return where


@store_group.command("init")
@store_option
@json_option
@pass_app
def store_init(app, store_spec, as_json):
    """Make the fleet store's schema in an empty PostgreSQL database (once).

    Safe to run again: a database that has the schema is left as it is.

    \b
    Examples:
      ccxdp store init --store postgresql://ccxdp@db.isp.example/ccxdp
    """
    where = _fleet(app, store_spec, "init")
    with FleetStore(where.spec, schema=False) as store:
        made = store.init()
        version = store.schema_version()
    emit(as_json, {"created": made, "schema": version}, lambda: Text(
        f"made the fleet store's schema (version {version})" if made else
        f"the fleet store has its schema already (version {version}): nothing changed"))


@store_group.command("migrate")
@store_option
@json_option
@pass_app
def store_migrate(app, store_spec, as_json):
    """Upgrade the fleet store's schema to this ccxdp's, step by step, in one transaction.

    \b
    Examples:
      ccxdp store migrate --store postgresql://ccxdp@db.isp.example/ccxdp
    """
    where = _fleet(app, store_spec, "migrate")
    with FleetStore(where.spec, schema=False) as store:
        old, new = store.migrate()
    emit(as_json, {"from": old, "to": new}, lambda: Text(
        f"upgraded the fleet store's schema from version {old} to {new}" if old != new else
        f"the fleet store's schema is version {new} already: nothing changed"))


@store_group.command("status")
@store_option
@json_option
@pass_app
def store_status(app, store_spec, as_json):
    """The store: its schema, its hits, this host's backlog, and the fleet's resolvers.

    \b
    Examples:
      ccxdp store status
      ccxdp store status --store postgresql://ccxdp@db.isp.example/ccxdp --json
    """
    where = app.store(store_spec)
    backlog = ships_to = None
    if where.local_file.exists():
        with Store(where.local_file) as local:
            backlog = dict(zip(("batches", "counters", "hits"), local.backlog(), strict=True))
            ships_to = local.ships_to()
    data = {"store": where.describe(), "fleet": where.fleet, "backlog": backlog,
            "ships_to": ships_to, "hits": None}
    if where.fleet:
        with FleetStore(where.spec) as store:
            data.update(schema=SCHEMA_VERSION, hits=store.total_hits(),
                        resolvers=store.resolvers())
    elif ships_to is None:  # a spool's hits are the fleet's to count
        with where.open_reader() as store:
            data.update(hits=store.total_hits())
    emit(as_json, data, lambda: _render_status(data))


def _render_status(data: dict) -> Group:
    lines = [Text(f"store: {data['store']}")]
    if data["hits"] is not None:
        lines.append(Text(f"hits: {data['hits']:,}"))
    if data["ships_to"] is not None and not data["fleet"]:
        lines.append(Text(f"this host ships its hits to the fleet store {data['ships_to']}"))
    if data["backlog"] is not None:
        b = data["backlog"]
        lines.append(Text(f"this host's backlog: {b['hits']:,} hits in {b['batches']:,} "
                          f"batches, not yet stored"))
    if data["fleet"]:
        table = Table(title=f"resolvers ({len(data['resolvers'])})", title_justify="left")
        for col in ("name", "hits", "last batch", "last epoch", "last shipped (UTC)",
                    "registered (UTC)"):
            table.add_column(col, justify="right" if col in ("hits", "last batch",
                                                             "last epoch") else "left")
        for r in data["resolvers"]:
            table.add_row(r["name"], f"{r['hits']:,}", str(r["shipped_batch"]),
                          str(r["shipped_epoch"] if r["shipped_epoch"] is not None else "-"),
                          r["shipped_at"] or "-", r["registered_at"])
        lines.append(table)
    return Group(*lines)


@store_group.command("forget-resolver")
@click.argument("name")
@store_option
@json_option
@pass_app
def store_forget_resolver(app, name, store_spec, as_json):
    """Unbind a resolver name from the host store it was shipping from; its hits stay.

    For a host rebuilt under its old name with a new state folder: the fleet refuses its
    ships until then, so two hosts never merge under one name by mistake.

    \b
    Examples:
      ccxdp store forget-resolver rs1 --store postgresql://ccxdp@db.isp.example/ccxdp
    """
    where = _fleet(app, store_spec, "forget-resolver")
    check_resolver(name)
    with FleetStore(where.spec) as store:
        forgot = store.forget_resolver(name)
    if not forgot:
        raise click.ClickException(f"no resolver named {name!r} in the fleet store")
    emit(as_json, {"forgot": name}, lambda: Text(
        f"forgot resolver {name}: the next host to ship under that name takes it"))


def register(group: click.Group) -> None:
    group.add_command(store_group)
