"""A throw-away PostgreSQL server for tests and benchmarks.

``postgres_server()`` runs ``initdb`` in a fresh temporary directory, starts ``postgres`` on a free
loopback port and yields a SQLAlchemy URL for psycopg 3; it always stops the server and deletes the
directory afterwards. PostgreSQL refuses to run as root, so as root its tools run as the
``postgres`` user (``runuser``) that Debian's ``postgresql`` package creates.

Used by ``tests/test_workers.py`` and ``scripts/bench_search.py``; ``scripts/test.sh`` installs the
binaries (``apt-get install -y postgresql``) when they are missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PostgresUnavailable", "find_pg_bin", "free_port", "postgres_server"]


class PostgresUnavailable(RuntimeError):
    """The server cannot be started here; the message says why (tests skip with it)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (Debian keeps them off PATH), or None."""
    on_path = shutil.which("pg_ctl")
    if on_path and (Path(on_path).resolve().parent / "initdb").exists():
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root and `runuser` is missing, so postgres cannot be started")
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        raise PostgresUnavailable(f"{what} failed ({res.returncode}): {res.stderr.strip()[-2000:]} {tail}")


@contextmanager
def postgres_server(*, max_connections: int = 100) -> Iterator[str]:
    """Starts a private PostgreSQL server and yields ``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``.

    Raises:
        PostgresUnavailable: the binaries, the ``postgres`` user or psycopg are missing, or the
            server did not start (the message carries the server log's tail).
    """
    try:
        import psycopg  # noqa: F401  (the driver SQLAlchemy needs for the yielded URL)
    except ImportError:
        raise PostgresUnavailable("psycopg is not installed (pip install 'psycopg[binary]')") from None
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise PostgresUnavailable("PostgreSQL binaries not found (apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="searchprune-pg-"))
    if os.geteuid() == 0:
        try:
            shutil.chown(root, user="postgres")
        except (LookupError, PermissionError) as e:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable(f"cannot hand {root} to the postgres user: {e}") from None
    data, log, port = root / "data", root / "server.log", free_port()
    started = False
    try:
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-N"]
        _run(_as_owner(initdb), "initdb")
        opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c max_connections={max_connections}")
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
        _run(_as_owner([*pg_ctl, "-o", opts, "-l", str(log), "-w", "-t", "60", "start"]), "pg_ctl start", log)
        started = True
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            stop = [*pg_ctl, "-m", "immediate", "-w", "stop"]
            subprocess.run(_as_owner(stop), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
