"""The hits store: blocked queries per source address, category and hour, in its own SQLite
file (``hits.db`` in the state folder), and what attribution and notification need.

Rows come from the collector, which reads the kernel's per-source counters and calls
``Store.stage_counters(batches, checkpoint)``: the counters, as the kernel's bytes, and the
collector's checkpoint ("counters already taken") are written in one transaction, so after a
kill -9 at any point the store holds either both or neither, and the collector resumes from
a checkpoint that matches the hits. ``fold`` then turns staged counters into ``hits`` rows;
every reader of hits folds first, so what is staged is never missing from what they read.
``add_hits`` writes rows directly (same transaction rule). The checkpoint is opaque to the
store: names to integers of any width. A call updates the keys it gives and deletes those
given as None; the others stay, so a collector that keeps "already taken" per source writes
only the sources that moved.

Times are UTC, kept as integer microseconds since the Unix epoch; an hour is the Unix second
of its start. Addresses are kept as ``ipaddress`` prints them (IPv4 as IPv4, never mapped).

Privacy: a raw row names an address. Once ``notify`` has attributed it to a subscriber line,
``expire`` folds it into per-line aggregates (line, category, hour: no address) and deletes
it when it is older than the retention. Unattributed rows stay until a retention of their own.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
import struct
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from socket import AF_INET, AF_INET6, inet_ntop

from ccxdp import sqlite
from ccxdp.errors import CcxdpError
from ccxdp.policy.catalog import category_label

HITS_DB = "hits.db"  # in the state folder, beside the catalog
_OLD_HITS_DB = "records.db"  # its name until it was told apart from the records it feeds
SCHEMA_VERSION = 5  # 2: the staged table; 3: the feeds of staged counters; 4, 5: see below
HOUR = 3600
CATEGORY_MAX = 65535  # the kernel keeps a category as a __u16; 0 means none

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Schema 2: counters staged by the collector, not yet folded into hits. One row per batch
# the collector read: the kernel's entries (COUNTER_KEY, COUNTER_VALUE) as it read them,
# only those of the drained buffer, and the hit-clock offset taken at that collection.
# Appended without an index, so a collection commits in a fraction of an upsert's time.
_SCHEMA_2 = [
    """CREATE TABLE staged (
        id        INTEGER PRIMARY KEY,   -- in staging order
        offset_ns INTEGER NOT NULL,      -- CLOCK_MONOTONIC + offset_ns = Unix ns
        keys      BLOB NOT NULL,         -- n x COUNTER_KEY
        counters  BLOB NOT NULL          -- n x COUNTER_VALUE, in the same order
    )""",
]
# Schema 3: the evidence for each staged batch, taken from the catalog at that collection:
# {category id: [feeds whose block entries carry that category]}, JSON. Folding writes it
# into hit_feeds, for the records' feeds field.
_SCHEMA_3 = ["ALTER TABLE staged ADD COLUMN feeds TEXT"]
# Schema 4, for the fleet (ccxdp/hits/fleet.py), which ships staged batches from here to
# PostgreSQL and marks there the last batch id it stored: batch ids must never be reused, so
# staged is rebuilt with AUTOINCREMENT (a plain rowid restarts at 1 once the table is
# empty), and each batch keeps its epoch. meta holds this store's identity (instance, made
# once) and, once it spools for a fleet store, that store (ships_to). opt_outs: the lines
# whose subscribers opted out (never notified, their addresses exempt where the daemon
# follows their sessions).
_SCHEMA_4 = [
    """CREATE TABLE staged4 (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        offset_ns INTEGER NOT NULL,
        keys      BLOB NOT NULL,
        counters  BLOB NOT NULL,
        feeds     TEXT,
        epoch     INTEGER              -- the collector's epoch this batch drained
    )""",
    "INSERT INTO staged4 (id, offset_ns, keys, counters, feeds) "
    "SELECT id, offset_ns, keys, counters, feeds FROM staged",
    "DROP TABLE staged",
    "ALTER TABLE staged4 RENAME TO staged",
    """CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    "INSERT INTO meta (key, value) VALUES ('instance', lower(hex(randomblob(16))))",
    """CREATE TABLE opt_outs (
        line  TEXT PRIMARY KEY,
        since TEXT NOT NULL             -- when it was recorded, ISO 8601 UTC
    ) WITHOUT ROWID""",
]

