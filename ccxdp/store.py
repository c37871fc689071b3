"""The hits store: blocked queries per source address, category and hour, in its own SQLite
file (``records.db`` in the state folder), and what attribution and notification need.

Rows come from the collector, which reads the kernel's per-source counters and calls
``Store.add_hits(rows, checkpoint)``: the hits and the collector's checkpoint ("counters
already taken") are written in one transaction, so after a kill -9 at any point the store
holds either both or neither, and the collector resumes from a checkpoint that matches the
hits. The checkpoint is opaque to the store: names to integers of any width. A call updates
the keys it gives and deletes those given as None; the others stay, so a collector that keeps
"already taken" per source writes only the sources that moved.

Times are UTC, kept as integer microseconds since the Unix epoch; an hour is the Unix second
of its start. Addresses are kept as ``ipaddress`` prints them (IPv4 as IPv4, never mapped).

Privacy: a raw row names an address. Once ``notify`` has attributed it to a subscriber line,
``expire`` folds it into per-line aggregates (line, category, hour: no address) and deletes
it when it is older than the retention. Unattributed rows stay until a retention of their own.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from .errors import CcxdpError

RECORDS_DB = "records.db"  # in the state folder, beside the catalog
SCHEMA_VERSION = 1
HOUR = 3600
CATEGORY_MAX = 65535  # the kernel keeps a category as a __u16; 0 means none

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

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
]


class StoreError(CcxdpError):
    pass


class HitRow(NamedTuple):
    """What the collector gives add_hits for one source address, category and hour."""

    address: Address
    category_id: int
    category_name: str | None
    hour_start: datetime  # UTC, on the hour
    hits: int
    first_seen: datetime  # UTC
    last_seen: datetime
    feeds: Sequence[str] = ()


@dataclass(frozen=True)
class StoredHit:
    address: str
    category: int
    hour: int
    hits: int
    first_us: int
    last_us: int
    line: str | None


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


def iso(us: int) -> str:
    """ISO 8601 in UTC with a Z; microseconds only when there are any."""
    t = from_us(us)
    spec = "microseconds" if t.microsecond else "seconds"
    return t.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def now_iso() -> str:
    return iso(to_us(datetime.now(UTC)))


def address_text(address: Address | str) -> str:
    """An address as stored: IPv4-mapped IPv6 (the kernel's form) becomes IPv4."""
    addr = ipaddress.ip_address(address)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise StoreError(f"address with a zone index: {address}")
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
    return str(addr)


_IPV4, _IPV6 = ipaddress.IPv4Address, ipaddress.IPv6Address
_HOUR_US = HOUR * 1_000_000


def _row(raw) -> tuple[str, int, str | None, int, int, int, int, Sequence[str]]:
    """Check one add_hits row; returns (address, category, name, hour, hits, first, last,
    feeds) in stored form. Kept lean: the collector hands over a million rows at a time."""
    n = len(raw)
    if n == 8:
        address, category, name, hour_start, hits, first, last, feeds = raw
        feeds = feeds or ()
    elif n == 7:
        address, category, name, hour_start, hits, first, last = raw
        feeds = ()
    else:
        raise StoreError(f"a hit row has 7 or 8 fields, not {n}: {raw!r}")
    cls = type(address)
    if cls is _IPV4:
        text = str(address)
    elif cls is _IPV6 or isinstance(address, _IPV4 | _IPV6):
        text = address_text(address)
    else:
        raise StoreError(f"not an IPv4Address or IPv6Address: {address!r}")
    if type(category) is not int or not 0 <= category <= CATEGORY_MAX:
        raise StoreError(f"category id out of range 0-{CATEGORY_MAX}: {category!r}")
    if name is not None and (type(name) is not str or not name):
        raise StoreError(f"category name must be a non-empty string or None: {name!r}")
    if type(hits) is not int or hits < 0:
        raise StoreError(f"hits must be a non-negative integer: {hits!r}")
    hour_us = to_us(hour_start)
    if hour_us % _HOUR_US:
        raise StoreError(f"hour_start is not on the hour: {hour_start.isoformat()}")
    first_us, last_us = to_us(first), to_us(last)
    if first_us > last_us:
        raise StoreError(
            f"first_seen after last_seen: {first.isoformat()} > {last.isoformat()}"
        )
    for feed in feeds:
        if type(feed) is not str or not feed:
            raise StoreError(f"feed names must be non-empty strings: {feed!r}")
    return text, category, name, hour_us // 1_000_000, hits, first_us, last_us, feeds


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
            self.db = sqlite3.connect(str(path), isolation_level=None, timeout=60)
            self.db.execute("PRAGMA journal_mode=WAL")
            # A committed checkpoint survives a power loss, not only a kill.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB: a million rows at a time
            self._upgrade()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: {e}") from e

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
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing; nested use joins the outer transaction."""
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

    # -- the collector's side ---------------------------------------------------------------
    def add_hits(
        self, rows: Iterable[Sequence], checkpoint: Mapping[str, int | None] | None = None
    ) -> int:
        """Add hit rows (see HitRow) to the store and update the collector's checkpoint with
        ``checkpoint`` (keys set, or deleted where the value is None), in one transaction:
        both or neither are kept.

        A row for an (address, category, hour) already stored adds to it: hits are summed,
        first_seen is the earlier, last_seen the later; feeds are added to its feed set. A row
        that changes an attributed row sends it back to attribution (its hits may have come
        after the address moved to another line). Invalid rows raise StoreError and nothing
        is written. Returns the number of rows taken (rows of 0 hits are skipped)."""
        cp = _checkpoint_rows(checkpoint) if checkpoint is not None else None
        names: dict[int, str] = {}
        feeds: list[tuple[str, int, int, str]] = []
        upserts: list[tuple[str, int, int, int, int, int]] = []
        for r in rows:  # every row is checked before anything is written
            address, category, name, hour, hits, first_us, last_us, row_feeds = _row(r)
            if name is not None and category:
                names[category] = name
            if hits:
                upserts.append((hour, address, category, hits, first_us, last_us))
                feeds.extend((hour, address, category, f) for f in row_feeds)
        return self._write(upserts, names, feeds, cp)

    def add_hit_counts(
        self,
        rows: Iterable[tuple[int, str, int, int, int, int]],
        checkpoint: Mapping[str, int | None] | None = None,
        categories: Mapping[int, str] | None = None,
    ) -> int:
        """add_hits for a collector in a hurry: rows already in stored form, (hour, address,
        category, hits, first_us, last_us), with the hour in Unix seconds on the hour, the
        address as ``address_text`` gives it, times in Unix microseconds (UTC), hits > 0.
        The store's constraints still refuse a malformed row (and then nothing is written);
        the address text is the caller's to get right. Same merging, same transaction."""
        cp = _checkpoint_rows(checkpoint) if checkpoint is not None else None
        return self._write(list(rows), dict(categories or {}), [], cp)

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
            "ON CONFLICT(hour, address, category) DO UPDATE SET "
            "hits = hits + excluded.hits, "
            "first_us = min(first_us, excluded.first_us), "
            "last_us = max(last_us, excluded.last_us), "
            "line = NULL",
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
        """Raw rows whose hour lies in [start, end) (Unix seconds), by address and hour."""
        lo = start if start is not None else -(1 << 62)
        hi = end if end is not None else 1 << 62
        rows = self.db.execute(
            "SELECT address, category, hour, hits, first_us, last_us, line FROM hits "
            "WHERE hour >= ? AND hour < ? ORDER BY address, hour, category",
            (lo, hi),
        )
        return [StoredHit(*r) for r in rows]

    def periods(self) -> list[str]:
        """Every month (YYYY-MM, UTC) with hits or notifications in the store."""
        days = self.db.execute(
            "SELECT DISTINCT hour / 86400 FROM (SELECT hour FROM hits UNION "
            "SELECT hour FROM line_hits)"
        )
        months = {from_us(d * 86400 * 1_000_000).strftime("%Y-%m") for (d,) in days}
        months |= {p for (p,) in self.db.execute("SELECT DISTINCT period FROM notifications")}
        return sorted(months)

    def total_hits(self) -> int:
        """Every hit the store holds, raw and folded: what the collector has added."""
        raw = self.db.execute("SELECT coalesce(sum(hits), 0) FROM hits").fetchone()[0]
        folded = self.db.execute("SELECT coalesce(sum(hits), 0) FROM line_hits").fetchone()[0]
        return raw + folded

    def line_hits(self, start: int, end: int, line: str | None = None) -> list[tuple]:
        """Attributed hits in [start, end), raw and folded alike: (line, category, hour, hits,
        first_us, last_us, address or None)."""
        where = "hour >= ? AND hour < ?" + (" AND line = ?" if line is not None else "")
        args = (start, end) + ((line,) if line is not None else ())
        return list(
            self.db.execute(
                f"SELECT line, category, hour, hits, first_us, last_us, address FROM hits "
                f"WHERE line IS NOT NULL AND {where} "
                f"UNION ALL SELECT line, category, hour, hits, first_us, last_us, NULL "
                f"FROM line_hits WHERE {where}",
                args + args,
            )
        )

    def line_feeds(self, start: int, end: int, line: str | None = None) -> list[tuple]:
        """(line, feed) pairs of attributed hits in [start, end), raw and folded."""
        where = "h.hour >= ? AND h.hour < ?" + (" AND h.line = ?" if line is not None else "")
        args = (start, end) + ((line,) if line is not None else ())
        return list(
            self.db.execute(
                f"SELECT DISTINCT h.line, f.feed FROM hits h JOIN hit_feeds f "
                f"USING (address, category, hour) WHERE h.line IS NOT NULL AND {where} "
                f"UNION SELECT line, feed FROM line_feeds h WHERE {where}",
                args + args,
            )
        )

    def feeds_of(self, address: str, category: int, hour: int) -> list[str]:
        rows = self.db.execute(
            "SELECT feed FROM hit_feeds WHERE address=? AND category=? AND hour=? ORDER BY feed",
            (address, category, hour),
        )
        return [r[0] for r in rows]

    # -- attribution ------------------------------------------------------------------------
    def attribute(self, assignments: Iterable[tuple[str, int, int, int, str]]) -> int:
        """Give raw rows their line: (address, category, hour, hits, line). A row whose hits
        changed since it was read (the collector added to it) is left for the next run.
        Returns the number of rows attributed."""
        done = 0
        with self.transaction():
            for address, category, hour, hits, line in assignments:
                cur = self.db.execute(
                    "UPDATE hits SET line=? WHERE address=? AND category=? AND hour=? "
                    "AND hits=? AND line IS NULL",
                    (line, address, category, hour, hits),
                )
                done += cur.rowcount
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

    def reclaim(self, line: str, period: str, message_id: str, record: dict) -> None:
        """A pending claim taken over by a new attempt (--resend-unconfirmed)."""
        with self.transaction():
            self.db.execute(
                "UPDATE notifications SET message_id=?, record=?, claimed_at=? "
                "WHERE line=? AND period=? AND state='pending'",
                (message_id, json.dumps(record, sort_keys=True), now_iso(), line, period),
            )

    # -- retention --------------------------------------------------------------------------
    def expire(self, older_than: datetime, attributed_only: bool = True) -> int:
        """Delete raw rows whose hour ended before ``older_than``. Attributed rows are folded
        into the per-line aggregates first (line, category, hour: no address), so records,
        reports and the once-a-month rule keep working. With ``attributed_only=False``,
        unattributed rows that old go too (they had no line to fold into). Returns the number
        of raw rows deleted."""
        cutoff = to_us(older_than) // 1_000_000 - HOUR  # the hour must have ended
        with self.transaction():
            self.db.execute(
                "INSERT INTO line_hits (line, category, hour, hits, first_us, last_us) "
                "SELECT line, category, hour, sum(hits), min(first_us), max(last_us) FROM hits "
                "WHERE line IS NOT NULL AND hour < ? GROUP BY line, category, hour "
                "ON CONFLICT(hour, line, category) DO UPDATE SET "
                "hits = hits + excluded.hits, first_us = min(first_us, excluded.first_us), "
                "last_us = max(last_us, excluded.last_us)",
                (cutoff + 1,),
            )
            self.db.execute(
                "INSERT OR IGNORE INTO line_feeds (line, category, hour, feed) "
                "SELECT h.line, h.category, h.hour, f.feed FROM hits h JOIN hit_feeds f "
                "USING (address, category, hour) WHERE h.line IS NOT NULL AND h.hour < ?",
                (cutoff + 1,),
            )
            which = "hour < ?" + (" AND line IS NOT NULL" if attributed_only else "")
            self.db.execute(
                f"DELETE FROM hit_feeds WHERE (hour, address, category) IN "
                f"(SELECT hour, address, category FROM hits WHERE {which})",
                (cutoff + 1,),
            )
            cur = self.db.execute(f"DELETE FROM hits WHERE {which}", (cutoff + 1,))
        return cur.rowcount


_NOTIFICATION = (
    "line, period, state, channel, recipient, message_id, record, claimed_at, sent_at"
)


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
    return Path(state_dir) / RECORDS_DB


def open_store(path: Path) -> Store:
    """The store at ``path`` for commands that only read it or add to what is there: when
    nothing was ever collected, an empty in-memory store (no file or folder is made)."""
    return Store(path) if Path(path).exists() else Store(":memory:")
