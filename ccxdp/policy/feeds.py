"""Threat feeds as named sources, and one-off imports into the manual source.

A feed is a file in one of the formats of policy/formats/, registered under a name with the
action and category its entries get. ``sync`` reads the file again and applies only the
difference against what the feed listed before (blocklist.apply); a name two sources list
stays until both drop it. A file with bad lines is refused whole unless the feed (or the
import) skips them; either way every bad line is reported as ``file:line: reason: value``,
and a refused file changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from operator import attrgetter
from pathlib import Path

from ccxdp.datapath import shared
from ccxdp.datapath.bulk import (
    gather,
    join,
    merge,
    sort_pairs,
    sort_positions,
    split_join,
    unique,
    unique_agreeing,
)
from ccxdp.datapath.bulk import line_hashes as line_hashes_of
from ccxdp.datapath.hashing import HashKey
from ccxdp.datapath.loader import Datapath
from ccxdp.errors import CcxdpError
from ccxdp.policy import formats
from ccxdp.policy.catalog import (
    ALLOW,
    BLOCK,
    KINDS,
    MANUAL,
    Catalog,
    Listing,
    Source,
    normalize_category,
    pack,
    release_memory,
)
from ccxdp.policy.formats import BadLine, FeedEntry, ParsedFeed
from ccxdp.policy.lists import MANUAL_ID, Applied, apply, canonical_action, hash_entries

# Shown on the terminal while a long import runs: (step description) -> None, called as
# each of STEPS steps starts (reading, hashing, writing).
Progress = Callable[[str], None]
STEPS = 3

_FEED_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62})$")
BAD_LINES_SHOWN = 20  # in an error message; --json and the result carry them all


DEFAULT_MAX_SHRINK = 0.5  # a sync may remove at most half a feed's names unless told
# The share is guarded from this many names up: a hand-kept list of a few names changes
# by more than half as a matter of course; a cut download of a real feed does not.
SHRINK_GUARDED_FROM = 20


class FeedError(CcxdpError):
    def __init__(self, message: str, bad: list[BadLine] | None = None,
                 result: ImportResult | None = None):
        super().__init__(message)
        self.bad = bad or []
        self.result = result  # what was read before the refusal, for --json


class ShrinkRefused(FeedError):
    """A new list that would empty a feed, or remove more of its names than it may."""


@dataclass
class ImportResult:
    source: str
    path: str
    format: str
    entries: int = 0  # entries the file lists (after duplicates were merged)
    duplicates: int = 0
    bad: list[BadLine] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_lines: list[BadLine] = field(default_factory=list)  # the first of them
    kept: dict[str, int] = field(default_factory=dict)  # unusual names listed all the same
    column: str | None = None  # CSV: the column the names came from
    unchanged: bool = False  # the file and options were the same as at the last sync
    lines_read: int | None = None  # a sync by lines: how many (new) lines were parsed
    applied: Applied | None = None
    seconds: float = 0.0
    provenance: dict | None = None  # a copy fetched from elsewhere (a URL, a zone): what it is


def check_feed_name(name: str) -> str:
    text = name.strip().lower()
    if not _FEED_NAME.match(text) or text == MANUAL:
        raise FeedError(
            f"invalid feed name {name!r}: use 1-63 letters, digits, '.', '_' or '-' "
            f"(not {MANUAL!r}, which names entries added by hand)"
        )
    return text


def check_new_feed(catalog: Catalog, name: str) -> str:
    """A name no feed has yet."""
    name = check_feed_name(name)
    if catalog.source(name) is not None:
        raise FeedError(f"feed {name!r} exists already ('ccxdp feed sync {name}' reads it "
                        "again; remove it first to change its options)")
    return name


def _refuse_bad(parsed: ParsedFeed, source: str) -> None:
    shown = "\n".join(str(b) for b in parsed.bad[:BAD_LINES_SHOWN])
    more = len(parsed.bad) - BAD_LINES_SHOWN
    tail = f"\n… and {more} more" if more > 0 else ""
    result = ImportResult(source, parsed.path, parsed.format)
    _fill(result, parsed)
    raise FeedError(
        f"{parsed.path}: {len(parsed.bad)} bad line(s); nothing was imported "
        f"(--skip-invalid imports the rest and lists them):\n{shown}{tail}",
        parsed.bad, result,
    )


def parse(path: Path, fmt: str, column: str | None, skip_invalid: bool,
          source: str = MANUAL, match: str | None = None,
          min_confidence: int | None = None, data: bytes | None = None) -> ParsedFeed:
    parsed = formats.parse_feed(path, fmt, column, match, min_confidence, data)
    if parsed.bad and not skip_invalid:
        _refuse_bad(parsed, source)
    return parsed


def check_shrink(what: str, old: dict[str, Listing], new: dict[str, Listing],
                 max_shrink: float, result: ImportResult) -> None:
    """The shrink guard: refuse a new list that is empty, or that removes more than
    ``max_shrink`` of the names listed now. A truncated download, an emptied file or a
    wrong --format all look like that, and each would unlist a feed's names at once."""
    before = sum(len(old[k]) for k in KINDS)
    after = sum(len(new[k]) for k in KINDS)
    if after == 0:
        raise ShrinkRefused(
            f"{what}: the file lists no name ({result.format}, {result.entries:,} entries, "
            f"{len(result.bad):,} bad lines, {sum(result.skipped.values()):,} skipped), "
            f"{'down from ' + format(before, ',') + ' names' if before else 'nothing to list'}"
            f": refused, nothing was changed (--allow-shrink applies it anyway)",
            result=result)
    if before < SHRINK_GUARDED_FROM:
        return
    removed = sum(len(set(old[k].hashes).difference(new[k].hashes)) for k in KINDS)
    if removed > max_shrink * before:
        raise ShrinkRefused(
            f"{what}: the new list would remove {removed:,} of its {before:,} names "
            f"({removed / before:.0%}, more than the {max_shrink:.0%} allowed) and keep "
            f"{before - removed:,}: refused, nothing was changed (--allow-shrink applies it "
            f"anyway)", result=result)


