"""The context every command gets: where the pins and the state folder are, and the
datapath and catalog opened on first use, so that ``--help`` and commands that never touch
the kernel never start clang."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from ccxdp.cli.render import feed_copies
from ccxdp.datapath.loader import Datapath, check_root
from ccxdp.hits.fleet import FleetStore
from ccxdp.hits.location import StoreLocation
from ccxdp.hits.store import Store
from ccxdp.policy.catalog import Catalog


@dataclass
class App:
    pin_dir: Path
    state_dir: Path
    _datapath: Datapath | None = field(default=None, repr=False)
    _catalog: Catalog | None = field(default=None, repr=False)

    def datapath(self) -> Datapath:
        """The datapath, locked until the command ends."""
        if self._datapath is None:
            check_root()
            ctx = click.get_current_context()
            self._datapath = ctx.with_resource(Datapath(self.pin_dir, self.state_dir))
        return self._datapath

    def datapath_to_read(self) -> Datapath:
        """The datapath for a command that only reads (status, config show, lab status):
        locked as datapath() is when the state folder exists; when it does not, nothing was
        ever set up here, and a look makes nothing (no folder, no lock file)."""
        if self.state_dir.exists():
            return self.datapath()
        check_root()
        return Datapath(self.pin_dir, self.state_dir)

    def catalog_to_read(self) -> Catalog:
        """The catalog for a command that only reads: as catalog() gives it when the state
        folder exists; else an empty one in memory (nothing listed, nothing made)."""
        if self.state_dir.exists():
            return self.catalog()
        return click.get_current_context().with_resource(Catalog(Path(":memory:")))

    def store(self, spec: str | None) -> StoreLocation:
        """Where the hits are, from --store (see ccxdp/hits/location.py)."""
        return StoreLocation(spec, self.state_dir)

    def feed_copies(self) -> dict[str, dict]:
        """The fetched feeds' copies as this host's catalog has them, for records made
        here; none when there is no catalog (a host that only reads the fleet store)."""
        path = Datapath(self.pin_dir, self.state_dir).catalog_path  # no lock: only read
        if not path.exists():
            return {}
        with Catalog(path) as catalog:
            return feed_copies(catalog.sources())

    def catalog(self) -> Catalog:
        if self._catalog is None:
            ctx = click.get_current_context()
            self._catalog = ctx.with_resource(Catalog(self.datapath().catalog_path))
        return self._catalog


pass_app = click.make_pass_decorator(App)


def store_option(f):
    """Adds ``--store``: the hits store of every command that reads or writes hits."""
    return click.option(
        "--store", "store_spec", envvar="CCXDP_STORE", metavar="PATH|URI",
        help="The hits store: a SQLite file (default: hits.db in the state folder) or the "
             "fleet's PostgreSQL, postgresql://USER@HOST/DB (its password from ~/.pgpass, "
             "PGPASSFILE or a service file, never in the URI). Env: CCXDP_STORE.")(f)
def opt_out_store(app: App, store_spec: str | None) -> Store | FleetStore:
    """The store that keeps the opt-out list (opted_out, opt_out, opt_in), closed when the
    command ends: the hits store --store names, so that a fleet's opt-outs reach every
    resolver's daemon and the notify host alike."""
    store = app.store(store_spec).open()
    click.get_current_context().call_on_close(store.close)
    return store
