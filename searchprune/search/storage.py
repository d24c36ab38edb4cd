"""Optuna storages from a URL, and which study a CLI command addresses."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from ..config import StudyConfig, load_study_config
from ..errors import ConfigError

__all__ = ["JOURNAL_SUFFIXES", "default_storage_url", "make_storage", "resolve_storage"]

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


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

    Raises:
        ConfigError: not a URL, a missing database driver, or a storage that cannot be opened.
    """
    if heartbeat_interval is None:
        heartbeat_interval = int(os.environ.get("SEARCHPRUNE_HEARTBEAT_INTERVAL", 60))
    if grace_period is None:
        grace_period = int(os.environ.get("SEARCHPRUNE_HEARTBEAT_GRACE", 180))
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        path = url.removeprefix("journal:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if "://" not in url:
        raise ConfigError(
            f"storage {url!r} is not a URL; expected sqlite:///PATH, postgresql://..., mysql://... "
            f"or a journal file ending in {', '.join(JOURNAL_SUFFIXES)}"
        )
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words, and stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            )
    except (ImportError, ModuleNotFoundError) as e:
        raise ConfigError(f"storage {url!r} needs a database driver: {e}; "
                          "for PostgreSQL: pip install 'searchprune[postgres]'") from None
    except Exception as e:  # sqlalchemy errors: unreachable server, bad URL
        raise ConfigError(f"could not open storage {url!r}: {type(e).__name__}: {e}") from None


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
