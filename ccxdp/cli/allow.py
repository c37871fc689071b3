"""allow add / remove / list: names that are never blocked."""

from __future__ import annotations

import click

from ccxdp.cli.app import pass_app
from ccxdp.cli.block import changes_json, entries_json, note_not_loaded
from ccxdp.cli.output import emit, json_option
from ccxdp.cli.render import render_changes, render_entries
from ccxdp.cli.types import DOMAIN
from ccxdp.policy import lists
from ccxdp.policy.catalog import ALLOW


@click.group()
def allow():
    """Allow entries: names (or subtrees) passed to the resolver whatever blocks them.

    An allow entry beats every block entry of the same name or of a shorter suffix: allow
    cdn.evil.example and block the subtree evil.example, and only cdn.evil.example passes.
    A longer (more specific) block entry still beats it.

    \b
    Examples:
      ccxdp allow add cdn.evil.example
      ccxdp allow add partner.example --subtree
      ccxdp allow list --json
    """


@allow.command("add")
@click.argument("names", nargs=-1, required=True, type=DOMAIN)
@click.option("--subtree", is_flag=True, help="Also allow every name below each NAME.")
@click.option("--force", is_flag=True, help="With --subtree: allow a top-level domain's "
              "subtree too (default: refuse it).")
@json_option
@pass_app
def allow_add(app, names, subtree, force, as_json):
    """Allow NAME (exactly, or with --subtree everything below it too).

    An IP address is refused, and so is the subtree of a top-level domain unless --force
    (it would let every name under it through, whatever is blocked).

    Adding a listed name again replaces its match. A block entry of the same name stays
    listed and comes back into force when the allow entry is removed. An exact allow entry
    on a blocked subtree of the same name allows that name only: the names below it stay
    blocked.

    \b
    Examples:
      ccxdp allow add cdn.evil.example
      ccxdp allow add partner.example --subtree
    """
    dp = app.datapath()
    changes = lists.add(dp, app.catalog(), names, subtree, kind=ALLOW, force=force)
    emit(as_json, changes_json(changes, ALLOW), lambda: render_changes(changes))
    note_not_loaded(dp, as_json)


@allow.command("remove")
@click.argument("names", nargs=-1, required=True, type=DOMAIN)
@json_option
@pass_app
def allow_remove(app, names, as_json):
    """Stop allowing NAME; a block entry of the same name takes effect again.

    \b
    Example:
      ccxdp allow remove cdn.evil.example
    """
    changes = lists.remove(app.datapath(), app.catalog(), names, kind=ALLOW)
    emit(as_json, changes_json(changes, ALLOW), lambda: render_changes(changes))
    missing = [c.name for c in changes if c.status == "not listed"]
    if missing:
        raise click.ClickException(f"not allow-listed: {', '.join(missing)}")


@allow.command("list")
@json_option
@pass_app
def allow_list(app, as_json):
    """List the allow entries.

    \b
    Example:
      ccxdp allow list --json
    """
    entries = app.catalog().entries(ALLOW)
    emit(as_json, entries_json(entries, {}, ALLOW), lambda: render_entries(entries, kind=ALLOW))


def register(group: click.Group) -> None:
    group.add_command(allow)
