"""Threat feeds as named sources, and one-off imports into the manual source.

A feed is a file in one of the formats of feedformats.py, registered under a name with the
action and category its entries get. ``sync`` reads the file again and applies only the
difference against what the feed listed before (blocklist.apply); a name two sources list
stays until both drop it. A file with bad lines is refused whole unless the feed (or the
import) skips them; either way every bad line is reported as ``file:line: reason: value``,
and a refused file changes nothing.
"""

from __future__ import annotations

import hashlib
import re
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

from . import feedformats
from .blocklist import MANUAL_ID, Applied, apply, canonical_action, hash_entries
from .catalog import ALLOW, BLOCK, KINDS, MANUAL, Catalog, Listing, Source, normalize_category, pack
from .datapath import Datapath
from .errors import CcxdpError
from .feedformats import BadLine, FeedEntry, ParsedFeed
from .native import first_repeat, merge, sort_pairs

# Shown on the terminal while a long import runs: (step description) -> None.
Progress = Callable[[str], None]

_FEED_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62})$")
BAD_LINES_SHOWN = 20  # in an error message; --json and the result carry them all


class FeedError(CcxdpError):
    def __init__(self, message: str, bad: list[BadLine] | None = None):
        super().__init__(message)
        self.bad = bad or []


@dataclass
class ImportResult:
    source: str
    path: str
    format: str
    entries: int = 0  # entries the file lists (after duplicates were merged)
    duplicates: int = 0
    bad: list[BadLine] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    unchanged: bool = False  # the file and options were the same as at the last sync
    applied: Applied | None = None
    seconds: float = 0.0


def check_feed_name(name: str) -> str:
    text = name.strip().lower()
    if not _FEED_NAME.match(text) or text == MANUAL:
        raise FeedError(
            f"invalid feed name {name!r}: use 1-63 letters, digits, '.', '_' or '-' "
            f"(not {MANUAL!r}, which names entries added by hand)"
        )
    return text


def _refuse_bad(parsed: ParsedFeed) -> None:
    shown = "\n".join(str(b) for b in parsed.bad[:BAD_LINES_SHOWN])
    more = len(parsed.bad) - BAD_LINES_SHOWN
    tail = f"\n… and {more} more" if more > 0 else ""
    raise FeedError(
        f"{parsed.path}: {len(parsed.bad)} bad line(s); nothing was imported "
        f"(--skip-invalid imports the rest and lists them):\n{shown}{tail}",
        parsed.bad,
    )


def parse(path: Path, fmt: str, column: str | None, skip_invalid: bool) -> ParsedFeed:
    if not path.is_file():
        raise FeedError(f"{path}: no such file")
    parsed = feedformats.parse_feed(path, fmt, column)
    if parsed.bad and not skip_invalid:
        _refuse_bad(parsed)
    return parsed


def listings_of(
    entries: list[FeedEntry], action: str, category_id: int, dp: Datapath, catalog: Catalog
) -> tuple[dict[str, Listing], dict[int, str]]:
    """The block and allow listings a file's entries make, and {hash: name}. Entries are
    grouped by what they give the kernel, so a million names cost a few array operations,
    not a million Python calls."""
    attrs = list(map(attrgetter("kind", "match", "action", "category"), entries))
    all_names = list(map(attrgetter("name"), entries))
    groups: dict[tuple[str, int], list[str]] = {}
    if len(set(attrs)) == 1:  # the usual feed: every entry alike, one group, no loop
        groups[(attrs[0][0], _value(attrs[0], action, category_id, catalog, {}))] = all_names
    else:
        own: dict[str, int] = {}
        values: dict[tuple, int] = {}
        for a, name in zip(attrs, all_names, strict=True):
            value = values.get(a)
            if value is None:
                value = values[a] = _value(a, action, category_id, catalog, own)
            groups.setdefault((a[0], value), []).append(name)
    key = dp.hash_key()
    names: dict[int, str] = {}
    out = {}
    for kind in KINDS:
        hashes, values = array("Q"), array("Q")
        for (k, value), group in groups.items():
            if k != kind:
                continue
            h, by_hash = hash_entries(group, key)
            hashes.extend(h)
            values.extend(array("Q", [value]) * len(h))
            names.update(by_hash)
        h, v = sort_pairs(hashes, values)
        repeat = first_repeat(h)
        if repeat is not None:
            raise FeedError(f"{names[h[repeat]]!r} is listed twice with different matches or "
                            "actions; nothing was imported")
        out[kind] = Listing(h, v)
    return out, names


def _value(attrs: tuple, action: str, category_id: int, catalog: Catalog,
           own: dict[str, int]) -> int:
    """The listing value of entries with these (kind, match, action, category)."""
    kind, match, entry_action, category = attrs
    if kind == ALLOW:
        return pack(ALLOW, match, "allow", 0)
    if category:  # CSV exports may name a category per entry
        if category not in own:
            own[category] = catalog.category_id(normalize_category(category))
        category_id = own[category]
    return pack(BLOCK, match, canonical_action(entry_action or action), category_id)


