"""stats: the kernel's counters, exactly."""

from __future__ import annotations

import click

from ccxdp.cli.app import pass_app
from ccxdp.cli.output import emit, json_option
from ccxdp.cli.render import render_stats
from ccxdp.hits.stats import read_stats


@click.command()
@json_option
@pass_app
def stats(app, as_json):
    """Show frames per outcome, malformed reasons and blocked queries per source.

    The per-source hits are those the kernel holds: counted since the last 'ccxdp collect',
    which moves them into the hits store.

    \b
    Examples:
      ccxdp stats
      ccxdp stats --json | jq .outcomes.blocked
    """
    snap = read_stats(app.datapath())
    categories = app.catalog().categories()
    data = snap.to_json()
    for source in data["sources"]:
        source["category_name"] = categories.get(source["category"])
    emit(as_json, data, lambda: render_stats(snap, categories))


def register(group: click.Group) -> None:
    group.add_command(stats)
