"""Pure renderers: snapshot in, rich renderable out. Nothing here touches a map."""

from __future__ import annotations

import time
from collections.abc import Mapping

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ccxdp.datapath.loader import Attachment
from ccxdp.datapath.settings import DESCRIPTIONS, Settings
from ccxdp.hits.stats import StatsSnapshot
from ccxdp.policy import download
from ccxdp.policy.catalog import (
    BLOCK,
    CatalogEntry,
    ExemptEntry,
    LineExemptEntry,
    PlanEntry,
    category_label,
)
from ccxdp.policy.exempt import LinePrefixChange, PrefixChange
from ccxdp.policy.lists import Change
from ccxdp.policy.plan import PlanState


def feed_copy(provenance: dict | None) -> dict | None:
    """What a fetched feed's last good copy is, as evidence of where a listing came from: a
    zone and its serial, or a URL and its validators; None for a file feed. Redacted and
    escaped, fit for a terminal, a log or JSON."""
    p = provenance or {}
    if "serial" in p:
        return {"zone": download.shown(p["zone"]), "serial": p["serial"]}
    if "url" in p:
        return {"url": download.redact(p["url"]),
                "etag": download.shown(p["etag"]) if p.get("etag") else None,
                "last_modified": (download.shown(p["last_modified"])
                                  if p.get("last_modified") else None)}
    return None


def feed_copy_text(copy: dict) -> str:
    if "serial" in copy:
        return f"zone {copy['zone']}, serial {copy['serial']}"
    validators = [f"ETag {copy['etag']}" if copy["etag"] else None,
                  f"Last-Modified {copy['last_modified']}" if copy["last_modified"] else None]
    return ", ".join([copy["url"], *filter(None, validators)])


def feed_copies(sources) -> dict[str, dict]:
    """{feed name: its copy} of the fetched feeds among ``sources`` (catalog Sources)."""
    return {s.name: c for s in sources if (c := feed_copy(s.provenance)) is not None}


def render_feed_copies(copies: Mapping[str, dict]) -> Table:
    table = Table(title="where the feeds' names came from (their copies now)",
                  title_justify="left")
    table.add_column("feed")
    table.add_column("copy")
    for name, copy in sorted(copies.items()):
        table.add_row(escape(name), escape(feed_copy_text(copy)))
    return table


