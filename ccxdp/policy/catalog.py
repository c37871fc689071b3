"""The catalog: every listed name with its hash, where it comes from, the category names and
the exempt prefixes, in an embedded SQLite store.

Names come from sources: "manual" (``block add``, ``allow add``, ``block import``) and one
per feed (``feed add``). Each source keeps its listing per kind as two sorted arrays (name
hashes, and the kernel entry each gives the name) in one row: a million-name feed is read,
diffed and merged in milliseconds, where a million rows would take seconds. Where sources
disagree, the manual source wins, then the feed added first.

The ``entries`` table holds the result, one row per listed (name, kind): the name, its
match, action and category as the winning source gives them, and when it was first listed.
It is derived from the listings (``blocklist`` keeps it in step) and is what ``block list``,
``block export`` and reports read; the kernel holds only hashes and entries.
"""

from __future__ import annotations

import ctypes
import json
import re
import sqlite3
from array import array
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ccxdp import sqlite
from ccxdp.datapath import shared
from ccxdp.datapath.settings import action_name
from ccxdp.errors import CcxdpError
from ccxdp.utc import restamp, utc_now_text, utc_text

# Kinds and matches of entries: defined here, taken from here by formats, lists and the CLI.
BLOCK = "block"
ALLOW = "allow"
KINDS = (BLOCK, ALLOW)
MATCHES = ("exact", "subtree", "below")
CATEGORY_MAX = 65535  # the kernel keeps a category as a __u16; 0 means none
MANUAL = "manual"  # the source of block add, allow add and block import

SCHEMA_VERSION = 6

