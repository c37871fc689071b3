"""block add / remove / list: the names the filter blocks, and what it does to their queries."""

from __future__ import annotations

import click
from rich.console import Group

from ccxdp.cli.app import pass_app
from ccxdp.cli.output import emit, err_console, json_option
from ccxdp.cli.render import feed_copies, render_changes, render_entries, render_feed_copies
from ccxdp.cli.types import ACTION, CATEGORY, DOMAIN
from ccxdp.datapath.hashing import name_hash
from ccxdp.policy import lists
from ccxdp.policy.catalog import ALLOW, BLOCK


def changes_json(changes, kind: str = BLOCK) -> list[dict]:
    out = []
    for c in changes:
        item = {"name": c.name, "status": c.status, "subtree": c.subtree}
        if kind == BLOCK:
            item.update(action=c.action, category=c.category)
        out.append(item)
    return out


def entries_json(entries, categories: dict[int, str], kind: str = BLOCK,
                 sources: dict | None = None, copies: dict | None = None) -> list[dict]:
    out = []
    for e in entries:
        item = {"name": e.name, "match": e.match}
        if kind == BLOCK:
            item.update(action=e.action, category=categories.get(e.category))
        item["added_at"] = e.added_at
        if sources is not None:
            listed = sources.get(e.hash, [])
            item["sources"] = [name for name, _ in listed]
            item["copies"] = {name: copies[name] for name, _ in listed if name in (copies or {})}
            seen = [when for _, when in listed if when]
            item["last_seen"] = max(seen) if seen else None
        out.append(item)
    return out


def note_not_loaded(dp, as_json: bool, what: str = "entries") -> None:
    if not dp.is_loaded() and not as_json:
        err_console().print(f"ccxdp is not loaded: the {what} take effect at the next attach")


@click.group()
def block():
    """Block entries: exact names, or whole subtrees, each with an action and a category.

    \b
    Examples:
      ccxdp block add evil.example
      ccxdp block add c2.example.net --subtree --action sinkhole --category emotet
      ccxdp block list --json
    """


@block.command("add")
@click.argument("names", nargs=-1, required=True, type=DOMAIN)
@click.option("--subtree", is_flag=True, help="Also block every name below each NAME.")
@click.option(
    "--action",
    type=ACTION,
    help="drop, nxdomain, nodata, sinkhole (or redirect), tc, refused or monitor. "
    "Default: the configured default_action, looked up at query time.",
)
@click.option("--category", type=CATEGORY, help="Malware family or feed, e.g. emotet.")
@click.option("--force", is_flag=True, help="With --subtree: block a top-level domain's "
              "subtree too (default: refuse it).")
@json_option
@pass_app
def block_add(app, names, subtree, action, category, force, as_json):
    """Block NAME (exactly, or with --subtree everything below it too).

    Names are case-insensitive; a trailing dot is ignored. An IP address is refused (the
    filter matches query names; 'exempt add' takes sources), and so is the subtree of a
    top-level domain (com, a ccTLD) unless --force. Adding a listed name again
    replaces its match, action and category. Without --action the entry follows the
    configured default action ('ccxdp config set default_action ...'). Takes effect at once
    where the filter is loaded, otherwise at the next attach.

    \b
    Examples:
      ccxdp block add evil.example
      ccxdp block add c2.example.net --subtree
      ccxdp block add c2.example.org --action sinkhole --category emotet
    """
    dp = app.datapath()
    catalog = app.catalog()
    changes = lists.add(dp, catalog, names, subtree, action or "default", category,
                        force=force)
    emit(as_json, changes_json(changes), lambda: render_changes(changes))
    note_not_loaded(dp, as_json)
    if not as_json:
        key = dp.hash_key()
        allowed = [c.name for c in changes
                   if catalog.get(name_hash(c.name, key), ALLOW) is not None]
        if allowed:
            err_console().print(f"also allow-listed, so the allow entries decide: "
                                f"{', '.join(allowed)}")


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
    changes = lists.remove(app.datapath(), app.catalog(), names)
    emit(as_json, changes_json(changes), lambda: render_changes(changes))
    missing = [c.name for c in changes if c.status == "not listed"]
    if missing:
        raise click.ClickException(f"not listed: {', '.join(missing)}")


@block.command("list")
@click.option("--sources", "with_sources", is_flag=True,
              help="Also show which sources (manual, feeds) list each name, when a feed "
              "listing it was last synced, and what a fetched feed's copy is (a zone's "
              "serial, a URL's ETag and Last-Modified).")
@json_option
@pass_app
def block_list(app, with_sources, as_json):
    """List the block entries, with action and category.

    \b
    Examples:
      ccxdp block list --json
      ccxdp block list --sources
    """
    catalog = app.catalog()
    entries = catalog.entries(BLOCK)
    categories = catalog.categories()
    sources = lists.sources_of(catalog) if with_sources else None
    copies = feed_copies(catalog.sources()) if with_sources else {}

    def render():
        table = render_entries(entries, categories, BLOCK, sources)
        return Group(table, render_feed_copies(copies)) if copies else table

    emit(as_json, entries_json(entries, categories, BLOCK, sources, copies), render)


def register(group: click.Group) -> None:
    from .feed import block_export_command, block_import_command

    block.add_command(block_import_command())
    block.add_command(block_export_command())
    group.add_command(block)