@dataclass
class Hashed:
    """A file's entries as arrays: each entry's name hash and listing value, in file order,
    and {hash: name}."""

    hashes: array
    values: array
    names: dict[int, str]


def hash_feed(entries: list[FeedEntry], action: str, category_id: int, key: HashKey,
              catalog: Catalog) -> Hashed:
    """Hash a file's entries and give each its listing value. Entries that are alike share
    one value computed once, so a million names cost a few array operations, not a million
    Python calls."""
    attrs = attrgetter("kind", "match", "action", "category")
    all_names = list(map(attrgetter("name"), entries))
    distinct = set(map(attrs, entries))
    own: dict[str, int] = {}
    looks = {a: _value(a, action, category_id, catalog, own) for a in distinct}
    if len(distinct) == 1:  # the usual feed: every entry alike, no list of attributes
        values = array("Q", list(looks.values())) * len(entries)
    else:
        values = array("Q", map(looks.__getitem__, map(attrs, entries)))
    hashes, names = hash_entries(all_names, key)
    return Hashed(hashes, values, names)


def split_listings(hashes: array, values: array) -> dict[str, Listing] | None:
    """Block and allow listings from (name hash, value) pairs in any order, repeats merged;
    None when one name is given two different values of one kind."""
    allow_values = {v for v in set(values) if v & 0xFF == shared.Action.ALLOW}
    if not allow_values:
        groups = {BLOCK: (hashes, values), ALLOW: (array("Q"), array("Q"))}
    else:
        is_allow = [v in allow_values for v in values]
        groups = {
            kind: (array("Q", (h for h, a in zip(hashes, is_allow, strict=True) if a == want)),
                   array("Q", (v for v, a in zip(values, is_allow, strict=True) if a == want)))
            for kind, want in ((BLOCK, False), (ALLOW, True))
        }
    out = {}
    for kind, (h, v) in groups.items():
        agreed = unique_agreeing(*sort_pairs(h, v))
        if agreed is None:
            return None
        out[kind] = Listing(*agreed)
    return out


def listings_of(hashed: Hashed) -> dict[str, Listing]:
    listings = split_listings(hashed.hashes, hashed.values)
    if listings is None:
        raise FeedError("a name is listed twice with different matches or actions; "
                        "nothing was imported")
    return listings


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


