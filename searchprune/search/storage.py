"""Optuna storages from a URL, and which study a CLI command addresses."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import optuna
import sqlalchemy.engine
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from ..config import StudyConfig, load_study_config
from ..errors import ConfigError

__all__ = ["JOURNAL_SUFFIXES", "CONNECT_TIMEOUT_S", "default_storage_url", "make_storage", "resolve_storage",
           "storage_error", "heartbeat_settings", "has_rdb_heartbeats"]

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
CONNECT_TIMEOUT_S = 10
"""Seconds a database server gets to answer a connection (``$SEARCHPRUNE_CONNECT_TIMEOUT``)."""


def _shown(url: str) -> str:
    """The URL with its password as ``***`` (a local stand-in for P1a's ``mask_url``)."""
    if "://" not in url:
        return url
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: show nothing that may hold a secret
        return url.split("://", 1)[0] + "://***"


def _where(url: str) -> str:
    """What a storage error names: the file for SQLite and journals, host:port for a server."""
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        return url.removeprefix("journal:")
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    try:
        u = sqlalchemy.engine.make_url(url)
    except Exception:
        return _shown(url)
    return f"{u.host or 'localhost'}:{u.port or {'postgresql': 5432, 'mysql': 3306}.get(u.get_backend_name(), '?')}"


def storage_error(url: str, e: BaseException, suffix: str = "") -> ConfigError:
    """One line for a storage that cannot be read or written: the path (or host:port) and the cause.

    SQLAlchemy appends a second "(Background on this error ...)" line; only the first line is kept.
    """
    cause = str(getattr(e, "orig", None) or e).strip().splitlines()
    reason = (cause[0] if cause else "") or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    where, shown = _where(url), _shown(url)
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


def default_storage_url(cfg: StudyConfig) -> str:
    """SQLite file next to the study outputs."""
    path = cfg.out_path.resolve() / "study.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 2) -> optuna.storages.BaseStorage:
    """Storage from a URL: ``sqlite:///``, ``postgresql://``, ``mysql://`` (RDB, with heartbeats
    so a killed worker's trial is retried elsewhere) or a journal file path (``*.log``, or
    ``journal:PATH``) for many processes on one machine or a shared filesystem.

    Heartbeat interval and grace period (seconds) default to ``$SEARCHPRUNE_HEARTBEAT_INTERVAL``
    (60) and ``$SEARCHPRUNE_HEARTBEAT_GRACE`` (180); the variables reach worker processes too.
    A PostgreSQL or MySQL server gets ``$SEARCHPRUNE_CONNECT_TIMEOUT`` seconds (10; psycopg's floor
    is 2) to answer each connection unless the URL sets ``connect_timeout`` itself, so a host that
    accepts TCP but never answers fails within about that time instead of hanging.

    Raises:
        ConfigError: not a URL, a missing database driver, a server that does not answer in time, a
            corrupt journal file, or a storage that cannot be opened or written (one line naming the
            path or host:port, password masked).
    """
    default_interval, default_grace = heartbeat_settings()
    heartbeat_interval = default_interval if heartbeat_interval is None else heartbeat_interval
    grace_period = default_grace if grace_period is None else grace_period
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        try:
            return _journal(url.removeprefix("journal:"))
        except OSError as e:
            raise storage_error(url, e) from None
    if "://" not in url:
        raise ConfigError(
            f"storage {url!r} is not a URL; expected sqlite:///PATH, postgresql://..., mysql://... "
            f"or a journal file ending in {', '.join(JOURNAL_SUFFIXES)}"
        )
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
        raise ConfigError(f"storage {_shown(url)} needs a database driver: {e}; "
                          "for PostgreSQL: pip install 'searchprune[postgres]'") from None
    except Exception as e:  # sqlalchemy errors: unreachable or silent server, bad URL, unwritable file
        if "timeout" in str(e).lower() and not url.startswith("sqlite"):
            raise ConfigError(f"storage {_where(url)}: the database server did not answer within {timeout} s "
                              f"({_shown(url)}); check host and port, or raise $SEARCHPRUNE_CONNECT_TIMEOUT") from None
        raise storage_error(url, e) from None


def resolve_storage(name: str | None, storage: str | None, config: str | None) -> tuple[str, str]:
    """(study name, storage URL) from CLI flags: an explicit storage, or the config's default."""
    if config is not None:
        cfg = load_study_config(config)
        return name or cfg.name, storage or cfg.storage or default_storage_url(cfg)
    if name is None:
        raise ConfigError("give --name (with --storage) or --config to say which study")
    if storage is None:
        path = Path("runs") / name / "study.db"
        if not path.exists():
            raise ConfigError(f"no --storage given and the default {str(path)!r} does not exist; "
                              "pass --storage URL or --config FILE")
        storage = f"sqlite:///{path.resolve()}"
    return name, storage
