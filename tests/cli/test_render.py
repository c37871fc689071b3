"""Renderers turn snapshots into tables without touching a map: exact text for known input."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from ccxdp.cli.render import (
    render_attachments,
    render_changes,
    render_entries,
    render_exempt,
    render_prefix_changes,
    render_settings,
    render_stats,
)
from ccxdp.datapath.loader import Attachment, Mode
from ccxdp.datapath.settings import Settings
from ccxdp.hits.stats import SourceStat, StatsSnapshot
from ccxdp.policy.catalog import CatalogEntry, ExemptEntry
from ccxdp.policy.exempt import PrefixChange
from ccxdp.policy.lists import Change

T0 = 1795813501.0  # 2026-11-27 21:05:01 UTC


def text(renderable) -> str:
    console = Console(file=io.StringIO(), width=100, color_system=None, force_terminal=True)
    console.print(renderable)
    return console.file.getvalue()


def snapshot(malformed=0, lost=0, nxdomain=0) -> StatsSnapshot:
    return StatsSnapshot(
        outcomes={"not_dns": 12, "fragment": 1, "not_query": 2, "malformed": malformed,
                  "passed": 1234567, "blocked": 9, "unparsed": 0, "allowed": 3,
                  "monitored": 1, "exempt": 5},
        malformed={"header": 0, "truncated": malformed, "label_type": 0, "name_len": 0},
        events={"source_lost": lost, "answer_failed": 0},
        actions={"drop": 0, "nxdomain": nxdomain, "nodata": 0, "sinkhole": 0, "tc": 0,
                 "refused": 0, "monitor": 0, "allow": 0},
        sources=(SourceStat("198.18.0.2", 3, 7, T0, T0 + 60),
                 SourceStat("fd00:cc::2", 0, 2, T0, T0)),
        names=2,
    )


def row(out: str, *cells: str) -> bool:
    """Whether some line holds these cells in this order."""
    for line in out.splitlines():
        parts = [p.strip() for p in line.split("│") if p.strip()]
        if parts[: len(cells)] == list(cells):
            return True
    return False


def test_stats_table_shows_exact_counts():
    out = text(render_stats(snapshot()))
    assert row(out, "passed", "1,234,567", "judged queries, no entry matched")
    assert row(out, "blocked", "9", "judged queries, blocked")
    assert row(out, "total", "1,234,600", "frames seen")
    assert row(out, "judged", "1,234,580", "DNS queries looked up")
    assert row(out, "exempt", "5", "from opted-out sources, passed unjudged")
    assert row(out, "198.18.0.2", "category-3", "7", "2026-11-27 21:05:01",
               "2026-11-27 21:06:01")
    assert row(out, "fd00:cc::2", "(none)", "2", "2026-11-27 21:05:01", "2026-11-27 21:05:01")
    assert "blocked queries per source (2)" in out
    # Tables that would be all zeros are left out.
    assert "malformed queries by reason" not in out and "events" not in out
    assert "queries per action" not in out


def test_stats_table_shows_malformed_reasons_and_events_when_there_are_any():
    out = text(render_stats(snapshot(malformed=4, lost=1, nxdomain=6)))
    assert row(out, "truncated", "4")
    assert row(out, "source_lost", "1")
    assert row(out, "nxdomain", "6")


def test_attachments_entries_and_changes():
    out = text(render_attachments(
        [Attachment("eth0", None, Mode.NATIVE, 17), Attachment("veth1", "res", None, None)],
        loaded=True, names=1500000,
    ))
    assert "program loaded; 1,500,000 names in the kernel map" in out
    assert row(out, "eth0", "-", "native", "17")
    assert row(out, "veth1", "res", "detached", "-")
    added = "2026-11-27T19:05:01Z"
    out = text(render_entries([CatalogEntry("evil.test", 1, "subtree", added_at=added)]))
    assert row(out, "evil.test", "subtree", "drop", "-", "2026-11-27T19:05:01Z")
    out = text(render_changes([Change("a.test", "added", "exact"), Change("b.test", "not listed")]))
    assert row(out, "a.test", "exact", "added")
    assert row(out, "b.test", "-", "not listed")


def test_stats_table_names_categories_it_knows():
    out = text(render_stats(snapshot(), categories={3: "emotet"}))
    assert row(out, "198.18.0.2", "emotet", "7")
    assert row(out, "fd00:cc::2", "(none)", "2")  # as top, records, report and metrics say


def test_block_and_allow_entries_and_their_changes():
    added = "2026-11-27T19:05:01Z"
    entries = [CatalogEntry("evil.test", 1, "subtree", "nxdomain", 2, added),
               CatalogEntry("plain.test", 2, "exact", "default", 0, added)]
    out = text(render_entries(entries, {2: "emotet"}))
    assert "block entries (2)" in out
    assert row(out, "evil.test", "subtree", "nxdomain", "emotet", added)
    assert row(out, "plain.test", "exact", "default", "-", added)
    out = text(render_entries([CatalogEntry("cdn.evil.test", 3, "exact", "allow", 0, added,
                                            "allow")], kind="allow"))
    assert "allow entries (1)" in out
    assert row(out, "cdn.evil.test", "exact", added)
    assert "action" not in out and "category" not in out
    out = text(render_changes([Change("a.test", "added", "subtree", "sinkhole", "emotet"),
                               Change("b.test", "not listed")]))
    assert row(out, "a.test", "subtree", "sinkhole", "emotet", "added")
    assert row(out, "b.test", "-", "-", "-", "not listed")


def test_exempt_prefixes_and_settings():
    out = text(render_exempt([ExemptEntry("198.18.7.0/24", "2026-11-27T19:05:01Z")]))
    assert "exempt source prefixes (1)" in out
    assert row(out, "198.18.7.0/24", "2026-11-27T19:05:01Z")
    out = text(render_prefix_changes([PrefixChange("fd00:7::/64", "added")]))
    assert row(out, "fd00:7::/64", "added")
    settings = Settings(default_action="sinkhole", sinkhole_v4="198.18.0.53")
    out = text(render_settings(settings, loaded=True,
                               map_path="/sys/fs/bpf/ccxdp/ccxdp_config_v3",
                               file_path="/var/lib/ccxdp/settings.json"))
    assert row(out, "default_action", "sinkhole", "action of block entries listed without --action")
    assert row(out, "sinkhole_v4", "198.18.0.53")
    assert row(out, "edns_udp_size", "1232")
    assert "in the kernel map /sys/fs/bpf/ccxdp/ccxdp_config_v3 (in use)" in out
    out = text(render_settings(Settings(), loaded=False, map_path="m", file_path="f.json"))
    assert "not loaded: the program gets them at the next attach" in out


def test_stats_sources_print_addresses_as_they_are():
    """rich would read ":1234:" in an IPv6 address as an emoji code."""
    snap = snapshot()
    snap = type(snap)(**{**snap.__dict__, "sources": (
        SourceStat("fd00:1234:5678::2", 0, 2, T0, T0),)})
    out = text(render_stats(snap))
    assert row(out, "fd00:1234:5678::2", "(none)", "2")


def test_the_commands_console_prints_addresses_as_they_are(capsys):
    """Every command's console: ":1234:" in an IPv6 prefix is no emoji code."""
    from ccxdp.cli.output import emit

    table = Table()
    table.add_column("prefix")
    table.add_row("fd00:1234::/64")
    emit(False, None, lambda: table)
    assert "fd00:1234::/64" in capsys.readouterr().out
