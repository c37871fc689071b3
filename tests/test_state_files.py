"""The state folder's databases are their owner's alone, and a look makes nothing.

hits.db holds subscribers' addresses: it, catalog.db and their -wal and -shm are made 0600
whatever the umask (a folder's 0700 is one mistake away from 0755), and files an older
ccxdp made 0644 are narrowed when opened. `status`, `config show` and `lab status` on a host
where nothing was set up create no state folder.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ccxdp.hits.store import Store
from ccxdp.policy.catalog import Catalog

CCXDP = Path(sys.executable).parent / "ccxdp"


def modes(folder: Path, stem: str) -> dict[str, str]:
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in sorted(folder.iterdir())
            if p.name.startswith(stem)}


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_catalog_and_store_are_made_0600_with_their_wal_and_shm(tmp_path, umask_022):
    with Catalog(tmp_path / "catalog.db") as catalog:
        catalog.set_meta("written", "yes")  # a write: the -wal and -shm exist now
        assert modes(tmp_path, "catalog.db") == {
            "catalog.db": "0o600", "catalog.db-shm": "0o600", "catalog.db-wal": "0o600"}
    store = Store(tmp_path / "hits.db")
    try:
        store.opt_out(["L-1"])
        assert modes(tmp_path, "hits.db") == {
            "hits.db": "0o600", "hits.db-shm": "0o600", "hits.db-wal": "0o600"}
    finally:
        store.close()


def test_files_an_older_ccxdp_made_0644_are_narrowed(tmp_path, umask_022):
    store = Store(tmp_path / "hits.db")
    store.opt_out(["L-1"])
    for p in tmp_path.iterdir():
        p.chmod(0o644)
    again = Store(tmp_path / "hits.db")  # the first still has it open: -wal and -shm stay
    try:
        assert modes(tmp_path, "hits.db") == {
            "hits.db": "0o600", "hits.db-shm": "0o600", "hits.db-wal": "0o600"}
        assert list(again.opted_out()) == ["L-1"]
    finally:
        again.close()
        store.close()


@pytest.mark.root
@pytest.mark.parametrize("command", [["status"], ["config", "show"], ["lab", "status"]],
                         ids=["status", "config-show", "lab-status"])
def test_a_look_makes_no_state_folder(tmp_path, command):
    state = tmp_path / "state"
    cp = subprocess.run([str(CCXDP), "--pin-dir", str(tmp_path / "no-pins"), "--state-dir",
                         str(state), *command, "--json"], capture_output=True, text=True,
                        timeout=120)
    assert cp.returncode == 0, cp.stderr
    assert not state.exists()
    assert not (tmp_path / "no-pins").exists()
