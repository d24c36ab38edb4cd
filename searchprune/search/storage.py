"""Optuna storages from a URL, and which study a CLI command addresses."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import optuna
import sqlalchemy.engine
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from ..config import StudyConfig, load_study_config
from ..errors import ConfigError

__all__ = ["JOURNAL_SUFFIXES", "CONNECT_TIMEOUT_S", "default_storage_url", "make_storage", "resolve_storage",
           "storage_error", "heartbeat_settings", "has_rdb_heartbeats", "mask_url"]

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
CONNECT_TIMEOUT_S = 10
"""Seconds a database server gets to answer a connection (``$SEARCHPRUNE_CONNECT_TIMEOUT``)."""


def _where(url: str) -> str:
    """What a storage error names: the file for SQLite and journals, host:port for a server."""
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        return url.removeprefix("journal:")
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    try:
        u = sqlalchemy.engine.make_url(url)
    except Exception:
        return mask_url(url)
    return f"{u.host or 'localhost'}:{u.port or {'postgresql': 5432, 'mysql': 3306}.get(u.get_backend_name(), '?')}"


def storage_error(url: str, e: BaseException, suffix: str = "") -> ConfigError:
    """One line for a storage that cannot be read or written: the path (or host:port) and the cause.

    SQLAlchemy appends a second "(Background on this error ...)" line; only the first line is kept.
    """
    cause = str(getattr(e, "orig", None) or e).strip().splitlines()
    reason = (cause[0] if cause else "") or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    reason = _mask_text(reason, url)
    where, shown = _where(url), mask_url(url)
    also = "" if shown.endswith(where) else f" ({shown})"
    return ConfigError(f"storage {where}{also}: cannot read or write it: "
                       f"{type(getattr(e, 'orig', None) or e).__name__}: {reason}{suffix}")


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds: ``$SEARCHPRUNE_HEARTBEAT_INTERVAL`` (60) and
    ``$SEARCHPRUNE_HEARTBEAT_GRACE`` (180). RDB storages use them for Optuna's heartbeats, journal
    files for searchprune's own (see :mod:`searchprune.search.optimize`)."""
    return (int(os.environ.get("SEARCHPRUNE_HEARTBEAT_INTERVAL", 60)),
            int(os.environ.get("SEARCHPRUNE_HEARTBEAT_GRACE", 180)))


def has_rdb_heartbeats(storage: optuna.storages.BaseStorage) -> bool:
    """Whether Optuna itself fails and retries a dead worker's trial on this storage."""
    # Study._storage wraps an RDBStorage in Optuna's cache; both answer get_heartbeat_interval
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def _journal(path: str) -> JournalStorage:
    """A journal file, repaired and checked before use.

    A worker killed in the middle of a write leaves a last line without its newline; the next append
    would glue onto it and turn the whole file unreadable. Under the journal's own lock (writers hold
    it for a whole write) such a tail is a dead writer's and is cut off. Any other undecodable line is
    a corrupt file: one ConfigError naming the path and the line.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFileOpenLock(path)
    if os.path.exists(path) and os.path.getsize(path) > 0:
        lock.acquire()
        try:
            with open(path, "rb+") as f:
                data = f.read()
                if not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        finally:
            lock.release()
        with open(path, "rb") as f:
            for i, line in enumerate(f, start=1):
                try:
                    json.loads(line)
                except ValueError:
                    raise ConfigError(f"journal file {path} is corrupt: line {i} is not a JSON record "
                                      f"({line[:40]!r}); restore it from a copy or start a new journal") from None
    return JournalStorage(JournalFileBackend(path, lock_obj=lock))

# scheme://user:password@host...: the password is whatever sits between the first ':' after the
# scheme's '//' and the last '@' before the host (a password may itself contain '@' or ':').
_CREDENTIALS = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*):(?P<password>.*)@(?P<host>[^@]*)$")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (what may be printed, raised or stored).

    >>> mask_url("postgresql+psycopg://alice:s3cret@db.example:5432/studies")
    'postgresql+psycopg://alice:***@db.example:5432/studies'

    URLs without a password (SQLite files, journal paths) come back unchanged.
    """
    m = _CREDENTIALS.match(url)
    if m is None or not m.group("password"):
        return url
    return f"{m.group('head')}:***@{m.group('host')}"


def _mask_text(text: str, url: str) -> str:
    """``text`` (an error message from a database driver) with ``url``'s password masked."""
    m = _CREDENTIALS.match(url)
    text = text.replace(url, mask_url(url))
    if m is not None and m.group("password"):
        text = text.replace(m.group("password"), "***")
    return text


