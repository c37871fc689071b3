"""feed add / list / sync / remove, and the import and export of lists (block import|export):
threat feeds as named sources, refreshed by difference."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Group
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from ccxdp import sqlite
from ccxdp.cli.app import pass_app
from ccxdp.cli.output import console, emit, err_console, json_option
from ccxdp.cli.types import ACTION, CATEGORY, PRIMARY, ZONE
from ccxdp.errors import CcxdpError
from ccxdp.inputs import shown
from ccxdp.policy import download, feeds, formats, transfer
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


def result_json(r: feeds.ImportResult, show_skipped: bool = False) -> dict:
    a = r.applied
    listed = {"skipped_lines": [skipped_json(b) for b in r.skipped_lines]} if show_skipped else {}
    return {
        **listed,
        "source": r.source,
        "path": r.path,
        "format": r.format,
        "column": r.column,
        "entries": r.entries,
        "duplicates": r.duplicates,
        "skipped": r.skipped,
        "kept": r.kept,
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


def skipped_json(b: formats.BadLine) -> dict:
    return {"line": b.line, "reason": b.reason, "value": b.value}


def fetched_lines(provenance: dict | None) -> list[tuple[str, str]]:
    """A URL feed's copy, as (label, text) rows; the server's words escaped."""
    p = provenance or {}
    if "url" not in p:
        return []
    got = p.get("compression") or ""
    if got == "zip":
        got = f"zip, member {download.shown(p.get('member'))}"
    return [(k, v) for k, v in (
        ("URL", download.redact(p["url"])),
        ("ETag", download.shown(p["etag"]) if p.get("etag") else None),
        ("Last-Modified", download.shown(p["last_modified"]) if p.get("last_modified")
         else None),
        ("fetched", f"{p.get('fetched_at')} ({p.get('bytes', 0):,} bytes{', ' if got else ''}"
                    f"{got})"),
        ("checked", p.get("checked_at")),
    ) if v]


def render_result(r: feeds.ImportResult) -> Table:
    j = result_json(r)
    url = (r.provenance or {}).get("url")  # a zone feed's provenance has none
    where = download.redact(url) if url else r.path
    t = Table(title=Text(f"{r.source}: {where}"), show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    rows = [*fetched_lines(r.provenance),
            ("format", r.format + (f", names from column {r.column}" if r.column else "")),
            ("entries in the file", f"{r.entries:,}")]
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
    for what, count in sorted(r.kept.items()):
        rows.append((f"listed: {what}", f"{count:,}"))
    rows.append(("bad lines skipped", f"{len(r.bad):,}"))
    if j["kernel_names"] is not None:
        rows.append(("names in the kernel", f"{j['kernel_names']:,}"))
    rows.append(("time", f"{r.seconds:.2f} s"))
    for k, v in rows:
        t.add_row(k, Text(v))
    return t


def report(r: feeds.ImportResult, as_json: bool, show_skipped: bool = False) -> None:
    emit(as_json, result_json(r, show_skipped), lambda: render_result(r))
    if show_skipped and not as_json:
        for b in r.skipped_lines:
            console().print(f"{shown(b.path)}:{b.line}: skipped, {b.reason}: {b.value}",
                            markup=False, highlight=False, soft_wrap=True)
        more = sum(r.skipped.values()) - len(r.skipped_lines)
        if more > 0:
            console().print(f"… and {more:,} more skipped lines (the first "
                            f"{formats.SKIPPED_LINES_KEPT:,} are listed; the counts above "
                            "cover all)", markup=False, highlight=False, soft_wrap=True)
    if r.bad and not as_json:
        # As on a refusal: the first few, and how many more (--json lists every one).
        for b in r.bad[:feeds.BAD_LINES_SHOWN]:  # one line each, however long
            err_console().print(str(b), markup=False, highlight=False, soft_wrap=True)
        more = len(r.bad) - feeds.BAD_LINES_SHOWN
        if more > 0:
            err_console().print(f"… and {more:,} more bad lines (--json lists them all)",
                                markup=False, highlight=False)


def refused_json(e: feeds.FeedError, show_skipped: bool = False) -> dict | None:
    """A refused import's result object, with "refused": the reason's first line."""
    if e.result is None:
        return None
    return {**result_json(e.result, show_skipped), "refused": str(e).splitlines()[0]}


@contextmanager
def refusals_reported(as_json: bool, show_skipped: bool = False):
    """With --json, a refused import still prints its result object before the one-line
    error."""
    try:
        yield
    except feeds.FeedError as e:
        if as_json and e.result is not None:
            emit(True, refused_json(e, show_skipped), None)
        raise


def source_options(f):
    f = click.option("--min-confidence", type=click.IntRange(0, 100), metavar="N",
                     help="ThreatFox CSV: skip the rows whose confidence_level is below N "
                     "(each entry's category is its fk_malware family).")(f)
    f = click.option("--match", type=click.Choice(["subtree"]),
                     help="List each name the file gives exactly with every name below it "
                     "(plain, hosts and CSV files; DNS-tunnel C2 lists need it).")(f)
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


SHOW_SKIPPED = click.option(
    "--show-skipped", is_flag=True,
    help=f"List the lines left out on purpose (addresses, other record types, rules that "
         f"name no domain), the first {formats.SKIPPED_LINES_KEPT:,}; with --json, as "
         f"skipped_lines.")
ALLOW_SHRINK = click.option(
    "--allow-shrink", is_flag=True,
    help="Apply a list that is empty or removes more of the feed's names than its max shrink "
         "(default: refuse it, nothing changed).")


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
@click.option("--url", help="Download the feed from this https:// URL instead of reading "
              "PATH; every sync fetches it again (a conditional GET).")
@click.option("--ca", type=click.Path(path_type=Path, dir_okay=False),
              help="With --url: trust only the CA certificates in this PEM file (default: "
              "the system's).")
@click.option("--max-bytes", type=click.IntRange(min=1),
              help="With --url: refuse a body, or what it unpacks to, larger than this "
              f"(default: {download.DEFAULT_MAX_BYTES:,}, 256 MiB).")
@click.option("--insecure-http", is_flag=True,
              help="With --url: allow a plain http:// URL, and redirects to one.")
@source_options
@zone_options
@click.option("--max-shrink", type=click.IntRange(0, 100), metavar="PERCENT",
              help=f"The share of its names a sync may remove before it is refused "
                   f"(default {feeds.DEFAULT_MAX_SHRINK:.0%}).")
@ALLOW_SHRINK
@SHOW_SKIPPED
@json_option
@pass_app
def feed_add(app, name, path, url, ca, max_bytes, insecure_http, fmt, column, action,
             category, skip_invalid, match, min_confidence, primary, zone, tsig, max_shrink,
             allow_shrink, show_skipped, as_json):
    """Register the feed NAME read from PATH (or downloaded from --url, or transferred from
    --primary), and load it.

    Its entries get --action (unless the file names one, as RPZ does) and --category
    (default: the feed's name). A name several sources list stays listed until all drop it;
    for its action and category, entries added by hand win over feeds, and earlier feeds
    over later ones; its match is the broadest any source gives it. A URL feed is
    registered only when its download is complete and good; ccxdp keeps the last good copy.

    The shrink guard: a file that lists no name, or a later sync that would remove more than
    --max-shrink of the feed's names (a truncated download, an emptied file, a wrong
    --format), is refused and changes nothing, unless --allow-shrink.

    With --primary and --zone, the feed is an RPZ zone on that server: the last good copy
    is kept in the state folder, and 'feed sync' (or the daemon, on the SOA's timers and on
    NOTIFY) transfers what changed. A failed transfer changes nothing.

    \b
    Examples:
      ccxdp feed add abuse-domains /srv/feeds/domains.txt --action nxdomain
      ccxdp feed add urlhaus --url https://urlhaus.abuse.ch/downloads/hostfile/
      ccxdp feed add rpz-cc --primary 192.0.2.53:5300 --zone rpz.example
    """
    if sum(x is not None for x in (path, url, primary)) != 1:
        raise click.UsageError("give the feed's PATH or --url URL or --primary and --zone: "
                               "one of them, not both")
    if url is None and (ca or max_bytes or insecure_http):
        raise click.UsageError("--ca, --max-bytes and --insecure-http go with --url")
    if primary is None and (zone or tsig):
        raise click.UsageError("--zone and --tsig go with --primary")
    if primary is not None and (zone is None or fmt != "auto" or column or match
                                or min_confidence is not None):
        raise click.UsageError("--primary needs --zone, and takes no --format, --column, "
                               "--match or --min-confidence (a zone is RPZ)")
    if tsig is not None:
        try:  # read here, not by the parameter type: examples name key files not present
            tsig = transfer.read_tsig(tsig)
        except CcxdpError as e:
            raise click.BadParameter(str(e), param_hint="'--tsig'") from None
        if tsig.warning:
            err_console().print(f"warning: {tsig.warning}", markup=False, highlight=False)
    share = max_shrink / 100 if max_shrink is not None else None
    options = {"max_shrink": share, "allow_shrink": allow_shrink, "match": match,
               "min_confidence": min_confidence}
    with refusals_reported(as_json, show_skipped), progress_steps(as_json) as step:
        if primary is not None:
            origin = transfer.ZoneOrigin(primary, zone, tsig.path if tsig else None)
            r = transfer.add_zone_feed(app.datapath(), app.catalog(), name, origin, action,
                                       category, skip_invalid, step,
                                       max_shrink=share, allow_shrink=allow_shrink)
        elif url is not None:
            origin = download.UrlOrigin.make(url, ca, max_bytes, insecure_http)
            r = download.add_url_feed(app.datapath(), app.catalog(), name, origin, fmt,
                                      column, action, category, skip_invalid, step,
                                      feed_options=options)
        else:
            r = feeds.add_feed(app.datapath(), app.catalog(), name, path, fmt, column, action,
                               category, skip_invalid, step, **options)
    report(r, as_json, show_skipped)


@feed.command("sync")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Read the file even if it has not changed (a URL "
              "feed: download it whatever its server says; a zone: transfer it whole, AXFR).")
@ALLOW_SHRINK
@SHOW_SKIPPED
@json_option
@pass_app
def feed_sync(app, names, force, allow_shrink, show_skipped, as_json):
    """Read feeds again (all, or the NAMES given) and apply what changed.

    Only the difference against what each feed listed is written, in one atomic swap of the
    kernel's list: names that stay listed are never unlisted for a moment. A URL feed is
    downloaded again first (a 304 from its server costs no parse); a failed download changes
    nothing. A zone feed is transferred now (IXFR from the serial applied). A file that lists
    no name, or that would remove more than the feed's max shrink of its names, is refused
    and changes nothing, unless --allow-shrink.

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
            source = catalog.source(feeds.check_feed_name(name))
            if download.is_url_feed(source):
                sync = download.sync_url_feed
            else:
                sync = transfer.sync  # a zone feed by transfer, a file feed by reading it
            try:
                results.append(sync(app.datapath(), catalog, name, step, force,
                                    allow_shrink=allow_shrink))
            except feeds.FeedError as e:
                if as_json:  # the list so far, the refused one last
                    done = [result_json(r, show_skipped) for r in results]
                    refused = [refused_json(e, show_skipped)] if e.result else []
                    emit(True, done + refused, None)
                raise
    if as_json:
        emit(True, [result_json(r, show_skipped) for r in results], None)
        return
    for r in results:
        report(r, False, show_skipped)
    if not results:
        err_console().print("no feeds ('ccxdp feed add NAME PATH' adds one)")