# Schema 5: the line joins the key of hits, '' for "not attributed yet". Until 4, hits that
# came after notify into an hour it had attributed reset the whole row's line (the new hits
# may be another holder's): the notified line lost its hits from every view until the next
# notify. Now the new hits go to the unattributed row beside it, and attribution moves them.
_SCHEMA_5 = [
    """CREATE TABLE hits5 (
        hour     INTEGER NOT NULL CHECK (hour % 3600 = 0),
        address  TEXT NOT NULL,
        category INTEGER NOT NULL CHECK (category BETWEEN 0 AND 65535),
        line     TEXT NOT NULL DEFAULT '',  -- '': not attributed (yet)
        hits     INTEGER NOT NULL CHECK (hits > 0),
        first_us INTEGER NOT NULL,
        last_us  INTEGER NOT NULL CHECK (first_us <= last_us),
        PRIMARY KEY (hour, address, category, line)
    ) WITHOUT ROWID""",
    "INSERT INTO hits5 (hour, address, category, line, hits, first_us, last_us) "
    "SELECT hour, address, category, coalesce(line, ''), hits, first_us, last_us FROM hits",
    "DROP TABLE hits",
    "ALTER TABLE hits5 RENAME TO hits",
]

# Keys start with the hour: a month is one key range, and a collection, whose rows share an
# hour or two, writes into one region of the tree. No secondary index to keep up.
_SCHEMA = [
    # Raw rows: one per source address, category and hour. line is NULL until notify has
    # attributed the row to a subscriber line.
    """CREATE TABLE hits (
        hour     INTEGER NOT NULL CHECK (hour % 3600 = 0),  -- Unix second of the hour (UTC)
        address  TEXT NOT NULL,
        category INTEGER NOT NULL CHECK (category BETWEEN 0 AND 65535),  -- 0 = none
        hits     INTEGER NOT NULL CHECK (hits > 0),
        first_us INTEGER NOT NULL,      -- first and last hit, Unix microseconds (UTC)
        last_us  INTEGER NOT NULL CHECK (first_us <= last_us),
        line     TEXT,
        PRIMARY KEY (hour, address, category)
    ) WITHOUT ROWID""",
    """CREATE TABLE hit_feeds (
        hour     INTEGER NOT NULL,
        address  TEXT NOT NULL,
        category INTEGER NOT NULL,
        feed     TEXT NOT NULL,
        PRIMARY KEY (hour, address, category, feed)
    ) WITHOUT ROWID""",
    # Attributed rows folded by expire(): the same, less the address.
    """CREATE TABLE line_hits (
        hour     INTEGER NOT NULL,
        line     TEXT NOT NULL,
        category INTEGER NOT NULL,
        hits     INTEGER NOT NULL,
        first_us INTEGER NOT NULL,
        last_us  INTEGER NOT NULL,
        PRIMARY KEY (hour, line, category)
    ) WITHOUT ROWID""",
    """CREATE TABLE line_feeds (
        hour     INTEGER NOT NULL,
        line     TEXT NOT NULL,
        category INTEGER NOT NULL,
        feed     TEXT NOT NULL,
        PRIMARY KEY (hour, line, category, feed)
    ) WITHOUT ROWID""",
    # Category names as the collector last gave them (the catalog's names).
    """CREATE TABLE categories (
        id   INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 65535),
        name TEXT NOT NULL
    )""",
    # At most one notification per line and period (a calendar month, 'YYYY-MM', UTC).
    # state 'pending': claimed before delivery began; 'sent': delivery confirmed.
    """CREATE TABLE notifications (
        line       TEXT NOT NULL,
        period     TEXT NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('pending', 'sent')),
        channel    TEXT NOT NULL,       -- 'smtp' or 'outbox'
        recipient  TEXT NOT NULL,
        message_id TEXT NOT NULL,
        record     TEXT NOT NULL,       -- the notification record, JSON
        claimed_at TEXT NOT NULL,
        sent_at    TEXT,
        PRIMARY KEY (line, period)
    )""",
    """CREATE TABLE checkpoint (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL             -- an integer, as text: any width survives
    ) WITHOUT ROWID""",
    *_SCHEMA_2,
    *_SCHEMA_3,
    *_SCHEMA_4,
    *_SCHEMA_5,
]


class StoreError(CcxdpError):
    pass


@dataclass(frozen=True)
class StoredHit:
    address: str
    category: int
    hour: int
    hits: int
    first_us: int
    last_us: int
    line: str | None
    resolver: str | None = None  # the fleet's resolver that stored it; None in SQLite


@dataclass(frozen=True)
class Notification:
    line: str
    period: str
    state: str
    channel: str
    recipient: str
    message_id: str
    record: dict
    claimed_at: str
    sent_at: str | None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(t: datetime) -> int:
    """Unix microseconds of an aware datetime, exactly (integer timedelta arithmetic)."""
    try:
        return (t - _EPOCH) // _US
    except TypeError:  # naive, or not a datetime at all
        text = t.isoformat() if isinstance(t, datetime) else repr(t)
        raise StoreError(f"time without a time zone: {text}") from None


def from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


_NAIVE_EPOCH = datetime(1970, 1, 1)


def iso(us: int) -> str:
    """ISO 8601 in UTC with a Z; microseconds only when there are any (utc_text's "auto"
    form, made without time zone arithmetic: records call it twice an address)."""
    t = _NAIVE_EPOCH + timedelta(microseconds=us)
    return t.isoformat(timespec="microseconds" if t.microsecond else "seconds") + "Z"


