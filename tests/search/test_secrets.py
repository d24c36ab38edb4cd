"""Database passwords never reach the terminal, an error message or the study's stored attributes."""

from __future__ import annotations

import json

import optuna
import pytest
from _pg import PostgresUnavailable, free_port, postgres_server
from _tiny import tiny_config, write_yaml

import searchprune.search.study as study_module
from searchprune.cli import main
from searchprune.errors import ConfigError
from searchprune.search import make_storage, mask_url

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql+psycopg://alice:s3cr3t@db.example:5432/studies", "postgresql+psycopg://alice:***@db.example:5432/studies"),
    ("mysql://bob:p@ss:w0rd@10.0.0.1/x", "mysql://bob:***@10.0.0.1/x"),  # '@' and ':' inside the password
    ("postgresql://carol@host/db", "postgresql://carol@host/db"),  # no password: unchanged
    ("postgresql://carol:@host/db", "postgresql://carol:@host/db"),
    ("sqlite:////tmp/a:b@c/study.db", "sqlite:////tmp/a:b@c/study.db"),  # a path, not credentials
    ("runs/x/journal.log", "runs/x/journal.log"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_an_unreachable_database_error_masks_the_password():
    url = f"postgresql+psycopg://alice:{SECRET}@127.0.0.1:{free_port()}/db"  # nothing listens there
    with pytest.raises(ConfigError) as e:
        make_storage(url)
    assert SECRET not in str(e.value) and "alice:***@127.0.0.1" in str(e.value)
    assert "\n" not in str(e.value)


def _all_user_attrs(study: optuna.Study) -> str:
    return json.dumps([study.user_attrs, *(t.user_attrs for t in study.get_trials(deepcopy=False))], default=str)


def test_create_prints_and_stores_no_password(tmp_path, monkeypatch, capsys):
    """`study create` against a password-protected database (an in-memory storage stands in for the server)."""
    stores: dict[str, optuna.storages.BaseStorage] = {}
    monkeypatch.setattr(study_module, "make_storage",
                        lambda url, **kw: stores.setdefault(url, optuna.storages.InMemoryStorage()))
    url = f"postgresql+psycopg://alice:{SECRET}@db.example/studies"
    cfg = write_yaml(tmp_path / "s.yaml", tiny_config(tmp_path, tmp_path / "base.pt", name="pw"))
    assert main(["study", "create", "--config", str(cfg), "--storage", url]) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and "alice:***@db.example" in out.out
    study = optuna.load_study(study_name="pw", storage=stores[url])
    assert study.user_attrs["storage_url"] == "postgresql+psycopg://alice:***@db.example/studies"
    assert SECRET not in _all_user_attrs(study)
    # a second create is refused: the message names the storage, masked
    assert main(["study", "create", "--config", str(cfg), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and SECRET not in err


@pytest.mark.slow
def test_a_real_postgresql_study_keeps_the_password_out(tmp_path, capsys):
    """A throw-away PostgreSQL (trust authentication accepts any password, so one can be given)."""
    try:
        server = postgres_server()
        base_url = server.__enter__()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    try:
        url = base_url.replace("postgres@", f"postgres:{SECRET}@")
        cfg = write_yaml(tmp_path / "s.yaml", tiny_config(tmp_path, tmp_path / "base.pt", name="pg"))
        assert main(["study", "create", "--config", str(cfg), "--storage", url]) == 0
        assert main(["study", "show", "--name", "nope", "--storage", url]) == 2
        out = capsys.readouterr()
        assert SECRET not in out.out + out.err and "no study named 'nope'" in out.err
        study = optuna.load_study(study_name="pg", storage=url)
        assert SECRET not in _all_user_attrs(study) and ":***@" in study.user_attrs["storage_url"]
    finally:
        server.__exit__(None, None, None)