def default_storage_url(cfg: StudyConfig, *, create: bool = True) -> str:
    """SQLite file next to the study outputs (its directory made only with ``create``)."""
    path = cfg.out_path.resolve() / "study.db"
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 2, create: bool = True) -> optuna.storages.BaseStorage:
    """Storage from a URL: ``sqlite:///``, ``postgresql://``, ``mysql://`` (RDB, with heartbeats
    so a killed worker's trial is retried elsewhere) or a journal file path (``*.log``, or
    ``journal:PATH``) for many processes on one machine or a shared filesystem.

    Heartbeat interval and grace period (seconds) default to ``$SEARCHPRUNE_HEARTBEAT_INTERVAL``
    (60) and ``$SEARCHPRUNE_HEARTBEAT_GRACE`` (180); the variables reach worker processes too.
    A PostgreSQL or MySQL server gets ``$SEARCHPRUNE_CONNECT_TIMEOUT`` seconds (10; psycopg's floor
    is 2) to answer each connection unless the URL sets ``connect_timeout`` itself, so a host that
    accepts TCP but never answers fails within about that time instead of hanging.

    Args:
        create: make a missing SQLite or journal file (and its directory); False (commands that
            read an existing study) refuses a missing file instead of creating an empty database.

    Raises:
        ConfigError: not a URL, a missing file (``create=False``), a missing database driver, a
            server that does not answer in time, a corrupt journal file, or a storage that cannot be
            opened or written (one line naming the path or host:port, password masked).
    """
    default_interval, default_grace = heartbeat_settings()
    heartbeat_interval = default_interval if heartbeat_interval is None else heartbeat_interval
    grace_period = default_grace if grace_period is None else grace_period
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        path = url.removeprefix("journal:")
        _need_file(Path(path), url, create)
        try:
            return _journal(path)
        except OSError as e:
            raise storage_error(url, e) from None
    if "://" not in url:
        raise ConfigError(
            f"storage {mask_url(url)!r} is not a URL; expected sqlite:///PATH, postgresql://..., mysql://... "
            f"or a journal file ending in {', '.join(JOURNAL_SUFFIXES)}"
        )
    if url.startswith("sqlite:///"):
        _need_file(Path(url.removeprefix("sqlite:///")), url, create)
    engine_kwargs: dict[str, object] = {}
    timeout = int(os.environ.get("SEARCHPRUNE_CONNECT_TIMEOUT", CONNECT_TIMEOUT_S))
    if url.startswith(("postgresql", "mysql")) and "connect_timeout" not in url:
        engine_kwargs["connect_args"] = {"connect_timeout": timeout}
    try:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words, and stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            )
    except (ImportError, ModuleNotFoundError) as e:
        raise ConfigError(f"storage {mask_url(url)} needs a database driver: {e}; "
                          "for PostgreSQL: pip install 'searchprune[postgres]'") from None
    except Exception as e:  # sqlalchemy errors: unreachable or silent server, bad URL, unwritable file
        if "timeout" in str(e).lower() and not url.startswith("sqlite"):
            raise ConfigError(f"storage {_where(url)}: the database server did not answer within {timeout} s "
                              f"({mask_url(url)}); check host and port, or raise "
                              "$SEARCHPRUNE_CONNECT_TIMEOUT") from None
        raise storage_error(url, e) from None


def _need_file(path: Path, url: str, create: bool) -> None:
    if not create and not path.is_file():
        raise ConfigError(f"storage {url!r}: no such file {str(path)!r} (a misspelled path?); "
                          "`searchprune study create` makes a new one")


def resolve_storage(name: str | None, storage: str | None, config: str | None) -> tuple[str, str]:
    """(study name, storage URL) from CLI flags: an explicit storage, or the config's default."""
    if config is not None:
        cfg = load_study_config(config)
        # commands addressing an existing study create nothing (make_storage(create=False) refuses)
        return name or cfg.name, storage or cfg.storage or default_storage_url(cfg, create=False)
    if name is None:
        raise ConfigError("give --name (with --storage) or --config to say which study")
    if storage is None:
        path = Path("runs") / name / "study.db"
        if not path.exists():
            raise ConfigError(f"no --storage given and the default {str(path)!r} does not exist; "
                              "pass --storage URL or --config FILE")
        storage = f"sqlite:///{path.resolve()}"
    return name, storage