def now_iso() -> str:
    return iso(to_us(datetime.now(UTC)))


def address_text(address: Address | str) -> str:
    """A source as stored: an address, IPv4-mapped IPv6 (the kernel's form) as IPv4; or an
    IPv6 prefix the kernel counted a source by (setting source_prefix_v6), as ipaddress
    prints it (``2001:db8:1:200::/56``; a /128 is its address)."""
    if isinstance(address, str) and "/" in address:
        try:
            net = ipaddress.IPv6Network(address)
        except ValueError:
            raise StoreError(f"not an IPv6 source prefix: {address!r}") from None
        if net.prefixlen < 128:
            return str(net)
        address = net.network_address
    addr = ipaddress.ip_address(address)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise StoreError(f"address with a zone index: {address}")
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
    return str(addr)


_IPV4, _IPV6 = ipaddress.IPv4Address, ipaddress.IPv6Address
_HOUR_US = HOUR * 1_000_000

# -- the kernel's counters, as staged ---------------------------------------------------------
# One entry of the kernel's per-source map (layout.SourceKey, layout.SourceHits; a test checks
# sizes and offsets): the address, IPv4-mapped for IPv4, in two parts, the category, the
# buffer, the prefix length (0 in counters staged before sources had one: an address); hits,
# first and last hit in CLOCK_MONOTONIC nanoseconds. Native byte order, as the kernel writes
# them.
COUNTER_KEY = struct.Struct("=12s4sHBB")
COUNTER_VALUE = struct.Struct("=QQQ")
COUNTER_BUFFER_AT = 18  # offset of the buffer byte in a key
COUNTER_CATEGORY_AT = 16  # offset of the category (u16) in a key
_MAPPED = bytes(10) + b"\xff\xff"


def packed_address_text(raw: bytes, prefix_len: int = 128) -> str:
    """A kernel source (16 bytes and its prefix length) as the store keeps it: IPv4-mapped
    as IPv4, IPv6 as ipaddress prints it, with /prefix_len unless it is a whole address."""
    if raw[:12] == _MAPPED:
        return inet_ntop(AF_INET, raw[12:])
    text = inet_ntop(AF_INET6, raw)
    if "." in text:  # libc writes ::a.b.c.d forms that ipaddress does not
        text = address_text(text)
    if 0 < prefix_len < 128:
        return f"{text}/{prefix_len}"
    return text


def hour_rows(address: str, category: int, hits: int, first_us: int, last_us: int) -> list:
    """Store rows (hour, address, category, hits, first_us, last_us) for one kernel counter
    of ``hits`` between ``first_us`` and ``last_us`` (Unix microseconds).

    A counter knows only when its first and last hit came. Within one hour: one row. Across
    hours: the first hit goes to the first's hour, at that time, and the others to the last's
    hour, at the last's time. So every row's hour, first and last are times a hit certainly
    came (the days with hits, which notification counts, are never made up); the hits whose
    times are unknown (somewhere between the two) go with the last."""
    first_hour = first_us // _HOUR_US
    last_hour = last_us // _HOUR_US
    if first_hour == last_hour:
        return [(first_hour * 3600, address, category, hits, first_us, last_us)]
    rows = [(first_hour * 3600, address, category, 1, first_us, first_us)]
    if hits > 1:
        rows.append((last_hour * 3600, address, category, hits - 1, last_us, last_us))
    return rows


def counter_rows(keys: bytes, counters: bytes, offset_ns: int, texts: dict | None = None
                 ) -> list[tuple[int, str, int, int, int, int]]:
    """Store rows (add_hit_counts' form) of staged kernel counters, by the hour rule
    (hour_rows). ``texts``: IPv6 address texts already made, kept across calls.

    The fold's hot loop (a million counters): one tuple per counter from struct, the hour
    split inlined for the usual case."""
    rows: list = []
    append = rows.append
    texts = {} if texts is None else texts
    for (head, v4, category, _buffer, plen), (hits, first_ns, last_ns) in zip(
        COUNTER_KEY.iter_unpack(keys), COUNTER_VALUE.iter_unpack(counters), strict=True
    ):
        if not hits:
            continue
        if head == _MAPPED:
            text = inet_ntop(AF_INET, v4)
        else:
            text = texts.get((head + v4, plen))
            if text is None:
                text = texts[head + v4, plen] = packed_address_text(head + v4, plen)
        first_us = (first_ns + offset_ns) // 1000
        # Two CPUs may stamp a new entry out of order by a few ns: last is at least first.
        last_us = ((last_ns if last_ns > first_ns else first_ns) + offset_ns) // 1000
        hour = first_us // _HOUR_US
        if hour == last_us // _HOUR_US:
            append((hour * 3600, text, category, hits, first_us, last_us))
        else:
            rows.extend(hour_rows(text, category, hits, first_us, last_us))
    return rows