def _step(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress(text)


# -- feeds ------------------------------------------------------------------------------------
def add_feed(
    dp: Datapath, catalog: Catalog, name: str, path: Path, fmt: str = "auto",
    column: str | None = None, action: str | None = None, category: str | None = None,
    skip_invalid: bool = False, progress: Progress | None = None,
    max_shrink: float | None = None, allow_shrink: bool = False, match: str | None = None,
    min_confidence: int | None = None, origin: dict | None = None,
    provenance: dict | None = None,
) -> ImportResult:
    """Register a feed and sync it. A feed whose file is refused is not registered.
    ``max_shrink``: the share of its names a later sync may remove (default
    DEFAULT_MAX_SHRINK); ``allow_shrink``: register it even when the file lists no name;
    ``match="subtree"``: its exact names listed with everything below (formats.parse_feed);
    ``origin``, ``provenance``: for a feed whose file is a copy from elsewhere (download.py)."""
    name = check_new_feed(catalog, name)
    action = canonical_action(action) if action else "default"
    category = normalize_category(category or name)
    with catalog.transaction():
        # realpath, not Path.resolve(): a symlink loop is the read's to report, in one line
        source = catalog.add_source(name, os.path.realpath(path), fmt, column, action,
                                    catalog.category_id(category), skip_invalid, origin,
                                    max_shrink=check_max_shrink(max_shrink), match=match,
                                    min_confidence=min_confidence)
        return _sync(dp, catalog, source, progress, True, allow_shrink, provenance)


def check_max_shrink(share: float | None) -> float | None:
    if share is not None and not 0 <= share <= 1:
        raise FeedError(f"max shrink {share!r}: give a share of the names from 0 to 1 "
                        f"(0.5: half)")
    return share


def sync_feed(dp: Datapath, catalog: Catalog, name: str, progress: Progress | None = None,
              force: bool = False, allow_shrink: bool = False,
              provenance: dict | None = None) -> ImportResult:
    """Read the feed's file again and apply what changed; ``provenance``: what that file
    is, when it is a copy from elsewhere, kept in the same transaction."""
    source = catalog.source(check_feed_name(name))
    if source is None:
        raise FeedError(f"no feed named {name!r} ('ccxdp feed list' shows them)")
    return _sync(dp, catalog, source, progress, force, allow_shrink, provenance)


def _sync(dp: Datapath, catalog: Catalog, source: Source, progress: Progress | None,
          force: bool, allow_shrink: bool = False,
          provenance: dict | None = None) -> ImportResult:
    try:
        return _sync_file(dp, catalog, source, progress, force, allow_shrink, provenance)
    finally:
        release_memory()


def _sync_file(dp: Datapath, catalog: Catalog, source: Source, progress: Progress | None,
               force: bool, allow_shrink: bool = False,
               provenance: dict | None = None) -> ImportResult:
    started = time.perf_counter()
    path = Path(source.path or "")
    try:  # read once: the digest, the line hashes and the parse all use these bytes
        data = formats.read_feed_bytes(path, max_bytes=_copy_cap(source))
    except formats.FeedFormatError as e:
        raise FeedError(f"feed {source.name!r}: {e}; nothing was changed") from None
    key = dp.hash_key()  # once: every step below hashes with it; only apply() needs dp
    options = _options(source, key)
    digest = hashlib.sha256(options.encode())
    digest.update(data)  # not options + data: that would copy the whole file once more
    digest = digest.hexdigest()
    result = ImportResult(source.name, str(path), source.format or "auto",
                          provenance=provenance or source.provenance)
    if not force and digest == source.digest:
        result.unchanged = True
        with catalog.transaction():
            catalog.mark_synced(source.id, digest)
            if provenance is not None:
                catalog.set_provenance(source.id, provenance)
        result.seconds = time.perf_counter() - started
        return result
    _step(progress, f"reading {path.name}")
    by_lines = None if force else _sync_by_lines(key, catalog, source, path, data, options,
                                                 result)
    if by_lines is not None:
        listings, names, snapshot = by_lines
    else:
        parsed = parse(path, source.format or "auto", source.column, source.skip_invalid,
                       source.name, source.match, source.min_confidence, data)
        _fill(result, parsed)
        _step(progress, f"hashing {len(parsed.entries):,} names")
        hashed = hash_feed(parsed.entries, source.action or "default", source.category, key,
                           catalog)
        listings, names = listings_of(hashed), hashed.names
        snapshot = _line_snapshot(parsed, hashed, data, key)
        # The entries (~80 bytes a name) are all in the arrays now: the catalog and the
        # kernel table are written in the memory they held.
        del parsed, hashed
    if not allow_shrink:
        old = {k: catalog.listing(source.id, k) for k in KINDS}
        limit = source.max_shrink if source.max_shrink is not None else DEFAULT_MAX_SHRINK
        check_shrink(f"feed {source.name!r}", old, listings, limit, result)
    _step(progress, "writing the catalog and the kernel table")
    with catalog.transaction():
        result.applied = apply(dp, catalog, {(source.id, k): v for k, v in listings.items()},
                               names)
        catalog.set_line_snapshot(source.id, result.format, options, *snapshot)
        catalog.mark_synced(source.id, digest)
        if provenance is not None:
            catalog.set_provenance(source.id, provenance)
    result.seconds = time.perf_counter() - started
    return result


# -- syncing by line ------------------------------------------------------------------------
# A sync of a large feed reads the whole file, but only the lines that changed are parsed:
# each line of the file last applied is kept as (keyed line hash, name hash, value), and a
# line found again gives the same entry. The listing is then the union of every line's
# entry, built with array operations. Formats where a line's meaning depends on other lines
# (RPZ's $ORIGIN, a CSV header) and lines that give several names (hosts aliases) are always
# parsed in full; so is any file where the fast way meets something it cannot settle alone
# (a name given two values by two lines), where the full parse reports it properly.
LINE_FORMATS = ("plain", "hosts", "adblock")


def _lines_stand_alone(fmt: str, data: bytes) -> bool:
    """Whether each line's entry depends on that line alone. In a plain list, "name" and
    "*.name" on two lines merge into one subtree entry: such files are always read whole."""
    return fmt in LINE_FORMATS and not (fmt == "plain" and b"*." in data)


def _options(source: Source, key: HashKey) -> str:
    return repr((source.format, source.column, source.action, source.category,
                 source.skip_invalid, key.fingerprint)
                + ((source.match,) if source.match else ())  # old digests stay valid
                + ((source.min_confidence,) if source.min_confidence is not None else ()))


def _line_snapshot(parsed: ParsedFeed, hashed: Hashed, data: bytes, key: HashKey
                   ) -> tuple[array, array, array]:
    """(line hashes, name hashes, values) of the lines that gave exactly one entry."""
    if not _lines_stand_alone(parsed.format, data) or not parsed.entries:
        return array("Q"), array("Q"), array("Q")
    line_hashes, _ = line_hashes_of(data, key)
    by_line = array("Q", [0]) + line_hashes  # FeedEntry.line counts from 1
    lines = array("Q", map(attrgetter("line"), parsed.entries))
    if parsed.format == "hosts" and len(set(lines)) != len(lines):
        return array("Q"), array("Q"), array("Q")  # alias lines: always parse in full
    keys, order = unique(*sort_positions(gather(by_line, lines)))
    return keys, gather(hashed.hashes, order), gather(hashed.values, order)


def _sync_by_lines(key: HashKey, catalog: Catalog, source: Source, path: Path, data: bytes,
                   options: str, result: ImportResult
                   ) -> tuple[dict[str, Listing], dict[int, str], tuple] | None:
    fmt, old_options, old_lines, old_names, old_values = catalog.line_snapshot(source.id)
    if not _lines_stand_alone(fmt or "", data) or old_options != options or not old_lines:
        return None
    line_hashes, starts = line_hashes_of(data, key)
    hashes, first = unique(*sort_positions(line_hashes))
    at = join(old_lines, hashes)
    fresh_positions, matched, again = split_join(at, first, hashes)
    fresh = sorted(fresh_positions)
    if len(fresh) > 1000 and len(fresh) > len(line_hashes) // 5:
        return None  # much of the file changed: a full parse is as quick
    # Parse just the new lines, as a file of their own, then put back their line numbers.
    ends = array("Q", starts[1:]) + array("Q", [len(data) + 1])
    text = b"\n".join(data[starts[i]:ends[i] - 1] for i in fresh)
    parsed = formats.parse_feed(path, fmt, source.column, source.match,
                                source.min_confidence, text)
    if parsed.format != fmt:
        return None
    number = [i + 1 for i in fresh]
    entries = [dc_replace(e, line=number[e.line - 1]) for e in parsed.entries]
    bad = [dc_replace(b, path=str(path), line=number[b.line - 1]) for b in parsed.bad]
    skipped_lines = [dc_replace(b, path=str(path), line=number[b.line - 1])
                     for b in parsed.skipped_lines]
    if bad and not source.skip_invalid:
        _refuse_bad(ParsedFeed(str(path), fmt, entries, bad, parsed.skipped, 0))
    hashed = hash_feed(entries, source.action or "default", source.category, key, catalog)
    found_names = gather(old_names, matched)
    found_values = gather(old_values, matched)
    all_hashes = found_names + hashed.hashes
    all_values = found_values + hashed.values
    listings = split_listings(all_hashes, all_values)
    if listings is None:
        return None
    result.format = fmt
    result.lines_read = len(fresh)
    result.entries = sum(len(v) for v in listings.values())
    result.bad = bad
    result.skipped = dict(parsed.skipped)
    result.skipped_lines = skipped_lines
    result.kept = dict(parsed.kept)
    result.column = parsed.column
    # The new snapshot: lines found again keep theirs; new lines that gave one entry join.
    by_line = array("Q", [0]) + line_hashes  # FeedEntry.line counts from 1
    lines_of = array("Q", map(by_line.__getitem__, map(attrgetter("line"), entries)))
    if fmt == "hosts" and len(set(lines_of)) != len(lines_of):
        snapshot: tuple = (array("Q"), array("Q"), array("Q"))  # an alias line: parse in full
    else:
        # Lines found again, in line-hash order already, merged with the new lines.
        new_keys, order = unique(*sort_positions(lines_of))
        none = array("Q")
        snapshot = (
            merge(again, again, none, new_keys, new_keys)[0],
            merge(again, found_names, none, new_keys, gather(hashed.hashes, order))[1],
            merge(again, found_values, none, new_keys, gather(hashed.values, order))[1],
        )
    return listings, hashed.names, snapshot


def _copy_cap(source: Source) -> int | None:
    """The cap on a feed's file: a URL feed's copy was held to its own cap as it came (its
    max_bytes may be above the host's); any other file to the host's (max_feed_bytes)."""
    origin = source.origin or {}
    return origin.get("max_bytes") if origin.get("kind") == "url" else None


def _fill(result: ImportResult, parsed: ParsedFeed) -> None:
    result.format = parsed.format
    result.entries = len(parsed.entries)
    result.duplicates = parsed.duplicates
    result.bad = parsed.bad
    result.skipped = dict(parsed.skipped)
    result.skipped_lines = parsed.skipped_lines
    result.kept = dict(parsed.kept)
    result.column = parsed.column


def remove_feed(dp: Datapath, catalog: Catalog, name: str, *, reclaim: bool = True) -> Applied:
    """Unregister a feed; the names no other source lists leave the catalog and kernel, and
    the catalog file gives back the room when worth it (``reclaim``; not when the feed is
    added again at once, which reuses it)."""
    source = catalog.source(check_feed_name(name))
    if source is None:
        raise FeedError(f"no feed named {name!r} ('ccxdp feed list' shows them)")
    with catalog.transaction():
        applied = apply(dp, catalog, {(source.id, k): Listing.empty() for k in KINDS}, {})
        catalog.remove_source(source.id)
    if source.origin is not None and source.path:  # a copy ccxdp kept (a download): its own
        Path(source.path).unlink(missing_ok=True)
    if reclaim:
        catalog.reclaim()
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
    replace: bool = False, progress: Progress | None = None, allow_shrink: bool = False,
    match: str | None = None, min_confidence: int | None = None,
) -> ImportResult:
    """Add a file's entries to the manual source (``replace``: make them its whole list).
    A file that lists no name is refused, and with ``replace`` it would empty the hand-made
    list: applied only with ``allow_shrink``. (The hand-made list is the operator's own:
    replacing it by a different one is what --replace is for.)"""
    started = time.perf_counter()
    action = canonical_action(action) if action else "default"
    category = normalize_category(category) if category else None
    _step(progress, f"reading {Path(path).name}")
    parsed = parse(Path(path), fmt, column, skip_invalid, match=match,
                   min_confidence=min_confidence)
    result = ImportResult(MANUAL, str(path), fmt)
    _fill(result, parsed)
    with catalog.transaction():
        category_id = catalog.category_id(category) if category else 0
        _step(progress, f"hashing {len(parsed.entries):,} names")
        hashed = hash_feed(parsed.entries, action, category_id, dp.hash_key(), catalog)
        listings, names = listings_of(hashed), hashed.names
        if not allow_shrink or not replace:
            old = ({k: catalog.listing(MANUAL_ID, k) for k in KINDS} if replace
                   else dict.fromkeys(KINDS, Listing.empty()))
            check_shrink(str(path), old, listings, 1.0, result)  # only an empty list
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