_ENTRIES_V2 = """
CREATE TABLE {table} (
    kind     TEXT NOT NULL CHECK (kind IN ('block', 'allow')),
    name     TEXT NOT NULL,
    hash     INTEGER NOT NULL,
    subtree  INTEGER NOT NULL,
    action   TEXT NOT NULL,
    category INTEGER NOT NULL DEFAULT 0,
    added_at TEXT NOT NULL,
    PRIMARY KEY (kind, name),
    UNIQUE (kind, hash)
)"""
# One row per listed name, keyed by its hash (the rowid: rows go in sorted by it, the fastest
# way into a B-tree, and a name's hash is how the control plane finds it). block and allow
# hold the effective entry of each kind as the packed kernel entry (shared.pack_entry:
# action | flags << 8 | category << 16), NULL when the name is not listed as that kind;
# *_added is when it was first listed so (Unix seconds). Small integer columns keep a
# million rows quick to write.
_ENTRIES = """
CREATE TABLE entries (
    hash        INTEGER PRIMARY KEY,  -- the kernel key, stored as signed 64-bit
    name        TEXT NOT NULL,
    block       INTEGER,
    allow       INTEGER,
    block_added INTEGER,
    allow_added INTEGER
)"""
_SOURCES = """
CREATE TABLE sources (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    path         TEXT,              -- feeds: the file
    format       TEXT,              -- feeds: auto, plain, hosts, rpz, adblock, csv
    column_name  TEXT,              -- feeds in CSV: the column holding names
    action       TEXT,              -- feeds: the action of entries that name none
    category     INTEGER NOT NULL DEFAULT 0,
    skip_invalid INTEGER NOT NULL DEFAULT 0,
    added_at     TEXT NOT NULL,
    synced_at    TEXT,
    digest       TEXT,              -- sha256 of the file and options last applied
    line_format  TEXT,              -- feeds: the format the lines were read as
    line_options TEXT,              -- and the options and key they were read with
    origin       TEXT,              -- feeds not read from a local file: where from (_ORIGIN)
    provenance   TEXT,              -- and what that copy is (a zone's serial, an ETag), JSON
    max_shrink   REAL,              -- feeds: the share of names a sync may remove; NULL: 0.5
    match        TEXT,              -- feeds: 'subtree' lists exact names with all below
    min_confidence INTEGER          -- feeds in ThreatFox CSV: rows below it are skipped
)"""
# A source's arrays live in files beside the catalog (arrays/<source>-<what>-<gen>.u64),
# one row each here naming the current generation: rewriting tens of megabytes inside
# SQLite costs more than the rest of a sync. A change writes a new generation's file, the
# row points to it in the same transaction as everything else, and files no row names
# (an older generation, or a rolled-back one) are swept after. Like the catalog's commits
# (synchronous=NORMAL), files survive a crash of ccxdp, not a power loss.
#   block_hashes, block_values, allow_hashes, allow_values: the listings (Listing);
#   line_hashes, line_names, line_values: feeds only, what each line of the file last
#   applied gave: keyed line hashes, sorted, with the name hash and listing value of each.
_ARRAYS = """
CREATE TABLE source_arrays (
    source INTEGER NOT NULL,
    what   TEXT NOT NULL,
    gen    INTEGER NOT NULL,
    PRIMARY KEY (source, what)
) WITHOUT ROWID"""
_CATEGORIES = """
CREATE TABLE categories (
    id   INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 65535),
    name TEXT NOT NULL UNIQUE
)"""
_EXEMPT = """
CREATE TABLE exempt (
    prefix   TEXT PRIMARY KEY,  -- normalized, as ipaddress prints it: 198.18.0.0/24, fd00::/64
    added_at TEXT NOT NULL
)"""
# Prefixes exempt because an opted-out line holds them now (policy/line_exempt.py derives
# them from the sessions sources): kept apart from the static ones above, so that a prefix
# can be both and removing it from one set never removes it from the other. One line per
# prefix: an address is held by one line at a time.
_LINE_EXEMPT = """
CREATE TABLE line_exempt (
    prefix   TEXT PRIMARY KEY,  -- normalized, as in exempt
    line     TEXT NOT NULL,
    added_at TEXT NOT NULL      -- when this line got it
)"""
# Schema 6: the subscriber address plan (policy/plan.py): the prefixes subscribers' queries
# come from; hits from elsewhere are counted only globally.
_PLAN = """
CREATE TABLE plan (
    prefix   TEXT PRIMARY KEY,  -- normalized, as in exempt
    added_at TEXT NOT NULL
)"""
_META = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)"""
_MANUAL_ROW = f"INSERT INTO sources (id, name, added_at) VALUES (1, '{MANUAL}', '')"

# Schema 5: a feed may come from elsewhere than a file of the operator's (a zone on a
# primary, a URL): origin says where, as JSON ({"kind": "zone" | "url", ...}); its ``path``
# is then the last good copy, kept in the state folder, which syncs read as any file.
# provenance: what that copy is, JSON, for block list --sources and the records. max_shrink:
# the shrink guard's share for this feed (feeds.py).
_SOURCES_V5 = ["ALTER TABLE sources ADD COLUMN origin TEXT",
               "ALTER TABLE sources ADD COLUMN provenance TEXT",
               "ALTER TABLE sources ADD COLUMN max_shrink REAL",
               "ALTER TABLE sources ADD COLUMN match TEXT",
               "ALTER TABLE sources ADD COLUMN min_confidence INTEGER"]
_FRESH = [_ENTRIES, _SOURCES, _ARRAYS, _MANUAL_ROW, _CATEGORIES, _EXEMPT, _LINE_EXEMPT,
          _PLAN, _META]

# Version 1 had block entries only (name the primary key, action always 'drop', category an
# unnamed number). Its rows become block entries; a category number in use gets a name.
_FROM_V1 = [
    _ENTRIES_V2.format(table="entries_v2"),
    "INSERT INTO entries_v2 (kind, name, hash, subtree, action, category, added_at) "
    "SELECT 'block', name, hash, subtree, action, category, added_at FROM entries",
    "DROP TABLE entries",
    "ALTER TABLE entries_v2 RENAME TO entries",
    _CATEGORIES,
    "INSERT INTO categories (id, name) SELECT DISTINCT category, 'category-' || category "
    "FROM entries WHERE category BETWEEN 1 AND 65535",
    _EXEMPT,
]


class CatalogError(CcxdpError):
    pass


# A malware family or feed name: what a threat feed calls it, lower-cased.
_CATEGORY = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62})$")


# VACUUM rewrites the whole catalog (seconds for a million names), so it is done only when
# it gives back at least this much (and a quarter of the file): see Catalog.reclaim.
RECLAIM_MIN_BYTES = 8 << 20

# How every view (stats, top, records, report, metrics) names the hits of entries without a
# category (id 0): no category name has parentheses, so it cannot be taken for one.
NO_CATEGORY = "(none)"


def category_label(category: int, names: Mapping[int, str]) -> str:
    """A category id as every view shows it: its name, NO_CATEGORY for none, and
    ``category-N`` for an id this catalog does not know (hits from another resolver)."""
    if category == 0:
        return NO_CATEGORY
    return names.get(category, f"category-{category}")


def normalize_category(text: str) -> str:
    """A category name as stored and shown: lower case; letters, digits, '.', '_', '-'."""
    name = text.strip().lower()
    if not _CATEGORY.match(name):
        raise CatalogError(
            f"invalid category {text!r}: use 1-63 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    hash: int
    match: str = "exact"
    action: str = "drop"
    category: int = 0
    added_at: str = ""
    kind: str = BLOCK

    @property
    def subtree(self) -> bool:
        return self.match == "subtree"


@dataclass(frozen=True)
class ExemptEntry:
    prefix: str
    added_at: str


@dataclass(frozen=True)
class PlanEntry:
    prefix: str
    added_at: str


@dataclass(frozen=True)
class LineExemptEntry:
    prefix: str
    line: str
    added_at: str


@dataclass(frozen=True)
class Source:
    id: int
    name: str
    path: str | None
    format: str | None
    column: str | None
    action: str | None
    category: int
    skip_invalid: bool
    added_at: str
    synced_at: str | None
    digest: str | None
    origin: dict | None = None  # None: a local file; else {"kind": "zone" | "url", ...}
    provenance: dict | None = None  # what the last good copy is (serial, ETag, ...)
    max_shrink: float | None = None  # the share of names a sync may remove; None: default
    match: str | None = None  # "subtree": a format's exact names listed with all below
    min_confidence: int | None = None  # ThreatFox CSV: rows below this confidence skipped

    @property
    def is_feed(self) -> bool:
        return self.name != MANUAL


@dataclass
class Listing:
    """What one source lists of one kind: name hashes, sorted, and the packed kernel entry
    (shared.pack_entry) each gives its name."""

    hashes: array
    values: array

    @classmethod
    def empty(cls) -> Listing:
        return cls(array("Q"), array("Q"))

    def __len__(self) -> int:
        return len(self.hashes)


def _json(text: str | None) -> dict | None:
    return json.loads(text) if text else None


def signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def unsigned(h: int) -> int:
    return h + (1 << 64) if h < 0 else h


def now() -> str:
    return utc_now_text()


def _seconds(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp()) if iso else 0


def _iso(seconds: int | None) -> str:
    return utc_text(seconds or 0)


def _entry(kind: str, row: tuple, looks: dict[int, tuple[str, str, int]]) -> CatalogEntry:
    """A CatalogEntry from (name, hash, value, added); looks caches unpacked values."""
    name, h, value, added = row
    look = looks.get(value)
    if look is None:
        match, action, category = unpack(value)
        look = looks[value] = (match, "allow" if kind == ALLOW else action, category)
    return CatalogEntry(name, unsigned(h), look[0], look[1], look[2], _iso(added), kind)


_SOURCE_COLUMNS = ("id, name, path, format, column_name, action, category, skip_invalid, "
                   "added_at, synced_at, digest, origin, provenance, max_shrink, match, "
                   "min_confidence")


def release_memory() -> None:
    """Give freed heap back to the system. A sync of a million names takes a few hundred MB
    while it parses and hashes, the catalog's page cache up to 64 MiB; glibc keeps what is
    freed in its arenas, so the daemon would sit on its largest feed's peak between syncs,
    beside the resolver."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to ask
        pass