def counter_hits(counters: bytes) -> int:
    """The hits of staged counters, summed without a tuple per counter."""
    return sum(array("Q", counters)[0::3])


def counter_categories(keys: bytes) -> set[int]:
    """The category ids of staged counters' keys."""
    step, at = COUNTER_KEY.size // 2, COUNTER_CATEGORY_AT // 2
    return set(array("H", keys)[at::step])


@dataclass(frozen=True)
class FoldResult:
    """One fold of staged counters into hits, in exact integers."""

    batches: int  # staged rows folded (one per batch a collector read)
    counters: int  # kernel counters in them
    rows: int  # hits rows written or added to: one per address, category and hour
    hits: int
    sources: int  # distinct addresses
    seconds: float


def period_bounds(period: str) -> tuple[int, int]:
    """A calendar month 'YYYY-MM' (UTC) as [start, end) in Unix seconds."""
    try:
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise StoreError(f"invalid period {period!r}: give a month as YYYY-MM") from None
    if f"{start.year:04d}-{start.month:02d}" != period:
        raise StoreError(f"invalid period {period!r}: give a month as YYYY-MM")
    end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return to_us(start) // 1_000_000, to_us(end) // 1_000_000


class Store:
    """The hits store. ``path`` may be ``":memory:"`` (an empty store, nothing on disk)."""

    def __init__(self, path: Path | str):
        self.path = path
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # The collector and a CLI call may write at once: wait for the other's transaction.
            self.db = sqlite.connect(path, isolation_level=None, timeout=60)
            self.db.execute("PRAGMA journal_mode=WAL")
            # A committed checkpoint survives a power loss, not only a kill.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB: a million rows at a time
            self._upgrade()
        except sqlite3.DatabaseError as e:
            raise StoreError(sqlite.failure(path, e)) from e

    def _upgrade(self) -> None:
        with self.transaction():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: records schema {version} is newer than this ccxdp "
                    f"(which knows up to {SCHEMA_VERSION})"
                )
            if version == 0:
                for statement in _SCHEMA:
                    self.db.execute(statement)
            elif version < SCHEMA_VERSION:
                steps = {2: _SCHEMA_2, 3: _SCHEMA_3, 4: _SCHEMA_4, 5: _SCHEMA_5}
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in steps[step]:
                        self.db.execute(statement)
            if version < SCHEMA_VERSION:
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> AbstractContextManager[None]:
        """All or nothing; nested use joins the outer transaction."""
        return sqlite.transaction(self.db)

    def rehearsal(self) -> AbstractContextManager[None]:
        """A transaction that is always rolled back: a dry run writes nothing."""
        return sqlite.rehearsal(self.db)

    # -- this store as a resolver's backlog for the fleet (fleet.py) ------------------------
    def instance(self) -> str:
        """This store's identity, made once with it: the fleet binds a resolver name to it."""
        return self.db.execute("SELECT value FROM meta WHERE key='instance'").fetchone()[0]

    def ships_to(self) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key='ships_to'").fetchone()
        return row[0] if row else None

    def spool_for(self, uri: str) -> None:
        """From now on this store's staged batches belong to the fleet store at ``uri``:
        folding them here (which would keep them from it) is refused."""
        if self.ships_to() != uri:
            with self.transaction():
                self.db.execute("INSERT INTO meta (key, value) VALUES ('ships_to', ?) "
                                "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (uri,))

    def staged_batches(self, after: int, max_counters: int) -> list[tuple]:
        """Staged batches with id > ``after``, in id order, up to about ``max_counters``
        counters (at least one batch): (id, epoch, offset_ns, keys, counters, feeds)."""
        out, total = [], 0
        for row in self.db.execute(
                "SELECT id, epoch, offset_ns, keys, counters, feeds FROM staged WHERE id > ? "
                "ORDER BY id", (after,)):
            out.append(row)
            total += len(row[3]) // COUNTER_KEY.size
            if total >= max_counters:
                break
        return out

    def drop_staged(self, upto: int) -> None:
        """Delete staged batches up to id ``upto``: the fleet holds them."""
        with self.transaction():
            self.db.execute("DELETE FROM staged WHERE id <= ?", (upto,))

    def backlog(self) -> tuple[int, int, int]:
        """(batches, counters, hits) staged and not yet folded or shipped."""
        batches = counters = hits = 0
        for keys, values in self.db.execute("SELECT keys, counters FROM staged"):
            batches += 1
            counters += len(keys) // COUNTER_KEY.size
            hits += counter_hits(values)
        return batches, counters, hits

    def stored_per_category(self, resolver: str | None = None) -> dict[str, int]:
        """Hits per category name, raw rows and rows folded by expire."""
        self._fold_first()
        rows = self.db.execute(
            "SELECT h.category, c.name, sum(h.hits) FROM "
            "(SELECT category, hits FROM hits UNION ALL SELECT category, hits FROM line_hits) h "
            "LEFT JOIN categories c ON c.id = h.category GROUP BY h.category")
        return {category_label(category, {category: name} if name else {}): int(n)
                for category, name, n in rows}

    # -- the collector's side ---------------------------------------------------------------
    def add_hit_counts(
        self,
        rows: Iterable[tuple[int, str, int, int, int, int]],
        checkpoint: Mapping[str, int | None] | None = None,
        categories: Mapping[int, str] | None = None,
    ) -> int:
        """Add rows in stored form, (hour, address, category, hits, first_us, last_us), with
        the hour in Unix seconds on the hour, the address as ``address_text`` gives it, times
        in Unix microseconds (UTC), hits > 0, and update the collector's checkpoint with
        ``checkpoint`` (keys set, or deleted where the value is None), in one transaction:
        both or neither are kept. A row for an (address, category, hour) already stored adds
        to it as the fold does: hits summed, first_seen the earlier, last_seen the later; hits
        added to an hour whose row was attributed wait beside it for attribution. The
        store's constraints refuse a malformed row (and then nothing is written); the address
        text is the caller's to get right."""
        cp = _checkpoint_rows(checkpoint) if checkpoint is not None else None
        return self._write(list(rows), dict(categories or {}), [], cp)

    def stage_counters(
        self,
        batches: Iterable[tuple[bytes, bytes]],
        offset_ns: int,
        checkpoint: Mapping[str, int | None] | None = None,
        categories: Mapping[int, str] | None = None,
        feeds: Mapping[int, Sequence[str]] | None = None,
        epoch: int | None = None,
    ) -> int:
        """The collector's fast path: stage kernel counters as read, ``(keys, counters)``
        byte strings of n COUNTER_KEY and n COUNTER_VALUE each, with the hit-clock offset of
        this collection, and update the checkpoint, in one transaction (both or neither).
        ``feeds``: the catalog's feeds per category id at this collection, which the fold
        records as the evidence of each row; ``epoch``: the collector's epoch these counters
        drained (the fleet's mark). Nothing is decoded or merged here: ``fold``
        does it, and every reader of hits folds first. Returns the number of counters
        staged."""
        cp = _checkpoint_rows(checkpoint) if checkpoint is not None else None
        evidence = json.dumps({str(c): sorted(f) for c, f in sorted((feeds or {}).items())
                               if f}) if feeds else None  # fmt: skip
        staged, total = [], 0
        for keys, counters in batches:
            n, rest = divmod(len(keys), COUNTER_KEY.size)
            if rest or len(counters) != n * COUNTER_VALUE.size:
                raise StoreError(
                    f"staged counters: {len(keys)} key bytes and {len(counters)} counter "
                    f"bytes are not n x {COUNTER_KEY.size} and n x {COUNTER_VALUE.size}"
                )
            if n:
                staged.append((offset_ns, keys, counters, evidence, epoch))
                total += n
        with self.transaction():
            self.db.executemany(
                "INSERT INTO staged (offset_ns, keys, counters, feeds, epoch) "
                "VALUES (?, ?, ?, ?, ?)",
                staged,
            )
            self._upsert([], dict(categories or {}), [], cp)
        return total

    def staged(self) -> int:
        """Counters staged and not yet folded."""
        size = COUNTER_KEY.size
        return self.db.execute(
            f"SELECT coalesce(sum(length(keys)), 0) / {size} FROM staged"
        ).fetchone()[0]

    def fold(self) -> FoldResult:
        """Move every staged counter into hits, merged as add_hit_counts merges rows, in one
        transaction.

        Exactly once: the rows added to hits and the DELETE of the staged rows they came
        from commit together (SQLite commits both or neither), so a kill at any point leaves
        either everything staged and nothing of it in hits (a later fold adds it, once), or
        all of it in hits and nothing staged (nothing to add again). BEGIN IMMEDIATE takes
        the write lock before the staged rows are read, and the DELETE names the rows read
        (id up to the last one read), so a row staged by a later collection is never deleted
        without being folded."""
        self._not_a_spool()
        started = time.monotonic()
        batches = counters = rows = hits = 0
        addresses: set[str] = set()
        texts: dict[bytes, str] = {}
        try:
            with self.transaction():
                last = None
                for id_, offset_ns, keys, values, evidence in self.db.execute(
                    "SELECT id, offset_ns, keys, counters, feeds FROM staged ORDER BY id"
                ).fetchall():
                    batch = counter_rows(keys, values, offset_ns, texts)
                    self._upsert(batch, {}, _feed_rows(batch, evidence), None)
                    addresses.update([r[1] for r in batch])
                    batches += 1
                    counters += len(keys) // COUNTER_KEY.size
                    rows += len(batch)
                    hits += counter_hits(values)
                    last = id_
                if last is not None:
                    self.db.execute("DELETE FROM staged WHERE id <= ?", (last,))
        except sqlite3.IntegrityError as e:
            raise StoreError(f"a staged counter breaks the store's rules: {e}") from e
        return FoldResult(batches, counters, rows, hits, len(addresses),
                          time.monotonic() - started)

    def _fold_first(self) -> None:
        """What every reader of hits does first: fold what a collection staged (a check of
        an empty table when there is nothing, and no write lock)."""
        if self.db.execute("SELECT 1 FROM staged LIMIT 1").fetchone():
            self.fold()

    def _not_a_spool(self) -> None:
        fleet = self.ships_to()
        if fleet is not None:
            raise StoreError(
                f"{self.path} is this resolver's backlog for the fleet store {fleet}: its "
                f"hits are read there (--store {fleet})")

    def _write(self, upserts: list, names: Mapping[int, str], feeds: list, cp) -> int:
        # Measured here: sorting a million rows into key order first costs more (about
        # 1.5 s) than the random order costs the tree (about 0.5 s).
        try:
            with self.transaction():
                self._upsert(upserts, names, feeds, cp)
        except sqlite3.IntegrityError as e:
            raise StoreError(f"a hit row breaks the store's rules: {e}") from e
        return len(upserts)

    def _upsert(self, upserts: list, names: Mapping[int, str], feeds: list, cp) -> None:
        self.db.executemany(
            "INSERT INTO categories (id, name) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET name=excluded.name",
            names.items(),
        )
        self.db.executemany(
            "INSERT INTO hits (hour, address, category, hits, first_us, last_us) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(hour, address, category, line) DO UPDATE SET "
            "hits = hits + excluded.hits, "
            "first_us = min(first_us, excluded.first_us), "
            "last_us = max(last_us, excluded.last_us)",
            upserts,
        )
        self.db.executemany(
            "INSERT OR IGNORE INTO hit_feeds (hour, address, category, feed) "
            "VALUES (?, ?, ?, ?)",
            feeds,
        )
        if cp is not None:
            sets, deletes = cp
            self.db.executemany(
                "INSERT INTO checkpoint (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                sets,
            )
            self.db.executemany("DELETE FROM checkpoint WHERE key=?", deletes)

    def checkpoint(self) -> dict[str, int]:
        """The checkpoint as add_hits left it ({} before the first)."""
        return {k: int(v) for k, v in self.db.execute("SELECT key, value FROM checkpoint")}

    # -- reading ----------------------------------------------------------------------------
    def categories(self) -> dict[int, str]:
        return dict(self.db.execute("SELECT id, name FROM categories ORDER BY id"))

    def hits(self, start: int | None = None, end: int | None = None) -> list[StoredHit]:
        """Raw rows whose hour lies in [start, end) (Unix seconds), by address and hour. An
        address, category and hour may have two rows: the hits attributed to a line, and
        those that came after attribution (line None)."""
        self._fold_first()
        lo = start if start is not None else -(1 << 62)
        hi = end if end is not None else 1 << 62
        rows = self.db.execute(
            "SELECT address, category, hour, hits, first_us, last_us, nullif(line, '') "
            "FROM hits WHERE hour >= ? AND hour < ? ORDER BY address, hour, category, line",
            (lo, hi),
        )
        return [StoredHit(*r) for r in rows]

    def periods(self) -> list[str]:
        """Every month (YYYY-MM, UTC) with hits or notifications in the store."""
        self._fold_first()
        days = self.db.execute(
            "SELECT DISTINCT hour / 86400 FROM (SELECT hour FROM hits UNION "
            "SELECT hour FROM line_hits)"
        )
        months = {from_us(d * 86400 * 1_000_000).strftime("%Y-%m") for (d,) in days}
        months |= {p for (p,) in self.db.execute("SELECT DISTINCT period FROM notifications")}
        return sorted(months)

    def total_hits(self) -> int:
        """Every hit the store holds, raw and folded: what the collector has added."""
        self._fold_first()
        # One statement, one snapshot: an expire between two reads would move rows from hits
        # to line_hits and count them twice.
        return self.db.execute(
            "SELECT (SELECT coalesce(sum(hits), 0) FROM hits) + "
            "(SELECT coalesce(sum(hits), 0) FROM line_hits)").fetchone()[0]

    def unattributed_hits(self, start: int, end: int) -> list[tuple]:
        """Hits in [start, end) no line was given yet, summed per address and category:
        (address, category, hits, first_us, last_us)."""
        self._fold_first()
        return self.db.execute(
            "SELECT address, category, sum(hits), min(first_us), max(last_us) FROM hits "
            "WHERE line = '' AND hour >= ? AND hour < ? GROUP BY address, category",
            (start, end)).fetchall()

    def line_hits(self, start: int, end: int, line: str | None = None) -> list[tuple]:
        """Attributed hits in [start, end), raw and folded alike: (line, category, hour, hits,
        first_us, last_us, address or None)."""
        self._fold_first()
        where = "hour >= ? AND hour < ?" + (" AND line = ?" if line is not None else "")
        args = (start, end) + ((line,) if line is not None else ())
        return list(
            self.db.execute(
                f"SELECT line, category, hour, hits, first_us, last_us, address FROM hits "
                f"WHERE line <> '' AND {where} "
                f"UNION ALL SELECT line, category, hour, hits, first_us, last_us, NULL "
                f"FROM line_hits WHERE {where}",
                args + args,
            )
        )

    def line_feeds(self, start: int, end: int, line: str | None = None) -> list[tuple]:
        """(line, feed) pairs of attributed hits in [start, end), raw and folded."""
        self._fold_first()
        where = "h.hour >= ? AND h.hour < ?" + (" AND h.line = ?" if line is not None else "")
        args = (start, end) + ((line,) if line is not None else ())
        return list(
            self.db.execute(
                f"SELECT DISTINCT h.line, f.feed FROM hits h JOIN hit_feeds f "
                f"USING (address, category, hour) WHERE h.line <> '' AND {where} "
                f"UNION SELECT line, feed FROM line_feeds h WHERE {where}",
                args + args,
            )
        )

    def feeds_of(self, address: str, category: int, hour: int) -> list[str]:
        self._fold_first()
        rows = self.db.execute(
            "SELECT feed FROM hit_feeds WHERE address=? AND category=? AND hour=? ORDER BY feed",
            (address, category, hour),
        )
        return [r[0] for r in rows]

    # -- attribution ------------------------------------------------------------------------
    def attribute(self, assignments: Iterable[tuple]) -> int:
        """Give unattributed raw rows their line: (address, category, hour, hits, line[,
        resolver]). A row whose hits changed since it was read (the collector added to it) is
        left for the next run. A row joins the hits already attributed to that line in its
        hour, if any. Returns the number of rows attributed."""
        done = 0
        with self.transaction():
            for address, category, hour, hits, line, *_resolver in assignments:
                key = (hour, address, category, hits)
                moved = self.db.execute(
                    "DELETE FROM hits WHERE hour=? AND address=? AND category=? AND hits=? "
                    "AND line='' RETURNING first_us, last_us", key).fetchall()
                for first_us, last_us in moved:
                    self.db.execute(
                        "INSERT INTO hits (hour, address, category, line, hits, first_us, "
                        "last_us) VALUES (?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(hour, address, category, line) DO UPDATE SET "
                        "hits = hits + excluded.hits, "
                        "first_us = min(first_us, excluded.first_us), "
                        "last_us = max(last_us, excluded.last_us)",
                        (hour, address, category, line, hits, first_us, last_us))
                    done += 1
        return done

    # -- notifications ----------------------------------------------------------------------
    def notification(self, line: str, period: str) -> Notification | None:
        row = self.db.execute(
            f"SELECT {_NOTIFICATION} FROM notifications WHERE line=? AND period=?",
            (line, period),
        ).fetchone()
        return _notification(row) if row else None

    def notifications(
        self, period: str | None = None, line: str | None = None
    ) -> list[Notification]:
        where, args = [], []
        if period is not None:
            where.append("period = ?")
            args.append(period)
        if line is not None:
            where.append("line = ?")
            args.append(line)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(
            f"SELECT {_NOTIFICATION} FROM notifications {clause} ORDER BY period, line", args
        )
        return [_notification(r) for r in rows]

    def claim(
        self, line: str, period: str, channel: str, recipient: str, message_id: str,
        record: dict,
    ) -> bool:
        """Record, before any delivery starts, that this line gets its message for the period.
        False when the line already has one (pending or sent): the caller must not send."""
        with self.transaction():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO notifications (line, period, state, channel, recipient, "
                "message_id, record, claimed_at) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)",
                (line, period, channel, recipient, message_id,
                 json.dumps(record, sort_keys=True), now_iso()),
            )
        return cur.rowcount == 1

    def mark_sent(self, line: str, period: str, message_id: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE notifications SET state='sent', sent_at=? "
                "WHERE line=? AND period=? AND message_id=?",
                (now_iso(), line, period, message_id),
            )

    def release(self, line: str, period: str, message_id: str) -> None:
        """Drop a pending claim whose message certainly never left (refused, or never sent)."""
        with self.transaction():
            self.db.execute(
                "DELETE FROM notifications WHERE line=? AND period=? AND message_id=? "
                "AND state='pending'",
                (line, period, message_id),
            )

    # -- opt-outs ----------------------------------------------------------------------------
    def opted_out(self) -> dict[str, str]:
        """Lines whose subscribers opted out: {line: since}."""
        return dict(self.db.execute("SELECT line, since FROM opt_outs ORDER BY line"))

    def opt_out(self, lines: Iterable[str]) -> list[str]:
        """Record opt-outs; returns the lines that were not opted out before."""
        added = []
        with self.transaction():
            for line in lines:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO opt_outs (line, since) VALUES (?, ?)",
                    (line, now_iso()))
                if cur.rowcount:
                    added.append(line)
        return added

    def opt_in(self, lines: Iterable[str]) -> list[str]:
        """Drop opt-outs; returns the lines that were opted out."""
        removed = []
        with self.transaction():
            for line in lines:
                if self.db.execute("DELETE FROM opt_outs WHERE line=?", (line,)).rowcount:
                    removed.append(line)
        return removed

    # -- retention --------------------------------------------------------------------------
    def expire(self, older_than: datetime, attributed_only: bool = True) -> int:
        """Delete raw rows whose hour ended before ``older_than``. Attributed rows are folded
        into the per-line aggregates first (line, category, hour: no address), so records,
        reports and the once-a-month rule keep working. With ``attributed_only=False``,
        unattributed rows that old go too (they had no line to fold into). Returns the number
        of raw rows deleted."""
        cutoff = to_us(older_than) // 1_000_000 - HOUR  # the hour must have ended
        with self.transaction():
            self._fold_first()  # staged hits are raw rows too: they may be old enough
            self.db.execute(
                "INSERT INTO line_hits (line, category, hour, hits, first_us, last_us) "
                "SELECT line, category, hour, sum(hits), min(first_us), max(last_us) FROM hits "
                "WHERE line <> '' AND hour < ? GROUP BY line, category, hour "
                "ON CONFLICT(hour, line, category) DO UPDATE SET "
                "hits = hits + excluded.hits, first_us = min(first_us, excluded.first_us), "
                "last_us = max(last_us, excluded.last_us)",
                (cutoff + 1,),
            )
            self.db.execute(
                "INSERT OR IGNORE INTO line_feeds (line, category, hour, feed) "
                "SELECT h.line, h.category, h.hour, f.feed FROM hits h JOIN hit_feeds f "
                "USING (address, category, hour) WHERE h.line <> '' AND h.hour < ?",
                (cutoff + 1,),
            )
            which = "hour < ?" + (" AND line <> ''" if attributed_only else "")
            cur = self.db.execute(f"DELETE FROM hits WHERE {which}", (cutoff + 1,))
            # The evidence goes with the last row of its address, category and hour: hits
            # that came after attribution may still be waiting for theirs.
            self.db.execute(
                "DELETE FROM hit_feeds WHERE hour < ? AND NOT EXISTS (SELECT 1 FROM hits h "
                "WHERE h.hour = hit_feeds.hour AND h.address = hit_feeds.address AND "
                "h.category = hit_feeds.category)", (cutoff + 1,))
        return cur.rowcount


