"""The catalog: every listed name with its hash, in an embedded SQLite store.

The kernel holds only hashes; the catalog is how names are listed, exported and reported, and
how a freshly loaded program gets its entries back after its pins were purged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import CcxdpError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    name     TEXT PRIMARY KEY,
    hash     INTEGER NOT NULL UNIQUE,  -- the kernel key, stored as signed 64-bit
    subtree  INTEGER NOT NULL,         -- 1: the name and everything below it
    action   TEXT NOT NULL,
    category INTEGER NOT NULL DEFAULT 0,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class CatalogError(CcxdpError):
    pass


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    hash: int
    subtree: bool
    action: str = "drop"
    category: int = 0
    added_at: str = ""


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def _unsigned(h: int) -> int:
    return h + (1 << 64) if h < 0 else h


class Catalog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise CatalogError(f"{self.path}: catalog schema {version} is newer than this ccxdp")
        self.db.executescript(_SCHEMA)
        self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: an exception inside (a failed kernel update) rolls back."""
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

    def get(self, name: str) -> CatalogEntry | None:
        row = self.db.execute(
            "SELECT name, hash, subtree, action, category, added_at FROM entries WHERE name=?",
            (name,),
        ).fetchone()
        return self._entry(row) if row else None

    def entries(self) -> list[CatalogEntry]:
        rows = self.db.execute(
            "SELECT name, hash, subtree, action, category, added_at FROM entries ORDER BY name"
        )
        return [self._entry(r) for r in rows]

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM entries").fetchone()[0]

    @staticmethod
    def _entry(row: tuple) -> CatalogEntry:
        name, h, subtree, action, category, added_at = row
        return CatalogEntry(name, _unsigned(h), bool(subtree), action, category, added_at)

    def upsert(self, entries: Iterable[CatalogEntry]) -> None:
        """Insert or update by name. A different name with an existing hash is refused."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for e in entries:
            clash = self.db.execute(
                "SELECT name FROM entries WHERE hash=? AND name<>?", (_signed(e.hash), e.name)
            ).fetchone()
            if clash:
                raise CatalogError(
                    f"{e.name!r} hashes like the listed {clash[0]!r}; refusing to list both"
                )
            self.db.execute(
                "INSERT INTO entries (name, hash, subtree, action, category, added_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "hash=excluded.hash, subtree=excluded.subtree, action=excluded.action, "
                "category=excluded.category",
                (e.name, _signed(e.hash), int(e.subtree), e.action, e.category, now),
            )

    def remove(self, names: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM entries WHERE name=?", [(n,) for n in names])