class Catalog:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._open()
        except (sqlite3.Error, OSError) as e:  # a full disk, a read-only state folder
            raise CatalogError(sqlite.failure(self.path, e)) from e

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite.connect(self.path, isolation_level=None)
        # 1 KB pages: a feed sync changes thousands of rows spread at random over a million
        # (rows are keyed by hash), and each writes its whole page to the WAL; measured with
        # scripts/bench_feeds.py, a 1% sync of a million names takes ~0.59 s with 1 KB pages
        # against ~0.70 s with 4 KB, and the import ~5.1 s against ~4.8 s. New files only.
        self.db.execute("PRAGMA page_size=1024")
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL: a commit survives a crash of ccxdp (only a power loss may undo the
        # last one), at a fraction of FULL's fsyncs on million-row imports.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-65536")
        # Checkpoint the WAL every ~16 MB rather than every 1 MB: a sync's few thousand
        # scattered rows then cost their WAL pages, and the copy back into the file is paid
        # once every few syncs. After a checkpoint the WAL file shrinks back to 64 MB at most.
        self.db.execute("PRAGMA wal_autocheckpoint=16384")
        self.db.execute("PRAGMA journal_size_limit=67108864")
        self._upgrade()

    def _upgrade(self) -> None:
        """Bring the schema to SCHEMA_VERSION in one transaction (nothing changes if a step
        fails). Version 0 is an empty file: it gets the current schema directly."""
        with self.transaction():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CatalogError(
                    f"{self.path}: catalog schema {version} is newer than this ccxdp "
                    f"(which knows up to {SCHEMA_VERSION})"
                )
            if version == 0 and self._has_table("entries"):
                version = 1  # made by version 1, which set user_version only afterwards
            if version == 0:
                for statement in _FRESH:
                    self.db.execute(statement)
            if version == 1:
                for statement in _FROM_V1:
                    self.db.execute(statement)
                version = 2
            if version == 2:
                self._from_v2()
                version = 3
            if version == 3:
                self.db.execute(_LINE_EXEMPT)
                version = 4
            # Older steps make sources as it is now: only a table made by version 4 or
            # before, and not remade since, lacks the columns.
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(sources)")}
            if version >= 1 and "origin" not in columns:
                for statement in _SOURCES_V5:
                    self.db.execute(statement)
            if 1 <= version < 6 and not self._has_table("plan"):
                self.db.execute(_PLAN)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _from_v2(self) -> None:
        """Version 2 kept entries by (kind, name) with a subtree flag; they become the
        manual source's listings and the derived entries table."""
        rows = self.db.execute(
            "SELECT kind, name, hash, subtree, action, category, added_at FROM entries"
        ).fetchall()
        self.db.execute("ALTER TABLE entries RENAME TO entries_v2")
        for statement in (_ENTRIES, _SOURCES, _ARRAYS, _MANUAL_ROW, _META.replace(
                "CREATE TABLE", "CREATE TABLE IF NOT EXISTS")):
            self.db.execute(statement)
        self.db.execute("DROP TABLE entries_v2")
        listings: dict[str, dict[int, int]] = {BLOCK: {}, ALLOW: {}}
        for kind, name, h, subtree, action, category, added_at in sorted(
                rows, key=lambda r: signed(unsigned(r[2]))):
            value = pack(kind, "subtree" if subtree else "exact", action, category)
            listings[kind][unsigned(h)] = value
            self.upsert_entries(kind, [(signed(unsigned(h)), name, value,
                                        _seconds(added_at))])
        for kind, items in listings.items():
            keys = sorted(items)
            self.set_listing(1, kind, Listing(array("Q", keys),
                                              array("Q", (items[k] for k in keys))))

    def _has_table(self, name: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
        ).fetchone()
        return row is not None

    def close(self) -> None:
        self.db.close()
        release_memory()  # its page cache (up to 64 MiB, cache_size below) with it

    def reclaim(self) -> int:
        """Give the file's free pages back (VACUUM) when that is worth it: when a quarter of
        the file or more is free and that is RECLAIM_MIN_BYTES or more, as after a big feed
        went (SQLite reuses free pages but never shrinks the file by itself). The bytes the
        file shrank by; 0 when not worth it, or when another process is reading (it is
        tried again after the next removal)."""
        if self.db.in_transaction:
            return 0
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        if free * page_size < RECLAIM_MIN_BYTES or free * 4 < pages:
            return 0
        before = self.path.stat().st_size
        try:
            self.db.execute("VACUUM")
            # In WAL mode the smaller copy is in the WAL: the checkpoint writes it back and
            # truncates the file, and the WAL after it.
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            return 0
        return max(0, before - self.path.stat().st_size)

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> AbstractContextManager[None]:
        """All or nothing: an exception inside (a failed kernel update) rolls back. Nested
        use joins the outer transaction."""
        return sqlite.transaction(self.db, ended=self._sweep_arrays)

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    # -- entries (derived from the listings) -----------------------------------------------
    def get(self, h: int, kind: str = BLOCK) -> CatalogEntry | None:
        """The entry of one name hash."""
        row = self.db.execute(
            f"SELECT name, hash, {kind}, {kind}_added FROM entries WHERE hash=? "
            f"AND {kind} IS NOT NULL", (signed(h),)
        ).fetchone()
        return _entry(kind, row, {}) if row else None

    def names_of(self, hashes: Iterable[int]) -> dict[int, str]:
        """{hash: name} of the listed ones among these hashes (any kind)."""
        out: dict[int, str] = {}
        chunk: list[int] = []

        def flush() -> None:
            marks = ",".join("?" * len(chunk))
            for h, name in self.db.execute(
                    f"SELECT hash, name FROM entries WHERE hash IN ({marks})", chunk):
                out[unsigned(h)] = name
            chunk.clear()

        for h in hashes:
            chunk.append(signed(h))
            if len(chunk) == 500:
                flush()
        if chunk:
            flush()
        return out

    def entries(self, kind: str | None = BLOCK) -> list[CatalogEntry]:
        """Entries of one kind (both with None), by name."""
        kinds = KINDS if kind is None else (kind,)
        out: list[CatalogEntry] = []
        for k in kinds:
            looks: dict[int, tuple[str, str, int]] = {}
            rows = self.db.execute(
                f"SELECT name, hash, {k}, {k}_added FROM entries WHERE {k} IS NOT NULL")
            out += [_entry(k, r, looks) for r in rows]
        out.sort(key=lambda e: (e.name, e.kind))
        return out

    def count(self, kind: str = BLOCK) -> int:
        return self.db.execute(
            f"SELECT count(*) FROM entries WHERE {kind} IS NOT NULL").fetchone()[0]

    def upsert_entries(self, kind: str, rows: Iterable[tuple]) -> None:
        """List rows (signed hash, name, value, added seconds) as entries of one kind; a
        name listed before keeps its added time. Fastest in hash order."""
        self.db.executemany(
            f"INSERT INTO entries (hash, name, {kind}, {kind}_added) VALUES (?, ?, ?, ?) "
            f"ON CONFLICT(hash) DO UPDATE SET {kind}=excluded.{kind}, "
            f"{kind}_added=coalesce({kind}_added, excluded.{kind}_added)", rows)

    def unlist_entries(self, kind: str, hashes: Iterable[int]) -> None:
        """Unlist names (unsigned hashes) as one kind; a row listed as neither goes."""
        signed_hashes = [signed(h) for h in hashes]
        self.db.executemany(
            f"UPDATE entries SET {kind}=NULL, {kind}_added=NULL WHERE hash=?",
            ((h,) for h in signed_hashes))
        self.db.executemany(
            "DELETE FROM entries WHERE hash=? AND block IS NULL AND allow IS NULL",
            ((h,) for h in signed_hashes))

    def clear_entries(self) -> None:
        self.db.execute("DELETE FROM entries")

    # -- sources and their listings --------------------------------------------------------
    def sources(self) -> list[Source]:
        """Every source, in precedence order: manual first, then feeds as they were added."""
        rows = self.db.execute(f"SELECT {_SOURCE_COLUMNS} FROM sources ORDER BY id")
        return [Source(*r[:7], bool(r[7]), restamp(r[8]), restamp(r[9]), r[10],
                       _json(r[11]), _json(r[12]), r[13], r[14], r[15]) for r in rows]

    def source(self, name: str) -> Source | None:
        return next((s for s in self.sources() if s.name == name), None)

    def add_source(self, name: str, path: str, fmt: str, column: str | None,
                   action: str | None, category: int, skip_invalid: bool,
                   origin: dict | None = None, max_shrink: float | None = None,
                   match: str | None = None, min_confidence: int | None = None) -> Source:
        self.db.execute(
            "INSERT INTO sources (name, path, format, column_name, action, category, "
            "skip_invalid, added_at, origin, max_shrink, match, min_confidence) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, path, fmt, column, action, category, int(skip_invalid), now(),
             json.dumps(origin, sort_keys=True) if origin is not None else None, max_shrink,
             match, min_confidence),
        )
        source = self.source(name)
        assert source is not None
        return source

    def remove_source(self, source_id: int) -> None:
        self.db.execute("DELETE FROM source_arrays WHERE source=?", (source_id,))  # swept after
        self.db.execute("DELETE FROM sources WHERE id=?", (source_id,))

    def set_max_shrink(self, name: str, share: float | None) -> None:
        self.db.execute("UPDATE sources SET max_shrink=? WHERE name=?", (share, name))

    def set_source_path(self, source_id: int, path: str) -> None:
        """A feed's file, moved (a URL feed's new copy); written with the sync that reads it."""
        self.db.execute("UPDATE sources SET path=? WHERE id=?", (path, source_id))

    def set_provenance(self, source_id: int, provenance: dict | None) -> None:
        """What the feed's last good copy is; written with the sync that applied it."""
        self.db.execute("UPDATE sources SET provenance=? WHERE id=?",
                        (json.dumps(provenance, sort_keys=True) if provenance is not None
                         else None, source_id))

    def mark_synced(self, source_id: int, digest: str | None) -> None:
        self.db.execute("UPDATE sources SET synced_at=?, digest=? WHERE id=?",
                        (now(), digest, source_id))

    @property
    def arrays_dir(self) -> Path:
        return self.path.parent / "arrays"

    def _array_file(self, source_id: int, what: str, gen: int) -> Path:
        return self.arrays_dir / f"{source_id}-{what}-{gen}.u64"

    def _arrays(self, source_id: int, *what: str) -> list[array]:
        gens = dict(self.db.execute(
            f"SELECT what, gen FROM source_arrays WHERE source=? AND what IN "
            f"({','.join('?' * len(what))})", (source_id, *what)))
        out = []
        for w in what:
            a = array("Q")
            if w in gens:
                a.frombytes(self._array_file(source_id, w, gens[w]).read_bytes())
            out.append(a)
        return out

    def _set_arrays(self, source_id: int, **arrays: array) -> None:
        self.arrays_dir.mkdir(mode=0o700, exist_ok=True)
        for what, a in arrays.items():
            row = self.db.execute("SELECT gen FROM source_arrays WHERE source=? AND what=?",
                                  (source_id, what)).fetchone()
            gen = row[0] + 1 if row else 1
            with open(self._array_file(source_id, what, gen), "wb") as f:
                f.write(memoryview(a).cast("B"))
            self.db.execute(
                "INSERT INTO source_arrays (source, what, gen) VALUES (?, ?, ?) "
                "ON CONFLICT(source, what) DO UPDATE SET gen=excluded.gen",
                (source_id, what, gen))

    def _sweep_arrays(self) -> None:
        """Remove array files no row names (after a commit or a rollback)."""
        if not self.arrays_dir.is_dir():
            return
        named = {self._array_file(*row).name for row in self.db.execute(
            "SELECT source, what, gen FROM source_arrays")}
        for f in self.arrays_dir.iterdir():
            if f.name not in named:
                f.unlink(missing_ok=True)

    def listing(self, source_id: int, kind: str) -> Listing:
        return Listing(*self._arrays(source_id, f"{kind}_hashes", f"{kind}_values"))

    def listings(self) -> dict[tuple[int, str], Listing]:
        """Every source's listings, keyed (source id, kind)."""
        return {(s.id, kind): self.listing(s.id, kind) for s in self.sources() for kind in KINDS}

    def set_listing(self, source_id: int, kind: str, listing: Listing) -> None:
        self._set_arrays(source_id, **{f"{kind}_hashes": listing.hashes,
                                       f"{kind}_values": listing.values})

    def line_snapshot(self, source_id: int) -> tuple[str | None, str | None, array, array,
                                                     array]:
        """(format, options, line hashes, name hashes, values) of a feed's last sync."""
        fmt, options = self.db.execute(
            "SELECT line_format, line_options FROM sources WHERE id=?", (source_id,)).fetchone()
        return (fmt, options,
                *self._arrays(source_id, "line_hashes", "line_names", "line_values"))

    def set_line_snapshot(self, source_id: int, fmt: str | None, options: str | None,
                          lines: array, names: array, values: array) -> None:
        self.db.execute("UPDATE sources SET line_format=?, line_options=? WHERE id=?",
                        (fmt, options, source_id))
        self._set_arrays(source_id, line_hashes=lines, line_names=names, line_values=values)

    # -- categories ------------------------------------------------------------------------
    def feeds_by_category(self) -> dict[int, list[str]]:
        """{category id: the feeds whose block entries carry it}, feeds in precedence order:
        the evidence a collection records with the hits of each category."""
        out: dict[int, list[str]] = {}
        for source in self.sources():
            if not source.is_feed:
                continue
            values = set(self.listing(source.id, BLOCK).values)
            for category in sorted({unpack(v)[2] for v in values}):
                out.setdefault(category, []).append(source.name)
        return out

    def categories(self) -> dict[int, str]:
        return dict(self.db.execute("SELECT id, name FROM categories ORDER BY id"))

    def category_id(self, name: str) -> int:
        """The id of a category, made on first use: the smallest id not taken yet."""
        row = self.db.execute("SELECT id FROM categories WHERE name=?", (name,)).fetchone()
        if row:
            return row[0]
        free = self.db.execute(
            "SELECT min(id) + 1 FROM (SELECT 0 AS id UNION ALL SELECT id FROM categories) "
            "WHERE id + 1 NOT IN (SELECT id FROM categories)"
        ).fetchone()[0]
        if free > CATEGORY_MAX:
            raise CatalogError(
                f"cannot make category {name!r}: all {CATEGORY_MAX} category ids are taken"
            )
        self.db.execute("INSERT INTO categories (id, name) VALUES (?, ?)", (free, name))
        return free

    # -- exempt source prefixes ------------------------------------------------------------
    def exempt(self) -> list[ExemptEntry]:
        rows = self.db.execute("SELECT prefix, added_at FROM exempt")
        return [ExemptEntry(prefix, restamp(added)) for prefix, added in rows]

    def add_exempt(self, prefixes: Iterable[str]) -> None:
        stamp = now()
        self.db.executemany(
            "INSERT INTO exempt (prefix, added_at) VALUES (?, ?) ON CONFLICT(prefix) DO NOTHING",
            [(p, stamp) for p in prefixes],
        )

    def remove_exempt(self, prefixes: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM exempt WHERE prefix=?", [(p,) for p in prefixes])

    # -- the subscriber address plan ---------------------------------------------------------
    def plan(self) -> list[PlanEntry]:
        rows = self.db.execute("SELECT prefix, added_at FROM plan")
        return [PlanEntry(prefix, restamp(added)) for prefix, added in rows]

    def add_plan(self, prefixes: Iterable[str]) -> None:
        stamp = now()
        self.db.executemany(
            "INSERT INTO plan (prefix, added_at) VALUES (?, ?) ON CONFLICT(prefix) DO NOTHING",
            [(p, stamp) for p in prefixes],
        )

    def remove_plan(self, prefixes: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM plan WHERE prefix=?", [(p,) for p in prefixes])

    def line_exempt(self) -> list[LineExemptEntry]:
        rows = self.db.execute("SELECT prefix, line, added_at FROM line_exempt")
        return [LineExemptEntry(prefix, line, restamp(added)) for prefix, line, added in rows]

    def set_line_exempt(self, wanted: dict[str, str]) -> None:
        """Make {prefix: line} the line-derived prefixes; a prefix that stays with its line
        keeps its added time, one that moves to another line starts again."""
        stamp = now()
        have = {e.prefix: e.line for e in self.line_exempt()}
        self.db.executemany("DELETE FROM line_exempt WHERE prefix=?",
                            [(p,) for p, line in have.items() if wanted.get(p) != line])
        self.db.executemany(
            "INSERT INTO line_exempt (prefix, line, added_at) VALUES (?, ?, ?)",
            [(p, line, stamp) for p, line in wanted.items() if have.get(p) != line])


# -- the packed kernel entry of a listing ---------------------------------------------------
_MATCH_FLAGS = {
    "exact": 0,
    "subtree": shared.ENTRY_SUBTREE,
    "below": shared.ENTRY_SUBTREE | shared.ENTRY_NOT_SELF,
}
_FLAGS_MATCH = {v: k for k, v in _MATCH_FLAGS.items()}


def action_code(action: str) -> int:
    """The kernel's code for an action as the catalog stores it ("default", "allow", ...)."""
    if action == "default":
        return shared.Action.DEFAULT
    return shared.Action[action.upper()]


def pack(kind: str, match: str, action: str, category: int) -> int:
    """A listing's value for one name: the kernel entry it would hold alone."""
    if kind == ALLOW:
        return shared.pack_entry(shared.Action.ALLOW, _MATCH_FLAGS[match], 0)
    return shared.pack_entry(action_code(action), _MATCH_FLAGS[match], category)


def unpack(value: int) -> tuple[str, str, int]:
    """(match, action, category) of a listing's value."""
    action, flags, category = shared.unpack_entry(value)
    return _FLAGS_MATCH[flags], action_name(action), category
