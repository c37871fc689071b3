# SPDX-License-Identifier: GPL-2.0
"""Network namespaces and the processes in them, as the lab makes and removes them: create,
list and delete namespaces, open sockets inside one, stop processes for good, and clean up
what crashed runs left."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ccxdp.errors import LabError
from ccxdp.lab.addressing import ROLES

NETNS_RUN_DIR = Path("/run/netns")  # where `ip netns add` bind-mounts named namespaces
CLONE_NEWNET = 0x40000000
STOP_TIMEOUT = 5.0  # seconds a process gets after SIGTERM before SIGKILL

# The only errors cleanup may swallow: the thing it wanted to remove is already gone.
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH})

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


def run_ip(*args: str, timeout: float = 30.0) -> str:
    """Run `ip ARGS` in the root namespace; raise LabError with ip's message on failure."""
    cp = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if cp.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {cp.stderr.strip() or f'exit {cp.returncode}'}")
    return cp.stdout


def list_netns() -> list[str]:
    """Named network namespaces (what `ip netns list` shows), read from /run/netns."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def netns_pids(ns: str) -> list[int]:
    """Processes living in the named namespace (`ip netns pids`); [] if it does not exist."""
    if not (NETNS_RUN_DIR / ns).exists():
        return []
    return [int(p) for p in run_ip("netns", "pids", ns).split()]


def delete_netns(ns: str) -> None:
    """Kill every process in the namespace, then delete it (its veth ends go with it).

    The kill comes first because a namespace whose name is deleted lives on, invisible, for
    as long as a process is inside it.
    """
    pids = netns_pids(ns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(pids, STOP_TIMEOUT)
    if (NETNS_RUN_DIR / ns).exists():
        run_ip("netns", "delete", ns)


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state first), or None if pid is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _wait_gone(pids: Sequence[int], timeout: float) -> None:
    """Wait until the pids have exited (a zombie counts: it holds no namespace any more)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            stat = _proc_stat(pid)
            if stat is None or stat[0] in ("Z", "X"):
                break
            time.sleep(0.01)


def proc_start_time(pid: int) -> str | None:
    """Start time (field 22 of /proc/PID/stat) of a running, non-zombie process, else None.

    With the pid it identifies a process despite pid reuse.
    """
    stat = _proc_stat(pid)
    return None if stat is None or stat[0] in ("Z", "X") else stat[19]


def stop_pid(pid: int, start: str | None) -> None:
    """SIGTERM the process if it is still the one that started at `start`; SIGKILL after
    STOP_TIMEOUT. A process that is gone, or another one reusing the pid, is left alone."""
    if start is None or proc_start_time(pid) != start:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    _wait_gone([pid], STOP_TIMEOUT)
    if proc_start_time(pid) == start:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone([pid], STOP_TIMEOUT)


def netns_socket(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside the named namespace, usable from any thread.

    A socket belongs to the namespace it was created in for its whole life, so only the
    creation needs to happen in there. setns() changes the namespace of the calling thread
    only, so it runs in a throw-away thread: the caller's threads never leave their namespace,
    and nothing has to be switched back even if something fails half-way.
    """
    box: list[socket.socket | BaseException] = []

    def create() -> None:
        try:
            fd = os.open(NETNS_RUN_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box.append(socket.socket(family, kind, proto))
        except BaseException as exc:  # handed to the caller's thread below
            box.append(exc)

    thread = threading.Thread(target=create, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _owner_alive(lab_id: str, tmp_root: Path) -> bool:
    """Whether the process that made lab `lab_id` still runs (its temp dir names it).

    The temp dir, with its owner file, is made before the namespaces and removed after them,
    so namespaces without any temp dir are certainly orphans. A temp dir whose owner file is
    not written yet is being set up right now: count that as alive.
    """
    for d in tmp_root.glob(f"{lab_id}-*"):
        try:
            pid, start = (d / "owner").read_text().split()
        except FileNotFoundError:
            return True
        except ValueError:
            continue  # torn owner file: its writer died while writing it
        if proc_start_time(int(pid)) == start:
            return True
    return False


def cleanup_stale(prefix: str = "cx", tmp_root: str | None = None) -> list[str]:
    """Remove what crashed test runs left: namespaces `<prefix><6 hex>-<role>` and temp dirs.

    Only labs whose owner process is gone are touched, so a lab of a concurrent run survives.
    Persistent labs (`ccxdp lab up`) have names that never match, and their own record.
    Returns what was removed (namespace names and temp dir paths).
    """
    root = Path(tmp_root or tempfile.gettempdir())
    lab_id = rf"{re.escape(prefix)}[0-9a-f]{{6}}"
    removed: list[str] = []
    for ns in list_netns():
        m = re.fullmatch(rf"({lab_id})-({'|'.join(ROLES)})", ns)
        if m and not _owner_alive(m[1], root):
            delete_netns(ns)
            removed.append(ns)
    for d in root.iterdir():
        m = re.match(rf"({lab_id})-", d.name)
        if m and d.is_dir() and (d / "owner").exists() and not _owner_alive(m[1], root):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(d)
            removed.append(str(d))
    return removed


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; always reaps it and closes its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
