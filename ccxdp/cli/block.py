"""block add / remove / list: the names the filter blocks."""

from __future__ import annotations

import click

from .. import blocklist
from ..render import render_changes, render_entries
from . import pass_app
from .output import emit, err_console, json_option
from .types import DOMAIN


def _changes_json(changes) -> list[dict]:
    return [{"name": c.name, "status": c.status, "subtree": c.subtree} for c in changes]


@click.group()
def block():
    """Block entries: exact names, or whole subtrees.

    \b
    Examples:
      ccxdp block add evil.example
      ccxdp block add c2.example.net --subtree
      ccxdp block list --json
    """


@block.command("add")
@click.argument("names", nargs=-1, required=True, type=DOMAIN)
@click.option("--subtree", is_flag=True, help="Also block every name below each NAME.")
@json_option
@pass_app
def block_add(app, names, subtree, as_json):
    """Block NAME (exactly, or with --subtree everything below it too).

    Names are case-insensitive; a trailing dot is ignored. Takes effect at once where the
    filter is loaded, otherwise at the next attach.

    \b
    Examples:
      ccxdp block add evil.example
      ccxdp block add c2.example.net --subtree
    """
    dp = app.datapath()
    changes = blocklist.add(dp, app.catalog(), names, subtree)
    emit(as_json, _changes_json(changes), lambda: render_changes(changes))
    if not dp.is_loaded() and not as_json:
        err_console().print("ccxdp is not loaded: the entries take effect at the next attach")


@block.command("remove")
@click.argument("names", nargs=-1, required=True, type=DOMAIN)
@json_option
@pass_app
def block_remove(app, names, as_json):
    """Stop blocking NAME.

    \b
    Example:
      ccxdp block remove evil.example
    """
    changes = blocklist.remove(app.datapath(), app.catalog(), names)
    emit(as_json, _changes_json(changes), lambda: render_changes(changes))
    missing = [c.name for c in changes if c.status == "not listed"]
    if missing:
        raise click.ClickException(f"not listed: {', '.join(missing)}")


@block.command("list")
@json_option
@pass_app
def block_list(app, as_json):
    """List the block entries.

    \b
    Example:
      ccxdp block list --json
    """
    entries = app.catalog().entries()
    data = [
        {
            "name": e.name,
            "match": "subtree" if e.subtree else "exact",
            "action": e.action,
            "category": e.category,
            "added_at": e.added_at,
        }
        for e in entries
    ]
    emit(as_json, data, lambda: render_entries(entries))


def register(group: click.Group) -> None:
    group.add_command(block)
