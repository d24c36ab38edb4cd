"""Optuna storages from a URL, and which study a CLI command addresses."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from ..config import StudyConfig, load_study_config
from ..errors import ConfigError

__all__ = ["JOURNAL_SUFFIXES", "default_storage_url", "make_storage", "resolve_storage", "mask_url"]

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")

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

    Args:
        create: make a missing SQLite or journal file (and its directory); False (commands that
            read an existing study) refuses a missing file instead of creating an empty database.

    Raises:
        ConfigError: not a URL, a missing file (``create=False``), a missing database driver, or a
            storage that cannot be opened. Messages show the URL with its password masked.
    """
    if heartbeat_interval is None:
        heartbeat_interval = int(os.environ.get("SEARCHPRUNE_HEARTBEAT_INTERVAL", 60))
    if grace_period is None:
        grace_period = int(os.environ.get("SEARCHPRUNE_HEARTBEAT_GRACE", 180))
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        path = url.removeprefix("journal:")
        _need_file(Path(path), url, create)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if "://" not in url:
        raise ConfigError(
            f"storage {mask_url(url)!r} is not a URL; expected sqlite:///PATH, postgresql://..., mysql://... "
            f"or a journal file ending in {', '.join(JOURNAL_SUFFIXES)}"
        )
    if url.startswith("sqlite:///"):
        _need_file(Path(url.removeprefix("sqlite:///")), url, create)
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words, and stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            )
    except (ImportError, ModuleNotFoundError) as e:
        raise ConfigError(f"storage {mask_url(url)!r} needs a database driver: {e}; "
                          "for PostgreSQL: pip install 'searchprune[postgres]'") from None
    except Exception as e:  # sqlalchemy errors: unreachable server, bad URL
        reason = _mask_text(f"{type(e).__name__}: {e}", url).splitlines()[0]
        raise ConfigError(f"could not open storage {mask_url(url)!r}: {reason}") from None


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
