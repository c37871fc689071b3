"""exempt add / remove / list: opted-out source prefixes, neither filtered nor counted;
exempt line add / remove / list / sync: opt-out by line, following the line's sessions."""

from __future__ import annotations

import ipaddress

import click

from ccxdp.cli.app import opt_out_store, pass_app, store_option
from ccxdp.cli.block import note_not_loaded
from ccxdp.cli.output import emit, json_option
from ccxdp.cli.render import (
    render_exempt,
    render_line_changes,
    render_line_results,
    render_opt_outs,
    render_prefix_changes,
)
from ccxdp.cli.types import LINE_ID, PREFIX, sessions_options
from ccxdp.policy import exempt as exempt_lib
from ccxdp.policy import line_exempt


def _changes_json(changes) -> list[dict]:
    return [{"prefix": c.prefix, "status": c.status} for c in changes]


@click.group()
def exempt():
    """Exempt source prefixes: opted-out lines, whose queries are neither judged nor counted.

    IPv4 and IPv6, any prefix length; a bare address is a /32 or /128. Only the global
    'exempt' counter of 'ccxdp stats' moves for their queries. 'exempt add' pins fixed
    ranges; 'exempt line' opts a line out by its id, and the prefixes follow the addresses
    the line holds ('ccxdp run' with [sessions], or 'exempt line sync').

    \b
    Examples:
      ccxdp exempt add 198.18.7.0/24 fd00:7::/64
      ccxdp exempt line add L-1001
      ccxdp exempt list --json
    """


@exempt.command("add")
@click.argument("prefixes", nargs=-1, required=True, type=PREFIX)
@click.option("--force", is_flag=True, help="Exempt prefixes shorter than /8 (IPv4) or /16 "
              "(IPv6) too (default: refuse them; 0.0.0.0/0 would turn filtering off).")
@json_option
@pass_app
def exempt_add(app, prefixes, force, as_json):
    """Exempt sources in PREFIX from filtering and counting.

    Host bits must be clear (198.18.7.0/24, not 198.18.7.1/24). A prefix shorter than /8
    (IPv4) or /16 (IPv6) covers more than any ISP's own ranges: it needs --force. Takes
    effect at once where the filter is loaded, otherwise at the next attach.

    \b
    Examples:
      ccxdp exempt add 198.18.7.0/24
      ccxdp exempt add 198.18.0.9 fd00:7::/64
    """
    dp = app.datapath()
    changes = exempt_lib.add(dp, app.catalog(), prefixes, force)
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
    held = exempt_lib.sorted_line_entries(app.catalog())
    data = [
        {"prefix": e.prefix, "family": ipaddress.ip_network(e.prefix).version,
         "added_at": e.added_at, "line": getattr(e, "line", None)}
        for e in [*entries, *held]
    ]
    emit(as_json, data, lambda: render_exempt(entries, held))


# -- by line ---------------------------------------------------------------------------------

@exempt.group("line")
def exempt_line():
    """Opt-out by line id: the line is never notified, and the addresses it holds are exempt.

    The opt-out list lives in the hits store (--store): in a fleet, the PostgreSQL store
    every resolver's daemon and the notify host read. The prefixes follow the line's
    sessions: 'ccxdp run' with a [sessions] table keeps them current (docs/daemon.md);
    'exempt line sync' does it once. 'exempt list' shows them with their line.

    \b
    Examples:
      ccxdp exempt line add L-1001 L-1002
      ccxdp exempt line sync --sessions radius.csv --leases dhcpd.leases
      ccxdp exempt line list --json
    """


@exempt_line.command("add")
@click.argument("lines", nargs=-1, required=True, type=LINE_ID)
@store_option
@json_option
@pass_app
def line_add(app, lines, store_spec, as_json):
    """Opt lines out: never notified; their addresses exempt from the next sync on.

    \b
    Example:
      ccxdp exempt line add L-1001
    """
    lines = list(dict.fromkeys(lines))
    added = set(opt_out_store(app, store_spec).opt_out(lines))
    results = [(line, "added" if line in added else "unchanged") for line in lines]
    emit(as_json, [{"line": line, "status": s} for line, s in results],
         lambda: render_line_results(results))


@exempt_line.command("remove")
@click.argument("lines", nargs=-1, required=True, type=LINE_ID)
@store_option
@json_option
@pass_app
def line_remove(app, lines, store_spec, as_json):
    """Opt lines back in: filtered, counted and notified again; the prefixes they hold leave
    the exempt set at once.

    \b
    Example:
      ccxdp exempt line remove L-1001
    """
    lines = list(dict.fromkeys(lines))
    removed = set(opt_out_store(app, store_spec).opt_in(lines))
    if removed:
        line_exempt.drop_lines(app.datapath(), app.catalog(), removed)
    results = [(line, "removed" if line in removed else "not listed") for line in lines]
    emit(as_json, [{"line": line, "status": s} for line, s in results],
         lambda: render_line_results(results))
    missing = [line for line, s in results if s == "not listed"]
    if missing:
        raise click.ClickException(f"not opted out: {', '.join(map(repr, missing))}")


@exempt_line.command("list")
@store_option
@json_option
@pass_app
def line_list(app, store_spec, as_json):
    """List the opted-out lines and since when.

    \b
    Example:
      ccxdp exempt line list --json
    """
    opted = opt_out_store(app, store_spec).opted_out()
    emit(as_json, [{"line": line, "since": since} for line, since in opted.items()],
         lambda: render_opt_outs(opted))


@exempt_line.command("sync")
@sessions_options
@click.option("--radacct", "radacct_uri", metavar="URI",
              help="FreeRADIUS's radacct table in PostgreSQL: a libpq URI without a password.")
@click.option("--radacct-line-id", default=line_exempt.DEFAULT_RADACCT_LINE_ID,
              show_default=True, help="The radacct column that names the line.")
@store_option
@json_option
@pass_app
def line_sync(app, sessions, leases, line_id_from, radacct_uri, radacct_line_id, store_spec,
              as_json):
    """Exempt exactly the addresses opted-out lines hold now, from these sessions sources.

    A session is current from its start until its stop. Every source is read whole before
    anything changes; static prefixes ('exempt add') are never touched. 'ccxdp run' does
    the same continuously.

    \b
    Examples:
      ccxdp exempt line sync --sessions radius.csv
      ccxdp exempt line sync --leases /var/lib/dhcp/dhcpd.leases --line-id-from remote-id
      ccxdp exempt line sync --radacct postgresql://ccxdp@radius-db/radius --json
    """
    if not (sessions or leases or radacct_uri):
        raise click.UsageError("give at least one of --sessions, --leases, --radacct")
    radacct = (line_exempt.Radacct(radacct_uri, radacct_line_id) if radacct_uri
               else None)  # fmt: skip
    opted = set(opt_out_store(app, store_spec).opted_out())
    dp = app.datapath()
    r = line_exempt.sync(dp, app.catalog(), opted, sessions, leases, line_id_from, radacct)
    data = {"changes": [{"prefix": c.prefix, "line": c.line, "status": c.status}
                        for c in r.changes],
            "prefixes": len(r.prefixes), "sessions": r.sessions, "opted_out": r.opted_out}
    emit(as_json, data, lambda: render_line_changes(r.changes, len(r.prefixes)))
    note_not_loaded(dp, as_json, "prefixes")


def register(group: click.Group) -> None:
    group.add_command(exempt)
