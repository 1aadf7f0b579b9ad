"""A real PostgreSQL server for the tests: initdb and pg_ctl into a temporary folder, on a free port.

PostgreSQL refuses to run as root, so under root the server runs as an unprivileged user (the
package's `postgres` user, else `nobody`) in a folder that user owns. Password authentication is
on for TCP, so tests can check what a wrong password does. The server lives for the test session;
each test gets a fresh database (`postgres_url`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

SUPERUSER = "heygem"
UNPRIVILEGED_USERS = ("postgres", "nobody")
START_TIMEOUT_S = 60
# Durability off: a test database need not survive a power cut, and fsync dominates on CI disks.
SERVER_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{folder}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
"""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    password: str

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{SUPERUSER}:{secret}@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; returns its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def find_binary(name: str) -> str:
    """A PostgreSQL program on PATH, else in Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key, reverse=True)
    if not versions:
        pytest.fail(
            f"PostgreSQL's {name} not found: install Debian's postgresql package (scripts/test.sh does)"
        )
    return versions[0]


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    """argv run as an unprivileged user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", _server_user(), "--", *argv]


def _server_user() -> str:
    for name in UNPRIVILEGED_USERS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.fail("no unprivileged user to run PostgreSQL as (tried postgres, nobody)")


def _run(argv: list[str]) -> None:
    done = subprocess.run(_as_server_user(argv), capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for as long as the block runs (the fixture's, and the fleet
    benchmark's)."""
    folder = Path(tempfile.mkdtemp(prefix="heygem-pg-"))
    data = folder / "data"
    password = secrets.token_hex(12)
    (folder / "pwfile").write_text(password + "\n")
    if os.geteuid() == 0:
        user = pwd.getpwnam(_server_user())
        for path in (folder, folder / "pwfile"):
            os.chown(path, user.pw_uid, user.pw_gid)
    _run(
        [
            find_binary("initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            f"--pwfile={folder / 'pwfile'}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        ]
    )
    port = free_port()
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(SERVER_CONF.format(port=port, folder=folder))
    pg_ctl = find_binary("pg_ctl")
    log_file = folder / "server.log"
    _run([pg_ctl, "-D", str(data), "-l", str(log_file), "-w", "-t", str(START_TIMEOUT_S), "start"])
    try:
        yield PostgresServer("127.0.0.1", port, password)
    finally:
        subprocess.run(
            _as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres_server.new_database()
