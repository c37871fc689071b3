"""SQLite transactions as the catalog and the hits store both use them.

Both open their database in autocommit mode (isolation_level=None) and take transactions
explicitly: BEGIN IMMEDIATE takes the write lock at the start, so two writers queue instead
of one failing halfway.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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
