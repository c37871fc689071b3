"""Shared fixtures. Tests that need root, bpffs or namespaces carry the `root` mark; they skip
with the reason when that is truly unavailable, and fail instead under CI, where it must be."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from array import array
from pathlib import Path

import pytest

BPFFS = Path("/sys/fs/bpf")


def _root_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.ismount(BPFFS):
        return "needs bpffs mounted on /sys/fs/bpf (scripts/setup.sh mounts it)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "needs bcc (python3-bpfcc) in the venv"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _root_unavailable()
    if reason is None:
        return
    needing = [i for i in items if i.get_closest_marker("root") or i.get_closest_marker("netns")]
    if needing and os.environ.get("CI"):
        raise pytest.UsageError(
            f"CI must run the {len(needing)} root/netns tests, but this machine {reason}"
        )
    for item in needing:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def state_root():
    path = Path(tempfile.mkdtemp(prefix="ccxdp-test-state-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_pin_dir() -> Path:
    return BPFFS / f"ccxdp-test-{secrets.token_hex(4)}"


def remove_pins(pin_dir: Path) -> None:
    if pin_dir.exists():
        for pin in pin_dir.iterdir():
            pin.unlink()
        pin_dir.rmdir()


@pytest.fixture(scope="session")
def loaded(state_root):
    """One compiled, pinned program (small maps) for the BPF_PROG_TEST_RUN tests."""
    from ccxdp.datapath import libbpf
    from ccxdp.datapath.loader import Datapath, Limits

    pin_dir = make_pin_dir()
    dp = Datapath(pin_dir, state_root / "testrun")
    try:
        with dp:
            fd = dp.load(Limits(max_names=65536, max_sources=4096))
        yield dp, fd
        libbpf.close(fd)
    finally:
        remove_pins(pin_dir)


@pytest.fixture
def datapath(loaded):
    """The loaded program with empty name and source maps and default ports."""
    from ccxdp.datapath import shared

    dp, fd = loaded
    clear_entries(dp)
    with dp.open_map(shared.MAP_SOURCES) as m:
        for k in list(m.keys()):
            m.delete(k)
    dp.set_dns_ports([53])
    return dp, fd


def clear_entries(dp) -> None:
    """Empty the kernel's name table."""
    from ccxdp.datapath.nametable import NameTable

    with NameTable(dp) as table:
        table.publish(array("Q"), array("Q"))


def set_entries(dp, entries: dict[int, tuple[int, int]]) -> None:
    """Make {hash: (flags, category)} the kernel's list, as drop entries."""
    from ccxdp.datapath import shared

    publish_entries(dp, {h: (shared.Action.DROP, f, c) for h, (f, c) in entries.items()})


def publish_entries(dp, entries: dict[int, tuple[int, int, int]]) -> None:
    """Make {hash: (action, flags, category)} the kernel's list, the way the control plane
    publishes lists."""
    from ccxdp.datapath import shared
    from ccxdp.datapath.nametable import NameTable

    pairs = sorted((h, shared.pack_entry(*v)) for h, v in entries.items())
    with NameTable(dp) as table:
        table.publish(array("Q", (h for h, _ in pairs)), array("Q", (v for _, v in pairs)))


def kernel_names(dp) -> dict[int, tuple[int, int, int]]:
    """{hash: (action, flags, category)} of the kernel's live list."""
    from ccxdp.datapath import shared
    from ccxdp.datapath.nametable import NameTable

    with NameTable(dp) as table:
        hashes, values = table.read()
    return {h: shared.unpack_entry(v) for h, v in zip(hashes, values, strict=True)}


@pytest.fixture
def lab():
    """The end-to-end topology, from one place (tests.harness.hosts.from_env): by default a
    namespace lab (a resolver with a real unbound, clients, a sinkhole, on one switch); with
    CCXDP_E2E_TOPOLOGY=hosts, this host as the resolver and a client VM (vagrant/README.md).
    Everything it makes is removed when the test ends, passed or failed."""
    from tests.harness.hosts import from_env

    with from_env() as topology:
        yield topology


class Ccxdp:
    """The real `ccxdp` console script, run as a new process each call, on private pins."""

    def __init__(self, pin_dir: Path, state_dir: Path):
        self.pin_dir = pin_dir
        self.state_dir = state_dir
        self.exe = Path(sys.executable).parent / "ccxdp"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.exe), "--pin-dir", str(self.pin_dir), "--state-dir", str(self.state_dir)]
        cp = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120)
        if check and cp.returncode != 0:
            raise AssertionError(f"ccxdp {' '.join(args)} exited {cp.returncode}: {cp.stderr}")
        return cp

    def json(self, *args: str):
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture
def ccxdp(tmp_path):
    """A private ccxdp installation. Teardown detaches it from every interface it was attached
    to (even when the test failed midway) and removes its pins."""
    tool = Ccxdp(make_pin_dir(), tmp_path / "state")
    try:
        yield tool
    finally:
        from ccxdp.datapath.loader import Datapath
        from ccxdp.errors import DatapathError

        try:
            dp = Datapath(tool.pin_dir, tool.state_dir)
            with dp:
                for a in dp.attachments():
                    if a.prog_id is not None:
                        try:
                            dp.detach(a.ifname, a.netns)
                        except DatapathError as e:  # its namespace or interface is gone
                            gone = ("no interface", "no network namespace")
                            if not any(g in str(e) for g in gone):
                                raise
        finally:
            remove_pins(tool.pin_dir)


@pytest.fixture
def bare_netns():
    """An empty network namespace (just lo), removed afterwards: somewhere to attach ccxdp
    (generic mode on lo) when a test needs the program loaded and attached, not a lab."""
    name = f"cxb{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def one_line_error(
    cp: subprocess.CompletedProcess, status: int, *words: str, stderr: str | None = None
) -> str:
    """Exit status, exactly one 'Error:' line holding every word, no traceback; exit 1 prints
    that line alone, exit 2 adds click's usage lines. stderr: cp.stderr with what the caller
    already accounted for left out."""
    where = f"\nstdout: {cp.stdout}\nstderr: {cp.stderr}"
    assert "Traceback" not in cp.stderr, where
    assert cp.returncode == status, where
    text = cp.stderr if stderr is None else stderr
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, where
    if status == 1:
        assert lines == errors, where
    else:
        assert all(line.startswith(("Usage: ", "Try ", "Error: ")) for line in lines), where
    for word in words:
        assert word in errors[0], where
    return errors[0]


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for the session (tests/harness/postgres.py)."""
    from tests.harness.postgres import running_server

    server = running_server()
    yield server
    server.remove()


@pytest.fixture
def fleet_uri(postgres_server, monkeypatch):
    """A fresh database on the session's server, and PGPASSFILE set to reach it: the URI."""
    for key, value in postgres_server.env().items():
        monkeypatch.setenv(key, value)
    return postgres_server.database()


@pytest.fixture(scope="session")
def real_feeds() -> Path:
    """The 13 real feed files of public blocklist projects, read where they lie: ../shared
    beside the project (never copied into it); CCXDP_REAL_FEEDS moves them."""
    repo = Path(__file__).resolve().parents[1]
    path = Path(os.environ.get("CCXDP_REAL_FEEDS", repo.parent / "shared" / "feeds" / "real"))
    if not (path / "README.md").is_file():
        pytest.fail(f"no real feed files in {path}: clone the project beside ../shared, or "
                    f"set CCXDP_REAL_FEEDS")
    return path
