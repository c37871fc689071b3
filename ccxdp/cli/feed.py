"""feed add / list / sync / remove, and the import and export of lists (block import|export):
threat feeds as named sources, refreshed by difference."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ccxdp.cli.app import pass_app
from ccxdp.cli.output import console, emit, err_console, json_option
from ccxdp.cli.types import ACTION, CATEGORY, PRIMARY, ZONE
from ccxdp.errors import CcxdpError
from ccxdp.policy import feeds, formats, transfer
from ccxdp.policy.catalog import BLOCK, KINDS

FORMAT = click.Choice(["auto", *formats.FORMATS])


@contextmanager
def progress_steps(as_json: bool, files: int = 1):
    """A progress bar over the steps of an import (read, hash, write the catalog and the
    kernel), each named as it starts; on a terminal only, never with --json."""
    if as_json or not sys.stderr.isatty():
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description:<44}"), BarColumn(),
               TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console(), transient=True) as bar:
        task = bar.add_task("starting", total=feeds.STEPS * files)
        started = [False]

        def step(text: str) -> None:
            bar.update(task, description=text, advance=1 if started[0] else 0)
            started[0] = True

        yield step


def result_json(r: feeds.ImportResult) -> dict:
    a = r.applied
    return {
        "source": r.source,
        "path": r.path,
        "format": r.format,
        "entries": r.entries,
        "duplicates": r.duplicates,
        "skipped": r.skipped,
        "bad_lines": [str(b) for b in r.bad],
        "unchanged": r.unchanged,
        "lines_parsed": r.lines_read,
        "added": dict(a.added) if a else dict.fromkeys(KINDS, 0),
        "removed": dict(a.removed) if a else dict.fromkeys(KINDS, 0),
        "changed": dict(a.changed) if a else dict.fromkeys(KINDS, 0),
        "kernel_names": a.kernel_names if a else None,
        "seconds": round(r.seconds, 3),
        "provenance": r.provenance,
    }


def render_result(r: feeds.ImportResult) -> Table:
    j = result_json(r)
    t = Table(title=f"{r.source}: {r.path}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    rows = [("format", r.format), ("entries in the file", f"{r.entries:,}")]
    p = r.provenance or {}
    if "serial" in p:
        rows.append(("zone, serial", f"{p['zone']}, {p['serial']}"))
        rows.append(("last transfer", f"{p['transfer']} at {p['transferred_at']}"))
    if r.lines_read is not None:
        rows.append(("lines parsed", f"{r.lines_read:,} (new since the last sync)"))
    if r.unchanged:
        rows.append(("changes", "none: the zone is up to date" if "serial" in p
                     else "none: the file is as at the last sync"))
    else:
        for what in ("added", "removed", "changed"):
            rows.append((f"{what} (block / allow)",
                         f"{j[what]['block']:,} / {j[what]['allow']:,}"))
    rows.append(("duplicate lines merged", f"{r.duplicates:,}"))
    for reason, count in sorted(r.skipped.items()):
        rows.append((f"skipped: {reason}", f"{count:,}"))
    rows.append(("bad lines skipped", f"{len(r.bad):,}"))
    if j["kernel_names"] is not None:
        rows.append(("names in the kernel", f"{j['kernel_names']:,}"))
    rows.append(("time", f"{r.seconds:.2f} s"))
    for k, v in rows:
        t.add_row(k, v)
    return t


def report(r: feeds.ImportResult, as_json: bool) -> None:
    emit(as_json, result_json(r), lambda: render_result(r))
    if r.bad and not as_json:
        for b in r.bad:
            err_console().print(str(b), markup=False, highlight=False)


def source_options(f):
    f = click.option("--skip-invalid", is_flag=True,
                     help="Import the good lines and list the bad ones (default: refuse the "
                     "whole file if a line is bad).")(f)
    f = click.option("--category", type=CATEGORY, help="Category of the entries.")(f)
    f = click.option("--action", type=ACTION,
                     help="Action of entries the file gives none (RPZ gives its own). "
                     "Default: the configured default_action.")(f)
    f = click.option("--column", help="CSV: the column holding names or URLs (header name or "
                     "1-based number).")(f)
    f = click.option("--format", "fmt", type=FORMAT, default="auto", show_default=True,
                     help="File format; auto detects it from the content.")(f)
    return f


@click.group()
def feed():
    """Threat feeds: files of C&C names, each a named source, refreshed by difference.

    \b
    Examples:
      ccxdp feed add threatfox /var/lib/feeds/threatfox.csv --column ioc_value
      ccxdp feed add urlhaus-rpz /var/lib/feeds/urlhaus.rpz
      ccxdp feed sync
      ccxdp feed list
      ccxdp feed remove urlhaus-rpz
    """


def zone_options(f):
    f = click.option("--tsig", type=click.Path(path_type=Path, dir_okay=False),
                     help="With --primary: sign the transfers with this TSIG key (BIND's "
                     "keyfile, as tsig-keygen writes it, or Knot's).")(f)
    f = click.option("--zone", type=ZONE, help="With --primary: the RPZ zone to transfer.")(f)
    f = click.option("--primary", type=PRIMARY,
                     help="Transfer the feed from this primary server (ADDRESS[:PORT]) instead "
                     "of reading PATH: AXFR first, IXFR after.")(f)
    return f


@feed.command("add")
@click.argument("name")
@click.argument("path", required=False, type=click.Path(path_type=Path, dir_okay=False))
@source_options
@zone_options
@json_option
@pass_app
def feed_add(app, name, path, fmt, column, action, category, skip_invalid, primary, zone,
             tsig, as_json):
    """Register the feed NAME read from PATH (or transferred from --primary), and load it.

    Its entries get --action (unless the file names one, as RPZ does) and --category
    (default: the feed's name). A name several sources list stays listed until all drop it;
    entries added by hand win over feeds, and earlier feeds over later ones.

    With --primary and --zone, the feed is an RPZ zone on that server: the last good copy
    is kept in the state folder, and 'feed sync' (or the daemon, on the SOA's timers and on
    NOTIFY) transfers what changed. A failed transfer changes nothing.

    \b
    Examples:
      ccxdp feed add abuse-domains /srv/feeds/domains.txt --action nxdomain
      ccxdp feed add rpz-cc --primary 192.0.2.53:5300 --zone rpz.example
    """
    if (path is None) == (primary is None):
        raise click.UsageError("give the feed's PATH, or --primary and --zone (not both)")
    if primary is None and (zone or tsig):
        raise click.UsageError("--zone and --tsig go with --primary")
    if primary is not None and (zone is None or fmt != "auto" or column):
        raise click.UsageError("--primary needs --zone, and takes no --format or --column "
                               "(a zone is RPZ)")
    if tsig is not None:
        try:  # read here, not by the parameter type: examples name key files not present
            tsig = transfer.read_tsig(tsig)
        except CcxdpError as e:
            raise click.BadParameter(str(e), param_hint="'--tsig'") from None
        if tsig.warning:
            err_console().print(f"warning: {tsig.warning}", markup=False, highlight=False)
    with progress_steps(as_json) as step:
        if primary is not None:
            origin = transfer.ZoneOrigin(primary, zone, tsig.path if tsig else None)
            r = transfer.add_zone_feed(app.datapath(), app.catalog(), name, origin, action,
                                       category, skip_invalid, step)
        else:
            r = feeds.add_feed(app.datapath(), app.catalog(), name, path, fmt, column,
                               action, category, skip_invalid, step)
    report(r, as_json)


@feed.command("sync")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Read the file even if it has not changed (a "
              "zone: transfer it whole, AXFR).")
@json_option
@pass_app
def feed_sync(app, names, force, as_json):
    """Read feeds again (all, or the NAMES given) and apply what changed.

    Only the difference against what each feed listed is written, in one atomic swap of the
    kernel's list: names that stay listed are never unlisted for a moment. A zone feed is
    transferred now (IXFR from the serial applied).

    \b
    Examples:
      ccxdp feed sync
      ccxdp feed sync threatfox
    """
    catalog = app.catalog()
    wanted = list(names) or [s.name for s in catalog.sources() if s.is_feed]
    results = []
    with progress_steps(as_json, max(len(wanted), 1)) as step:
        for name in wanted:
            results.append(transfer.sync(app.datapath(), catalog, name, step, force))
    if as_json:
        emit(True, [result_json(r) for r in results], None)
        return
    for r in results:
        report(r, False)
    if not results:
        err_console().print("no feeds ('ccxdp feed add NAME PATH' adds one)")


@feed.command("list")
@json_option
@pass_app
def feed_list(app, as_json):
    """List the feeds: file (or zone, serial, last transfer), format, action, category,
    names listed, last sync.

    \b
    Example:
      ccxdp feed list --json
    """
    catalog = app.catalog()
    categories = catalog.categories()
    counts = feeds.feed_counts(catalog)
    rows = [
        {"name": s.name, "path": s.path, "format": s.format, "column": s.column,
         "action": s.action, "category": categories.get(s.category),
         "skip_invalid": s.skip_invalid, "block": counts[s.id]["block"],
         "allow": counts[s.id]["allow"], "added_at": s.added_at, "synced_at": s.synced_at,
         "origin": s.origin, "provenance": s.provenance}
        for s in catalog.sources() if s.is_feed
    ]

    zones = any((r["origin"] or {}).get("kind") == transfer.ZONE for r in rows)

    def table() -> Table:
        t = Table(title="feeds")
        columns = ["name", "path", "format", "action", "category", "block", "allow",
                   "synced_at"]
        if zones:
            columns[1:2] = ["path or zone", "serial", "last transfer"]
        for col in columns:
            t.add_column(col, justify="right" if col in ("block", "allow", "serial")
                         else "left")
        for r in rows:
            p = r["provenance"] or {}
            cells = [r["name"], where(r), r["format"], r["action"], r["category"] or "-",
                     f"{r['block']:,}", f"{r['allow']:,}", r["synced_at"] or "-"]
            if zones:
                last = (f"{p['transfer']} {p['transferred_at']}" if p.get("transferred_at")
                        else "-")
                cells[2:2] = [str(p.get("serial", "-")), last]
            t.add_row(*cells)
        return t

    emit(as_json, rows, table)


def where(row: dict) -> str:
    """A feed's file, or for a zone feed its zone and primary."""
    o = row["origin"] or {}
    if o.get("kind") != transfer.ZONE:
        return row["path"]
    return f"{o['zone']} from {transfer.Primary(o['primary'], o['port'])}"


@feed.command("remove")
@click.argument("name")
@json_option
@pass_app
def feed_remove(app, name, as_json):
    """Remove the feed NAME: names no other source lists stop being listed.

    \b
    Example:
      ccxdp feed remove threatfox
    """
    a = feeds.remove_feed(app.datapath(), app.catalog(), name)
    data = {"feed": name, "removed": dict(a.removed), "changed": dict(a.changed),
            "kernel_names": a.kernel_names}
    emit(as_json, data, lambda: f"feed {name} removed: {a.removed['block']:,} block and "
         f"{a.removed['allow']:,} allow entries no other source lists are gone")


def block_import_command():
    @click.command("import")
    @click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
    @source_options
    @click.option("--replace", is_flag=True,
                  help="Make the file the whole list of entries added by hand (default: add "
                  "to them).")
    @json_option
    @pass_app
    def block_import(app, path, fmt, column, action, category, skip_invalid, replace, as_json):
        """Import a file of names once, as entries added by hand (no feed is registered).

        The swap is atomic: during it, names listed before and after stay blocked, and
        afterwards removed names are no longer matched. A file with a bad line changes
        nothing unless --skip-invalid.

        \b
        Examples:
          ccxdp block import c2-names.txt --category emotet
          ccxdp block import blocklist.hosts --replace
        """
        with progress_steps(as_json) as step:
            r = feeds.import_file(app.datapath(), app.catalog(), path, fmt, column, action,
                                  category, skip_invalid, replace, step)
        report(r, as_json)

    return block_import


def block_export_command():
    @click.command("export")
    @click.option("--format", "fmt", type=click.Choice(formats.FORMATS), default="plain",
                  show_default=True, help="File format to write.")
    @click.option("--allow", "with_allow", is_flag=True, help="Include allow entries.")
    @click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
                  help="Write to this file (default: standard output).")
    @pass_app
    def block_export(app, fmt, with_allow, output):
        """Write the listed names in a feed format, readable back by 'block import'.

        \b
        Examples:
          ccxdp block export -o names.txt
          ccxdp block export --format rpz --allow -o ccxdp.rpz
        """
        catalog = app.catalog()
        categories = catalog.categories()
        entries = catalog.entries(kind=None if with_allow else BLOCK)
        # What a format cannot hold is left out, and said: only CSV keeps categories, only
        # CSV and RPZ keep actions (RPZ needs one for every entry: the configured default
        # stands in for "default").
        keeps_action = fmt in ("csv", "rpz")
        default = app.datapath().settings().default_action if fmt == "rpz" else None
        dropped = 0

        def item(e):
            nonlocal dropped
            action = None if e.action in ("default", "allow") else e.action
            if fmt == "rpz" and e.kind == BLOCK and action is None:
                action = default
            category = categories.get(e.category)
            if (category and fmt != "csv") or (action and not keeps_action):
                dropped += 1
            return formats.ExportEntry(e.name, e.kind, e.match,
                                           action if keeps_action else None,
                                           category if fmt == "csv" else None)

        lines = list(formats.export_feed((item(e) for e in entries), fmt))
        text = "".join(line + "\n" for line in lines)
        if output:
            tmp = output.with_name(f".{output.name}.tmp")
            tmp.write_text(text)
            tmp.replace(output)  # a failed export leaves no half-written file
            console().print(f"{len(entries):,} entries written to {output}")
        else:
            sys.stdout.write(text)
        if dropped:
            err_console().print(
                f"{fmt} keeps {'no categories' if keeps_action else 'no actions or categories'}"
                f": {dropped:,} entries were written without theirs (csv keeps every field)")

    return block_export


def register(group: click.Group) -> None:
    group.add_command(feed)