_OUTCOME_HELP = {
    "not_dns": "not UDP or TCP to a DNS port, passed",
    "fragment": "IP fragments, passed (first ones to a DNS port: as `fragments` says)",
    "not_query": "DNS but not a query, passed",
    "malformed": "unparsable queries, passed",
    "passed": "judged queries, no entry matched",
    "blocked": "judged queries, blocked",
    "unparsed": "headers deeper than parsed, dropped or passed as `unparsed` says",
    "allowed": "judged queries, an allow entry decided",
    "monitored": "judged queries, monitor entry: passed, counted",
    "exempt": "from opted-out sources, passed unjudged",
    "tcp_other": "TCP to a DNS port, no query start in the segment, passed",
    "tcp_retry": "over TCP, a tc entry decided: passed (the retry tc asks for)",
}


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _counts(title: str, what: str, unit: str, counts: dict[str, int]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(what)
    table.add_column(unit, justify="right")
    for name, value in counts.items():
        table.add_row(name, f"{value:,}")
    return table


def render_stats(s: StatsSnapshot, categories: Mapping[int, str] | None = None) -> Group:
    """The counters; a source's category is shown by name where categories names it."""
    totals = Table(title="ccxdp counters", title_justify="left")
    totals.add_column("outcome")
    totals.add_column("frames", justify="right")
    totals.add_column("meaning", style="dim")
    for name, value in s.outcomes.items():
        totals.add_row(name, f"{value:,}", _OUTCOME_HELP.get(name, ""))
    totals.add_section()
    totals.add_row("total", f"{s.frames:,}", "frames seen")
    totals.add_row("judged", f"{s.judged:,}", "DNS queries looked up")
    parts: list = [totals]
    # Tables that would hold only zeros are left out.
    if any(s.malformed.values()):
        parts.append(_counts("malformed queries by reason", "reason", "queries", s.malformed))
    if any(s.actions.values()):
        parts.append(_counts("queries per action", "action", "queries", s.actions))
    if any(s.events.values()):
        parts.append(_counts("events", "event", "count", s.events))
    sources = Table(title=f"blocked queries per source ({len(s.sources)})", title_justify="left")
    sources.add_column("source")
    sources.add_column("category", justify="right")
    sources.add_column("hits", justify="right")
    sources.add_column("first seen (UTC)")
    sources.add_column("last seen (UTC)")
    for src in s.sources:
        category = category_label(src.category, categories or {})
        sources.add_row(  # Text: an address is never markup or an emoji code (":1234:")
            Text(src.address), Text(category), f"{src.hits:,}", _when(src.first_seen),
            _when(src.last_seen),
        )
    parts.append(sources)
    return Group(*parts)


def plan_line(plan: PlanState, source_prefix_v6: int) -> str:
    """What the address plan makes of hits, in one line (status)."""
    per = f"IPv6 per /{source_prefix_v6}"
    if not plan.declared:
        return f"address plan: none, every source counted per source ({per})"
    return (f"address plan: {len(plan.prefixes)} prefixes, other sources only in "
            f"outside_plan ({per})")


def render_plan(entries: list[PlanEntry]) -> Table | str:
    if not entries:
        return "no address plan: every source is counted per source"
    table = Table(title=f"address plan ({len(entries)} prefixes)", title_justify="left")
    table.add_column("prefix")
    table.add_column("added (UTC)")
    for e in entries:
        table.add_row(e.prefix, e.added_at)
    return table


def render_attachments(attachments: list[Attachment], loaded: bool, names: int,
                       plan: str | None = None) -> Group:
    table = Table(title="ccxdp attachments", title_justify="left")
    table.add_column("interface")
    table.add_column("netns")
    table.add_column("mode")
    table.add_column("program id", justify="right")
    for a in attachments:
        table.add_row(
            a.ifname,
            a.netns or "-",
            str(a.mode) if a.mode else "detached",
            str(a.prog_id) if a.prog_id else "-",
        )
    head = f"program {'loaded' if loaded else 'not loaded'}; {names:,} names in the kernel map"
    return Group(head, *([plan] if plan else []), table)


def render_entries(
    entries: list[CatalogEntry], categories: Mapping[int, str] | None = None, kind: str = BLOCK,
    sources: Mapping[int, list[tuple[str, str | None]]] | None = None,
) -> Table:
    """Block entries, with action and category name; or allow entries, which have neither.
    With sources: which sources list each name, and the last sync of a feed listing it."""
    blocks = kind == BLOCK
    table = Table(title=f"{kind} entries ({len(entries)})", title_justify="left")
    table.add_column("name")
    table.add_column("match")
    if blocks:
        table.add_column("action")
        table.add_column("category")
    table.add_column("added (UTC)")
    if sources is not None:
        table.add_column("sources")
        table.add_column("last seen in a feed (UTC)")
    for e in entries:
        cells = [e.name, e.match]
        if blocks:
            cells += [e.action, (categories or {}).get(e.category, "-")]
        cells.append(e.added_at)
        if sources is not None:
            listed = sources.get(e.hash, [])
            seen = [when for _, when in listed if when]
            cells += [", ".join(name for name, _ in listed), max(seen) if seen else "-"]
        table.add_row(*cells)
    return table


def render_changes(changes: list[Change]) -> Table:
    table = Table(show_header=True)
    table.add_column("name")
    table.add_column("match")
    with_action = any(c.action is not None for c in changes)
    if with_action:
        table.add_column("action")
        table.add_column("category")
    table.add_column("result")
    for c in changes:
        match = c.match or "-"
        cells = [c.name, match]
        if with_action:
            cells += [c.action or "-", c.category or "-"]
        table.add_row(*cells, c.status)
    return table


def render_prefix_changes(changes: list[PrefixChange]) -> Table:
    table = Table(show_header=True)
    table.add_column("prefix")
    table.add_column("result")
    for c in changes:
        table.add_row(c.prefix, c.status)
    return table


def render_exempt(entries: list[ExemptEntry],
                  line_entries: list[LineExemptEntry] = ()) -> Table:
    """Static prefixes, then those opted-out lines hold now (with the line)."""
    count = len(entries) + len(line_entries)
    table = Table(title=f"exempt source prefixes ({count})", title_justify="left")
    table.add_column("prefix")
    table.add_column("added (UTC)")
    if line_entries:
        table.add_column("line")
    for e in entries:
        table.add_row(e.prefix, e.added_at, *(["-"] if line_entries else []))
    for e in line_entries:
        # Line ids come from sessions files and the database: never read as rich markup.
        table.add_row(e.prefix, e.added_at, escape(e.line))
    return table


def render_opt_outs(opted: Mapping[str, str]) -> Table:
    table = Table(title=f"opted-out lines ({len(opted)})", title_justify="left")
    table.add_column("line")
    table.add_column("since (UTC)")
    for line, since in opted.items():
        table.add_row(escape(line), since)
    return table


def render_line_results(results: list[tuple[str, str]]) -> Table:
    table = Table(show_header=True)
    table.add_column("line")
    table.add_column("result")
    for line, status in results:
        table.add_row(escape(line), status)
    return table


def render_line_changes(changes: list[LinePrefixChange], prefixes: int) -> Group:
    table = Table(show_header=True)
    table.add_column("prefix")
    table.add_column("line")
    table.add_column("result")
    for c in changes:
        table.add_row(c.prefix, escape(c.line), c.status)
    note = f"{prefixes} prefixes exempt for opted-out lines"
    return Group(table, note) if changes else Group(f"unchanged: {note}")


def render_settings(settings: Settings, loaded: bool, map_path: str, file_path: str) -> Group:
    """Every setting with its meaning, and where they live."""
    table = Table(title="ccxdp settings", title_justify="left")
    table.add_column("key")
    table.add_column("value")
    table.add_column("meaning", style="dim")
    for key, value in settings.as_dict().items():
        table.add_row(key, str(value), DESCRIPTIONS.get(key, ""))
    if loaded:
        where = f"in the kernel map {map_path} (in use), kept in {file_path}"
    else:
        where = f"in {file_path}; not loaded: the program gets them at the next attach"
    return Group(table, where)
