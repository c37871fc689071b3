"""exempt add / remove / list: opted-out source prefixes, neither filtered nor counted."""

from __future__ import annotations

import ipaddress

import click

from ccxdp.cli.app import pass_app
from ccxdp.cli.block import note_not_loaded
from ccxdp.cli.output import emit, json_option
from ccxdp.cli.render import render_exempt, render_prefix_changes
from ccxdp.cli.types import PREFIX
from ccxdp.policy import exempt as exempt_lib


def _changes_json(changes) -> list[dict]:
    return [{"prefix": c.prefix, "status": c.status} for c in changes]


@click.group()
def exempt():
    """Exempt source prefixes: opted-out lines, whose queries are neither judged nor counted.

    IPv4 and IPv6, any prefix length; a bare address is a /32 or /128. Only the global
    'exempt' counter of 'ccxdp stats' moves for their queries.

    \b
    Examples:
      ccxdp exempt add 198.18.7.0/24 fd00:7::/64
      ccxdp exempt list --json
    """


@exempt.command("add")
@click.argument("prefixes", nargs=-1, required=True, type=PREFIX)
@json_option
@pass_app
def exempt_add(app, prefixes, as_json):
    """Exempt sources in PREFIX from filtering and counting.

    Host bits must be clear (198.18.7.0/24, not 198.18.7.1/24). Takes effect at once where
    the filter is loaded, otherwise at the next attach.

    \b
    Examples:
      ccxdp exempt add 198.18.7.0/24
      ccxdp exempt add 198.18.0.9 fd00:7::/64
    """
    dp = app.datapath()
    changes = exempt_lib.add(dp, app.catalog(), prefixes)
    emit(as_json, _changes_json(changes), lambda: render_prefix_changes(changes))
    note_not_loaded(dp, as_json, "prefixes")


@exempt.command("remove")
@click.argument("prefixes", nargs=-1, required=True, type=PREFIX)
@json_option
@pass_app
def exempt_remove(app, prefixes, as_json):
    """Filter and count sources in PREFIX again (exactly the prefix as it was added).

    \b
    Example:
      ccxdp exempt remove 198.18.7.0/24
    """
    changes = exempt_lib.remove(app.datapath(), app.catalog(), prefixes)
    emit(as_json, _changes_json(changes), lambda: render_prefix_changes(changes))
    missing = [c.prefix for c in changes if c.status == "not listed"]
    if missing:
        raise click.ClickException(f"not exempt: {', '.join(missing)}")


@exempt.command("list")
@json_option
@pass_app
def exempt_list(app, as_json):
    """List the exempt prefixes.

    \b
    Example:
      ccxdp exempt list --json
    """
    entries = exempt_lib.sorted_entries(app.catalog())
    data = [
        {"prefix": e.prefix, "family": ipaddress.ip_network(e.prefix).version,
         "added_at": e.added_at}
        for e in entries
    ]
    emit(as_json, data, lambda: render_exempt(entries))


def register(group: click.Group) -> None:
    group.add_command(exempt)
