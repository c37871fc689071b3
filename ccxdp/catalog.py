"""The catalog: every listed name with its hash, the category names, the exempt prefixes, in
an embedded SQLite store.

The kernel holds only hashes, category ids and LPM keys; the catalog is how entries are listed,
exported and reported, and how a freshly loaded program gets them back after its pins were
purged.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import CcxdpError

BLOCK = "block"
ALLOW = "allow"
KINDS = (BLOCK, ALLOW)
CATEGORY_MAX = 65535  # the kernel keeps a category as a __u16; 0 means none

SCHEMA_VERSION = 2

# One table statement per object, shared by a fresh catalog and the migration to it.
_ENTRIES = """
CREATE TABLE {table} (
    kind     TEXT NOT NULL CHECK (kind IN ('block', 'allow')),
    name     TEXT NOT NULL,
    hash     INTEGER NOT NULL,          -- the kernel key, stored as signed 64-bit
    subtree  INTEGER NOT NULL,          -- 1: the name and everything below it
    action   TEXT NOT NULL,             -- block: default, drop, nxdomain, ...; allow: allow
    category INTEGER NOT NULL DEFAULT 0, -- categories.id, 0 = none
    added_at TEXT NOT NULL,
    PRIMARY KEY (kind, name),
    UNIQUE (kind, hash)
)"""
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
_META = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)"""

_FRESH = [_ENTRIES.format(table="entries"), _CATEGORIES, _EXEMPT, _META]

# Version 1 had block entries only (name the primary key, action always 'drop', category an
# unnamed number). Its rows become block entries; a category number in use gets a name.
_FROM_V1 = [
    _ENTRIES.format(table="entries_v2"),
    "INSERT INTO entries_v2 (kind, name, hash, subtree, action, category, added_at) "
    "SELECT 'block', name, hash, subtree, action, category, added_at FROM entries",
    "DROP TABLE entries",
    "ALTER TABLE entries_v2 RENAME TO entries",
    _CATEGORIES,
    "INSERT INTO categories (id, name) SELECT DISTINCT category, 'category-' || category "
    "FROM entries WHERE category BETWEEN 1 AND 65535",
    _EXEMPT,
]
_MIGRATIONS = {1: _FROM_V1}


class CatalogError(CcxdpError):
    pass


# A malware family or feed name: what a threat feed calls it, lower-cased.
_CATEGORY = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62})$")


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
    subtree: bool
    action: str = "drop"
    category: int = 0
    added_at: str = ""
    kind: str = BLOCK


@dataclass(frozen=True)
class ExemptEntry:
    prefix: str
    added_at: str


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def _unsigned(h: int) -> int:
    return h + (1 << 64) if h < 0 else h


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


_COLUMNS = "name, hash, subtree, action, category, added_at, kind"


class Catalog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
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
                steps = _FRESH
            else:
                steps = [s for v in range(version, SCHEMA_VERSION) for s in _MIGRATIONS[v]]
            for statement in steps:
                self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _has_table(self, name: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
        ).fetchone()
        return row is not None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: an exception inside (a failed kernel update) rolls back. Nested
        use joins the outer transaction."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    # -- block and allow entries -----------------------------------------------------------
    def get(self, name: str, kind: str = BLOCK) -> CatalogEntry | None:
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE kind=? AND name=?", (kind, name)
        ).fetchone()
        return self._entry(row) if row else None

    def entries(self, kind: str | None = BLOCK) -> list[CatalogEntry]:
        """Entries of one kind (both with None), by name."""
        if kind is None:
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY name, kind")
        else:
            rows = self.db.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE kind=? ORDER BY name", (kind,)
            )
        return [self._entry(r) for r in rows]

    def count(self, kind: str = BLOCK) -> int:
        return self.db.execute("SELECT count(*) FROM entries WHERE kind=?", (kind,)).fetchone()[0]

    @staticmethod
    def _entry(row: tuple) -> CatalogEntry:
        name, h, subtree, action, category, added_at, kind = row
        return CatalogEntry(name, _unsigned(h), bool(subtree), action, category, added_at, kind)

    def upsert(self, entries: Iterable[CatalogEntry]) -> None:
        """Insert or update by (kind, name). A different name with an existing hash is
        refused, whatever its kind: the kernel could not tell the two apart."""
        now = _now()
        for e in entries:
            if e.kind not in KINDS:
                raise CatalogError(f"{e.name!r}: unknown entry kind {e.kind!r}")
            clash = self.db.execute(
                "SELECT name FROM entries WHERE hash=? AND name<>?", (_signed(e.hash), e.name)
            ).fetchone()
            if clash:
                raise CatalogError(
                    f"{e.name!r} hashes like the listed {clash[0]!r}; refusing to list both"
                )
            self.db.execute(
                f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(kind, name) DO UPDATE SET hash=excluded.hash, "
                "subtree=excluded.subtree, action=excluded.action, category=excluded.category",
                (e.name, _signed(e.hash), int(e.subtree), e.action, e.category,
                 e.added_at or now, e.kind),
            )

    def remove(self, names: Iterable[str], kind: str = BLOCK) -> None:
        self.db.executemany(
            "DELETE FROM entries WHERE kind=? AND name=?", [(kind, n) for n in names]
        )

    # -- categories ------------------------------------------------------------------------
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
        return [ExemptEntry(*r) for r in rows]

    def add_exempt(self, prefixes: Iterable[str]) -> None:
        now = _now()
        self.db.executemany(
            "INSERT INTO exempt (prefix, added_at) VALUES (?, ?) ON CONFLICT(prefix) DO NOTHING",
            [(p, now) for p in prefixes],
        )

    def remove_exempt(self, prefixes: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM exempt WHERE prefix=?", [(p,) for p in prefixes])
