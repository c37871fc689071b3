"""plan add / remove / list: the subscriber address plan, the prefixes subscribers' queries
come from; hits from any other source are counted only globally."""

from __future__ import annotations

import ipaddress

import click

from ccxdp.cli.app import pass_app
from ccxdp.cli.block import note_not_loaded
from ccxdp.cli.output import emit, json_option
from ccxdp.cli.render import render_plan, render_prefix_changes
from ccxdp.cli.types import PLAN_PREFIX
from ccxdp.policy import plan as plan_lib


def _changes_json(changes) -> list[dict]:
    return [{"prefix": c.prefix, "status": c.status} for c in changes]


@click.group()
def plan():
    """The subscriber address plan: the prefixes your subscribers' queries come from.

    Declare every pool, IPv4 and IPv6, as the resolver's access control lists them. A
    blocked query from outside the plan is still blocked, but counted only in the global
    'outside_plan' counter of 'ccxdp stats', never per source: spoofed sources cannot fill
    the per-source map or get a line notified. With no plan, every source is counted per
    source ('ccxdp status' says which applies).

    \b
    Examples:
      ccxdp plan add 198.18.0.0/15 2001:db8::/32
      ccxdp plan remove 198.18.0.0/15
      ccxdp plan list --json
    """


@plan.command("add")
@click.argument("prefixes", nargs=-1, required=True, type=PLAN_PREFIX)
@json_option
@pass_app
def plan_add(app, prefixes, as_json):
    """Count hits from sources in PREFIX per source; the first prefix added makes every
    other source outside the plan.

    Host bits must be clear (198.18.0.0/15, not 198.18.0.1/15). Takes effect at once where
    the filter is loaded, otherwise at the next attach.

    \b
    Examples:
      ccxdp plan add 198.18.0.0/15
      ccxdp plan add 100.64.0.0/10 2001:db8::/32 fd00::/8
    """
    dp = app.datapath()
    changes = plan_lib.add(dp, app.catalog(), prefixes)
    emit(as_json, _changes_json(changes), lambda: render_prefix_changes(changes))
    note_not_loaded(dp, as_json, "prefixes")


@plan.command("remove")
@click.argument("prefixes", nargs=-1, required=True, type=PLAN_PREFIX)
@json_option
@pass_app
def plan_remove(app, prefixes, as_json):
    """Take PREFIX out of the plan (exactly the prefix as it was added); once the last one
    is gone, every source is counted per source again.

    \b
    Example:
      ccxdp plan remove 198.18.0.0/15
    """
    changes = plan_lib.remove(app.datapath(), app.catalog(), prefixes)
    emit(as_json, _changes_json(changes), lambda: render_prefix_changes(changes))
    missing = [c.prefix for c in changes if c.status == "not listed"]
    if missing:
        raise click.ClickException(f"not in the plan: {', '.join(missing)}")


@plan.command("list")
@json_option
@pass_app
def plan_list(app, as_json):
    """List the plan's prefixes (none: every source is counted per source).

    \b
    Example:
      ccxdp plan list --json
    """
    entries = plan_lib.sorted_entries(app.catalog())
    data = [{"prefix": e.prefix, "family": ipaddress.ip_network(e.prefix).version,
             "added_at": e.added_at} for e in entries]
    emit(as_json, data, lambda: render_plan(entries))


def register(group: click.Group) -> None:
    group.add_command(plan)