@feed.command("list")
@json_option
@pass_app
def feed_list(app, as_json):
    """List the feeds: file, URL or zone, format, action, category, names listed, last sync;
    for a URL feed its ETag, Last-Modified and last fetch; for a zone its serial and last
    transfer.

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

    def table() -> Table | Group:
        t = Table(title="feeds")
        columns = ["name", "path or URL", "format", "action", "category", "block", "allow",
                   "synced_at"]
        if zones:
            columns[1:2] = ["path, URL or zone", "serial", "last transfer"]
        for col in columns:
            t.add_column(col, justify="right" if col in ("block", "allow", "serial")
                         else "left")
        for r in rows:
            p = r["provenance"] or {}
            url = (r["origin"] or {}).get("url")
            cells = [r["name"], Text(download.redact(url) if url else where(r) or "-"),
                     r["format"], r["action"], r["category"] or "-", f"{r['block']:,}",
                     f"{r['allow']:,}", r["synced_at"] or "-"]
            if zones:
                last = (f"{p['transfer']} {p['transferred_at']}" if p.get("transferred_at")
                        else "-")
                cells[2:2] = [str(p.get("serial", "-")), last]
            t.add_row(*cells)
        fetched = [(r["name"], dict(fetched_lines(r["provenance"]))) for r in rows]
        fetched = [(name, f) for name, f in fetched if f]
        if not fetched:
            return t
        d = Table(title="downloads: the last good copy of each URL feed")
        columns = ("ETag", "Last-Modified", "fetched", "checked")
        for col in ("name", *columns):
            d.add_column(col)
        for name, f in fetched:
            d.add_row(name, *(Text(f.get(col) or "-") for col in columns))
        return Group(t, d)

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
    @click.option("--allow-shrink", is_flag=True,
                  help="With --replace: apply a file that lists no name (empties the "
                       "hand-made list).")
    @SHOW_SKIPPED
    @json_option
    @pass_app
    def block_import(app, path, fmt, column, action, category, skip_invalid, match,
                     min_confidence, replace, allow_shrink, show_skipped, as_json):
        """Import a file of names once, as entries added by hand (no feed is registered).

        The swap is atomic: during it, names listed before and after stay blocked, and
        afterwards removed names are no longer matched. A file with a bad line changes
        nothing unless --skip-invalid; so does a file that lists no name (with --replace it
        would empty the hand-made list: --allow-shrink does it).

        \b
        Examples:
          ccxdp block import c2-names.txt --category emotet
          ccxdp block import blocklist.hosts --replace
        """
        with refusals_reported(as_json, show_skipped), progress_steps(as_json) as step:
            r = feeds.import_file(app.datapath(), app.catalog(), path, fmt, column, action,
                                  category, skip_invalid, replace, step, allow_shrink, match,
                                  min_confidence)
        report(r, as_json, show_skipped)

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
            write_whole(output, text)
            console().print(f"{len(entries):,} entries written to {output}")
        else:
            sys.stdout.write(text)
        if dropped:
            err_console().print(
                f"{fmt} keeps {'no categories' if keeps_action else 'no actions or categories'}"
                f": {dropped:,} entries were written without theirs (csv keeps every field)")

    return block_export


def write_whole(output: Path, text: str) -> None:
    """Write a file whole or not at all: a failed export (a missing or read-only folder, a
    full disk) leaves neither a half-written file nor its temporary, and says why."""
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        try:
            tmp.write_text(text)
            tmp.replace(output)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        if not output.parent.is_dir():
            raise click.ClickException(
                f"cannot write {output}: no folder {output.parent}") from None
        raise click.ClickException(sqlite.failure(output, e).replace(
            f"{output}: ", f"cannot write {output}: ", 1)) from None


def register(group: click.Group) -> None:
    group.add_command(feed)