_NOTIFICATION = (
    "line, period, state, channel, recipient, message_id, record, claimed_at, sent_at"
)


def _feed_rows(batch: list, evidence: str | None) -> list[tuple[int, str, int, str]]:
    """hit_feeds rows for folded rows (hour, address, category, ...): each row's category's
    feeds, as the collection that staged it found them in the catalog."""
    if not evidence:
        return []
    by_category = {int(c): f for c, f in json.loads(evidence).items()}
    return [(r[0], r[1], r[2], feed) for r in batch for feed in by_category.get(r[2], ())]


def _notification(row: tuple) -> Notification:
    values = list(row)
    values[6] = json.loads(values[6])
    return Notification(*values)


def _checkpoint_rows(
    checkpoint: Mapping[str, int | None],
) -> tuple[list[tuple[str, str]], list[tuple[str]]]:
    """(keys to set, keys to delete), checked."""
    sets, deletes = [], []
    for key, value in checkpoint.items():
        if not isinstance(key, str) or not key:
            raise StoreError(f"checkpoint keys must be non-empty strings: {key!r}")
        if value is None:
            deletes.append((key,))
        elif not isinstance(value, int) or isinstance(value, bool):
            raise StoreError(f"checkpoint values must be integers or None: {key}={value!r}")
        else:
            sets.append((key, str(value)))
    return sets, deletes


def store_path(state_dir: Path) -> Path:
    path = Path(state_dir) / HITS_DB
    old = Path(state_dir) / _OLD_HITS_DB
    if not path.exists() and old.exists():
        # Renamed with its WAL and shared-memory files, so committed rows still in the WAL
        # come along; a store is only renamed while nothing has it open (an upgrade).
        for suffix in ("-wal", "-shm", ""):
            if Path(f"{old}{suffix}").exists():
                os.replace(f"{old}{suffix}", f"{path}{suffix}")
    return path


def open_store(path: Path) -> Store:
    """The store at ``path`` for commands that only read it or add to what is there: when
    nothing was ever collected, an empty in-memory store (no file or folder is made)."""
    return Store(path) if Path(path).exists() else Store(":memory:")
