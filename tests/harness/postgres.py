"""A real PostgreSQL server of the test's own: initdb into a temporary folder, run as the
unprivileged ``postgres`` user (Debian's package makes it; PostgreSQL refuses to run as
root), listening on a Unix socket in that folder only, with password (SCRAM) authentication
and the password in a pgpass file, as an ISP would give it to ccxdp. Stopped and removed
afterwards, also when the test fails.

Each test gets its own database on a shared server (``database()``); tests that stop or kill
the server start their own.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

USER = "postgres"  # the system account the server runs as
ROLE = "ccxdp"  # the role ccxdp connects as


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"no {name}: scripts/setup.sh installs Debian's postgresql")
    return found[-1]  # the newest major version installed


class PostgresServer:
    def __init__(self, port: int = 5432):
        self.root = Path(tempfile.mkdtemp(prefix="ccxdp-pg-"))
        self.data = self.root / "data"
        self.port = port
        self.password = secrets.token_urlsafe(18)
        self.admin_password = secrets.token_urlsafe(18)
        # The pgpass file is the client's: root's, mode 0600, as libpq requires.
        self.pgpass = self.root / "pgpass"
        self.pgpass.write_text(
            f"*:*:*:{ROLE}:{self.password}\n*:*:*:{USER}:{self.admin_password}\n")
        self.pgpass.chmod(0o600)
        account = pwd.getpwnam(USER)
        os.chown(self.root, account.pw_uid, account.pw_gid)
        self.root.chmod(0o755)  # the socket lives here; the data folder is postgres' 0700
        self._databases = 0
        self.started = False

    # -- the server ---------------------------------------------------------------------
    def _as_postgres(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", USER, "--", *args], check=True,
                              capture_output=True, text=True, cwd=self.root, **kw)

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.admin_password + "\n")
        account = pwd.getpwnam(USER)
        os.chown(pwfile, account.pw_uid, account.pw_gid)
        pwfile.chmod(0o600)
        try:
            self._as_postgres(_bin("initdb"), "-D", str(self.data), "-U", USER,
                              "--pwfile", str(pwfile), "--auth=scram-sha-256", "-E", "UTF8",
                              "--locale=C.UTF-8", "--no-sync")
        finally:
            pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{self.root}'\n"
                       f"port = {self.port}\nfsync = on\nmax_connections = 60\n"
                       "shared_buffers = 32MB\nlog_min_messages = warning\n")

    def start(self) -> None:
        try:
            self._as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-l",
                              str(self.root / "log"), "-w", "-t", "60", "start")
        except subprocess.CalledProcessError:
            log = (self.root / "log").read_text(errors="replace").splitlines()[-8:]
            raise RuntimeError("postgres did not start:\n" + "\n".join(log)) from None
        self.started = True

    def stop(self) -> None:
        if self.started:
            self._as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                              "stop")
            self.started = False

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend: a crash, not a shutdown."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        children = [int(p) for p in out.stdout.split()]
        for p in [pid, *children]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in [pid, *children]):
            time.sleep(0.05)
        # A killed postmaster may linger as a zombie until something reaps it, and its lock
        # files name its pid: the next start would take it for a live server.
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.root.glob(".s.PGSQL.*"):
            lock.unlink(missing_ok=True)
        self.started = False

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            self.kill()
        if self.postmaster_pid() is not None:
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- what a client needs ------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment a ccxdp command needs to reach it: only the pgpass file."""
        return {"PGPASSFILE": str(self.pgpass)}

    def uri(self, database: str) -> str:
        host = str(self.root).replace("/", "%2F")
        return f"postgresql://{ROLE}@{host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres", user: str = USER) -> str:
        out = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
             "-p", str(self.port), "-U", user, "-d", database, "-f", "-"],
            input=sql, check=True, capture_output=True, text=True,  # no secret in argv
            env={**os.environ, **self.env()})
        return out.stdout.strip()

    def database(self) -> str:
        """A new empty database owned by the ccxdp role; its URI."""
        if self._databases == 0:
            self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")
        self._databases += 1
        name = f"fleet{self._databases}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.uri(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes: its parent (runuser, or init) reaps it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def running_server(port: int = 5432) -> PostgresServer:
    server = PostgresServer(port)
    try:
        server.init()
        server.start()
    except BaseException:
        server.remove()
        raise
    return server
