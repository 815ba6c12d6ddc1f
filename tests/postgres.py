"""A real, throwaway PostgreSQL server for tests.

`postgres_server` (one per session) runs initdb in a temporary folder, starts
the server with pg_ctl on a free port of 127.0.0.1 with trust auth, and stops
it after. `postgres_url` creates a fresh database per test and yields its
SQLAlchemy URL. Use them from a test module with
`from postgres import postgres_server, postgres_url  # noqa: F401`.

The server binaries come from the Debian package `postgresql`
(/usr/lib/postgresql/<version>/bin; scripts/setup.sh installs it); without
them, or without psycopg (3), the tests that use these fixtures are skipped.
initdb refuses to run as root, so as root the folder is given to the
`postgres` user the package creates and the server runs as that user.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOST = "127.0.0.1"
NOT_INSTALLED = "the PostgreSQL server could not be installed"


def server_bin() -> Path | None:
    """The folder of initdb and pg_ctl: the newest Debian install, else the PATH."""
    def version(path: Path) -> tuple:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))

    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin")
             if (d / "initdb").exists() and (d / "pg_ctl").exists()]
    if found:
        return max(found, key=version)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    bin: Path
    port: int
    folder: Path
    as_user: list[str] = field(default_factory=list)

    def url(self, database: str) -> str:
        """The README's form: postgresql:// is psycopg 3 for SQLAlchemy 2 (a dependency of the project)."""
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def createdb(self, name: str) -> str:
        subprocess.run([str(self.bin / "createdb"), "-h", HOST, "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True, text=True, timeout=60)
        return self.url(name)

    def start(self) -> None:
        # -F: no fsync (a test server); -k: its socket in our folder, not /var/run/postgresql
        options = f"-h {HOST} -p {self.port} -k {self.folder} -F -c max_connections=200"
        _run(self.as_user + [str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-l",
                             str(self.folder / "server.log"), "-w", "-t", "60", "-o", options, "start"],
             self.folder, "pg_ctl start")

    def stop(self) -> None:
        """Stop it (fast: clients are disconnected at once), as a restart of the database machine does."""
        subprocess.run(self.as_user + [str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast",
                                       "-w", "stop"], cwd=self.folder, capture_output=True, timeout=120)


def _as_server_user(folder: Path) -> list[str]:
    """The command prefix that runs the server's programs as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip(f"{NOT_INSTALLED}: running as root and there is no `postgres` user to run it as "
                    "(fix: bash scripts/setup.sh, which installs the Debian package postgresql)")
    os.chown(folder, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str], folder: Path, what: str) -> None:
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        log = folder / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}{tail}")


@contextlib.contextmanager
def serve():
    """A started throwaway server (also used by benchmarks/chaos.py); skips (pytest.skip) without one."""
    bindir = server_bin()
    if bindir is None:
        pytest.skip(f"{NOT_INSTALLED}: no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH "
                    "(fix: bash scripts/setup.sh, which runs apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed, so SQLAlchemy cannot reach postgresql:// URLs "
                    "(fix: pip install -e ., which brings psycopg[binary])")
    folder = Path(tempfile.mkdtemp(prefix="recipe-sweep-pg-"))  # under /tmp, which any user can traverse
    try:
        as_user = _as_server_user(folder)
        _run(as_user + [str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], folder, "initdb")
        for attempt in itertools.count():
            server = Server(bindir, free_port(), folder, as_user)
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:  # not a port taken between free_port and the start
                    raise
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    with serve() as server:
        yield server


_databases = itertools.count()


@pytest.fixture
def postgres_url(postgres_server):
    """A new, empty database on the test server: postgresql://postgres@127.0.0.1:PORT/DB."""
    yield postgres_server.createdb(f"sweeps{os.getpid()}_{next(_databases)}")
