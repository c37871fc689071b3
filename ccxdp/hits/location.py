"""Where the hits are: the one rule that turns ``--store`` (``CCXDP_STORE``, the daemon's
``collect.store``) into a store, for every command that takes one.

Nothing given: the SQLite store ``hits.db`` in the state folder, as for one resolver. A path:
that SQLite file. A ``postgresql://`` URI: the fleet store (fleet.py); the local ``hits.db``
then is this resolver's backlog, which ``collect`` ships from.
"""

from __future__ import annotations

import re
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ccxdp.datapath.loader import Datapath
from ccxdp.hits.collector import CollectResult, collect_staged, collect_then_fold
from ccxdp.hits.fleet import FleetStore, ShipResult, check_uri, is_fleet
from ccxdp.hits.store import Store, StoreError, open_store, store_path

_RESOLVER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})")


def check_resolver(name: str) -> str:
    """A resolver's name in the fleet: letters, digits, '.', '_', '-', up to 63."""
    if not _RESOLVER.fullmatch(name or ""):
        raise StoreError(
            f"resolver name {name!r}: give 1 to 63 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit")
    return name


def default_resolver() -> str:
    """The host name, as far as it makes a resolver name."""
    name = socket.gethostname().split(".")[0]
    return name if _RESOLVER.fullmatch(name) else "resolver"


@dataclass(frozen=True)
class StoreLocation:
    spec: str | None  # as given: None, a path, or a PostgreSQL URI
    state_dir: Path

    def __post_init__(self):
        if self.fleet:
            check_uri(self.spec)

    @property
    def fleet(self) -> bool:
        return is_fleet(self.spec)

    @property
    def local_file(self) -> Path:
        """The SQLite file: the store itself, or the resolver's backlog for the fleet."""
        if self.spec and not self.fleet:
            return Path(self.spec)
        return store_path(self.state_dir)

    def describe(self) -> str:
        return str(self.spec) if self.fleet else str(self.local_file)

    def open(self) -> Store | FleetStore:
        """The store, to read and write (notify, expire, opt-outs)."""
        return FleetStore(self.spec) if self.fleet else Store(self.local_file)

    def open_reader(self) -> Store | FleetStore:
        """The store to read: for SQLite, nothing is made when nothing was ever collected."""
        return FleetStore(self.spec) if self.fleet else open_store(self.local_file)


class ShipFailed(StoreError):
    """Shipping the backlog to the fleet failed; the hits wait in it, nothing is lost."""

    def __init__(self, message: str, backlog: tuple[int, int, int]):
        super().__init__(message)
        self.backlog = backlog  # batches, counters, hits


def collect(dp: Datapath, where: StoreLocation) -> CollectResult:
    """One collection, as `ccxdp collect` and the daemon run it: for one resolver, collected
    and folded; for the fleet, collected into this host's backlog (ship() sends it)."""
    if not where.fleet:
        return collect_then_fold(dp, where.local_file)
    # Marked before staging: a local reader must never fold what belongs to the fleet.
    return collect_staged(dp, where.local_file, spool_for=where.spec)


def ship(where: StoreLocation, resolver: str) -> ShipResult:
    """This host's whole backlog into the fleet store under ``resolver``. When that fails
    the hits stay in the backlog (ShipFailed says how much) for the next ship."""
    try:
        with FleetStore(where.spec) as fleet, Store(where.local_file) as local:
            return fleet.ship(local, check_resolver(resolver))
    except (StoreError, sqlite3.Error, OSError) as e:
        try:
            with Store(where.local_file) as local:
                backlog = local.backlog()
        except (StoreError, sqlite3.Error, OSError):
            backlog = (0, 0, 0)  # unreadable: the error above says why
        raise ShipFailed(str(e), backlog) from e