def _digest(path: Path, source: Source, dp: Datapath) -> str:
    h = hashlib.sha256()
    h.update(repr((source.format, source.column, source.action, source.category,
                   source.skip_invalid, dp.hash_key().fingerprint)).encode())
    h.update(path.read_bytes())
    return h.hexdigest()


def _step(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress(text)


# -- feeds ------------------------------------------------------------------------------------
def add_feed(
    dp: Datapath, catalog: Catalog, name: str, path: Path, fmt: str = "auto",
    column: str | None = None, action: str | None = None, category: str | None = None,
    skip_invalid: bool = False, progress: Progress | None = None,
) -> ImportResult:
    """Register a feed and sync it. A feed whose file is refused is not registered."""
    name = check_feed_name(name)
    if catalog.source(name) is not None:
        raise FeedError(f"feed {name!r} exists already ('ccxdp feed sync {name}' reads it "
                        "again; remove it first to change its options)")
    action = canonical_action(action) if action else "default"
    category = normalize_category(category or name)
    with catalog.transaction():
        source = catalog.add_source(name, str(Path(path).resolve()), fmt, column, action,
                                    catalog.category_id(category), skip_invalid)
        return _sync(dp, catalog, source, progress, force=True)


def sync_feed(dp: Datapath, catalog: Catalog, name: str, progress: Progress | None = None,
              force: bool = False) -> ImportResult:
    source = catalog.source(check_feed_name(name))
    if source is None:
        raise FeedError(f"no feed named {name!r} ('ccxdp feed list' shows them)")
    return _sync(dp, catalog, source, progress, force)


def _sync(dp: Datapath, catalog: Catalog, source: Source, progress: Progress | None,
          force: bool) -> ImportResult:
    started = time.perf_counter()
    path = Path(source.path or "")
    if not path.is_file():
        raise FeedError(f"feed {source.name!r}: {path}: no such file; nothing was changed")
    digest = _digest(path, source, dp)
    result = ImportResult(source.name, str(path), source.format or "auto")
    if not force and digest == source.digest:
        result.unchanged = True
        catalog.mark_synced(source.id, digest)
        result.seconds = time.perf_counter() - started
        return result
    _step(progress, f"reading {path.name}")
    parsed = parse(path, source.format or "auto", source.column, source.skip_invalid)
    _fill(result, parsed)
    _step(progress, f"hashing {len(parsed.entries):,} names")
    listings, names = listings_of(parsed.entries, source.action or "default", source.category,
                                  dp, catalog)
    _step(progress, "writing the catalog and the kernel table")
    with catalog.transaction():
        result.applied = apply(dp, catalog, {(source.id, k): v for k, v in listings.items()},
                               names)
        catalog.mark_synced(source.id, digest)
    result.seconds = time.perf_counter() - started
    return result


def _fill(result: ImportResult, parsed: ParsedFeed) -> None:
    result.format = parsed.format
    result.entries = len(parsed.entries)
    result.duplicates = parsed.duplicates
    result.bad = parsed.bad
    result.skipped = dict(parsed.skipped)


def remove_feed(dp: Datapath, catalog: Catalog, name: str) -> Applied:
    """Unregister a feed; the names no other source lists leave the catalog and kernel."""
    source = catalog.source(check_feed_name(name))
    if source is None:
        raise FeedError(f"no feed named {name!r} ('ccxdp feed list' shows them)")
    with catalog.transaction():
        applied = apply(dp, catalog, {(source.id, k): Listing.empty() for k in KINDS}, {})
        catalog.remove_source(source.id)
    return applied


def feed_counts(catalog: Catalog) -> dict[int, dict[str, int]]:
    """{source id: {kind: names it lists}}."""
    out: dict[int, dict[str, int]] = {}
    for (sid, kind), listing in catalog.listings().items():
        out.setdefault(sid, {})[kind] = len(listing)
    return out


# -- one-off imports ----------------------------------------------------------------------------
def import_file(
    dp: Datapath, catalog: Catalog, path: Path, fmt: str = "auto", column: str | None = None,
    action: str | None = None, category: str | None = None, skip_invalid: bool = False,
    replace: bool = False, progress: Progress | None = None,
) -> ImportResult:
    """Add a file's entries to the manual source (``replace``: make them its whole list)."""
    started = time.perf_counter()
    action = canonical_action(action) if action else "default"
    category = normalize_category(category) if category else None
    _step(progress, f"reading {Path(path).name}")
    parsed = parse(Path(path), fmt, column, skip_invalid)
    result = ImportResult(MANUAL, str(path), fmt)
    _fill(result, parsed)
    with catalog.transaction():
        category_id = catalog.category_id(category) if category else 0
        _step(progress, f"hashing {len(parsed.entries):,} names")
        listings, names = listings_of(parsed.entries, action, category_id, dp, catalog)
        if not replace:
            for kind in KINDS:
                old = catalog.listing(MANUAL_ID, kind)
                new = listings[kind]
                listings[kind] = Listing(*merge(old.hashes, old.values, new.hashes[:0],
                                                new.hashes, new.values))
        _step(progress, "writing the catalog and the kernel table")
        result.applied = apply(dp, catalog, {(MANUAL_ID, k): v for k, v in listings.items()},
                               names)
    result.seconds = time.perf_counter() - started
    return result
