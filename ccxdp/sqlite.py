"""SQLite files and transactions as the catalog and the hits store both use them.

Both files are their owner's alone (``connect`` makes them 0600, whatever the umask and the
folder's mode): the hits store holds subscribers' addresses, the catalog what is blocked.

Both open their database in autocommit mode (isolation_level=None) and take transactions
explicitly: BEGIN IMMEDIATE takes the write lock at the start, so two writers queue instead
of one failing halfway.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOW_SPACE = 1 << 20  # bytes free under which a write failure is put down to a full disk

PRIVATE = 0o600
# The files SQLite keeps beside a database; it creates them with the database file's mode.
COMPANIONS = ("-wal", "-shm", "-journal")


def connect(path: Path | str, **options) -> sqlite3.Connection:
    """sqlite3.connect, the file made 0600 first when it is new (so its -wal and -shm are
    too: SQLite gives them the database's mode), and narrowed to 0600 with them when an
    older ccxdp made them 0644. ``":memory:"`` is passed through."""
    if str(path) != ":memory:":
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             PRIVATE))
        except FileExistsError:
            _narrow(str(path))
        except OSError:
            pass  # a folder that cannot be written: sqlite3 says so in its own words below
        for suffix in COMPANIONS:
            _narrow(f"{path}{suffix}")
    return sqlite3.connect(str(path), **options)


def _narrow(path: str) -> None:
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, PRIVATE)
    except OSError:
        pass  # absent, or on a read-only file system: nothing to narrow, or no way to


@contextmanager
def transaction(db: sqlite3.Connection,
                ended: Callable[[], None] | None = None) -> Iterator[None]:
    """All or nothing: an exception inside rolls everything back. Nested use joins the outer
    transaction. `ended` runs once the outermost one has committed or rolled back."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        if ended is not None:
            ended()
        raise
    db.execute("COMMIT")
    if ended is not None:
        ended()


@contextmanager
def rehearsal(db: sqlite3.Connection) -> Iterator[None]:
    """A transaction that is always rolled back: what a dry run writes, nobody keeps."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")


def storage_problem(path: Path | str) -> str | None:
    """What the file system holding ``path`` (a file or folder) says about a failed write:
    read-only, full, or a folder this process cannot write; None when none of these. SQLite
    itself reports a full disk as "disk I/O error" when it cannot grow its WAL index."""
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "the file system is read-only"
    if st.f_bavail * st.f_frsize < LOW_SPACE:
        return f"the disk is full ({st.f_bavail * st.f_frsize:,} bytes free)"
    if not os.access(folder, os.W_OK):
        return f"{folder} is not writable"
    return None


def failure(path: Path | str, e: sqlite3.Error | OSError) -> str:
    """One line for a database or file that could not be opened, read or written."""
    words = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    problem = storage_problem(path)
    return f"{path}: {words}" + (f": {problem}" if problem else "")
