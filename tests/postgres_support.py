"""A throw-away PostgreSQL server for tests: its own cluster in a temp folder, loopback only.

initdb refuses to run as root, so when the tests run as root the cluster is created and run as
the ``postgres`` system user (Debian's package creates it). Skips when PostgreSQL or the
psycopg driver is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serve_support import PORT_ATTEMPTS, PORT_IN_USE, free_port
from tool_support import importorskip_tool, skip_missing
from waiting import wait_until

SEARCH = ["/usr/local/bin", *sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin"))]


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in SEARCH:
        candidate = Path(folder) / name
        if candidate.is_file():
            return str(candidate)
    return None


class PostgresUrl(str):
    """The SQLAlchemy URL, with :meth:`restart` (``pg_ctl restart``) for outage tests."""

    restart_command: list[str]

    def restart(self, mode: str = "fast") -> float:
        """``pg_ctl -m MODE restart`` (waits until it accepts connections); the seconds it took."""
        started = time.monotonic()
        result = subprocess.run(
            [*self.restart_command, "-m", mode, "restart"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-500:]
        return time.monotonic() - started


@contextmanager
def postgres_server(folder: Path) -> Iterator[PostgresUrl]:
    """Start PostgreSQL; yields a SQLAlchemy URL (psycopg 3) of an empty database (a ``str``
    with a ``restart()`` method)."""
    importorskip_tool("psycopg", "psycopg (PostgreSQL driver) is not installed")
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not initdb or not pg_ctl:
        skip_missing("PostgreSQL server binaries (initdb, pg_ctl) not found (Debian package postgresql)")
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            skip_missing("running as root without runuser: cannot start PostgreSQL as another user")
        prefix = ["runuser", "-u", "postgres", "--"]
    folder.mkdir(parents=True, exist_ok=True)
    if prefix:
        # not under pytest's basetemp: another pytest session (as root) sets its root folder
        # back to mode 700 at any moment, and the postgres user could no longer reach the cluster
        folder = Path(tempfile.mkdtemp(prefix="xraytriage-pg-"))
        folder.chmod(0o755)
    data, sockets = folder / "pgdata", folder / "sockets"
    sockets.mkdir(exist_ok=True)
    if prefix:
        for path in (folder, sockets):
            shutil.chown(path, "postgres", "postgres")
    run = lambda *args: subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)  # noqa: E731
    result = run(initdb, "-D", str(data), "-U", "triage", "--auth=trust", "-E", "UTF8", "--no-sync")
    if result.returncode != 0:
        skip_missing(f"initdb failed: {result.stderr.strip()[-300:]}")
    log_path = folder / "postgres.log"
    for attempt in range(PORT_ATTEMPTS):  # another process may take the free port before PostgreSQL binds it
        port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets} -c fsync=off"
        )
        result = run(pg_ctl, "-D", str(data), "-o", options, "-l", str(log_path), "-w", "start")
        if result.returncode == 0:
            break
        log = log_path.read_text(errors="replace") if log_path.is_file() else ""
        if attempt == PORT_ATTEMPTS - 1 or PORT_IN_USE not in (result.stderr + log).lower():
            skip_missing(f"PostgreSQL did not start: {result.stderr.strip()[-300:]}")
    try:
        import psycopg

        def accepts() -> bool:
            try:
                psycopg.connect(host="127.0.0.1", port=port, user="triage", dbname="postgres").close()
                return True
            except psycopg.OperationalError:
                return False

        wait_until(accepts, 30, interval=0.2, what=f"PostgreSQL to accept connections on port {port}")
        url = PostgresUrl(f"postgresql+psycopg://triage@127.0.0.1:{port}/postgres")
        url.restart_command = [
            *prefix,
            pg_ctl,
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(folder / "postgres.log"),
            "-w",
        ]
        yield url
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
        if prefix:
            shutil.rmtree(folder, ignore_errors=True)
