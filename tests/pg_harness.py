"""A real PostgreSQL server for the coordination tests: ``initdb`` + ``pg_ctl`` in a temp directory.

The binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``,
which ``.ci/run`` installs when missing) or from ``$PATH``. PostgreSQL refuses to run as root, so
as root the server runs as the ``postgres`` user the package creates (else ``nobody``). It listens
only on a Unix socket in its own directory (no TCP port to collide with), trusts local
connections, and skips fsync (test data; commits stay synchronous, so stopping it with
``-m immediate`` loses nothing it acknowledged, as with a real crash of a durable server). Tests that cannot have it skip with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PORT = 5432  # only names the socket file inside the server's private directory
SUPERUSER = "ckptd"


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres; newest Debian version first."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: (
            int(Path(path).parent.parent.name) if Path(path).parent.parent.name.isdigit() else 0
        ),
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(os.path.realpath(on_path))
    for initdb in candidates:
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").exists() and (bindir / "postgres").exists():
            return bindir
    return None


def _server_user() -> tuple[int, int] | None:
    """uid/gid to run the server as: None when not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    return 65534, 65534


@dataclass
class PgServer:
    bindir: Path
    base: Path
    user: tuple[int, int] | None

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def sockets(self) -> Path:
        return self.base / "sock"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.sockets} port={PORT} user={SUPERUSER} dbname={dbname}"

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        options: dict[str, Any] = {}
        if self.user is not None:
            options = {"user": self.user[0], "group": self.user[1], "extra_groups": []}
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(self.base)}
        return subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
            env=env,
            **options,
        )

    def _checked(self, *argv: str, timeout: float = 60.0) -> None:
        result = self._run(*argv, timeout=timeout)
        if result.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(
                f"{argv[0]} exited {result.returncode}: {result.stderr.strip()[-2000:]}\n{log}"
            )

    def initdb(self) -> None:
        self._checked(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "--no-locale",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        options = (
            f"-k {self.sockets} -p {PORT} -c listen_addresses='' -c fsync=off"
            " -c full_page_writes=off -c max_connections=200"
        )
        self._checked(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "-o", options,
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._checked("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def new_database(self) -> str:
        """A fresh, empty database; returns its DSN."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


def start_server() -> PgServer | str:
    """A running server, or the reason there cannot be one here."""
    bindir = find_bindir()
    if bindir is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl; Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    user = _server_user()
    base = Path(tempfile.mkdtemp(prefix="ckptd-pg-", dir="/tmp"))
    base.chmod(0o755)  # the test process (root) reaches the socket; the data dir stays 0700
    (base / "sock").mkdir()
    if user is not None:
        os.chown(base, *user)
        os.chown(base / "sock", *user)
    server = PgServer(bindir=bindir, base=base, user=user)
    try:
        server.initdb()
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        shutil.rmtree(base, ignore_errors=True)
        return f"could not start PostgreSQL from {bindir}: {err}"
    return server


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    """The session's server; stopped and deleted at the end."""
    server = start_server()
    if isinstance(server, str):
        pytest.skip(server)
    try:
        yield server
    finally:
        with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
            if server.running():
                server.stop("immediate")
        shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for the whole session (skips with the reason where there is none)."""
    with running_server() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A fresh database on the session's server (restarted first if a test left it stopped)."""
    if not pg_server.running():
        pg_server.start()
    return pg_server.new_database()
