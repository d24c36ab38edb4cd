#!/usr/bin/env bash
# Sets up the same environment with the dev extra and runs the whole test suite.
# Slow tests (real Fashion-MNIST, PostgreSQL, Chromium) run too; they skip with a reason when
# their service cannot be installed. Extra arguments go to pytest (e.g. -m "not slow").
source "$(dirname "$0")/_env.sh"
setup_env "dev"
# independent attack implementations for the AutoAttack cross-checks; --no-deps: a plain install pulls a CUDA torch
python -m pip install -q --no-deps torchattacks==3.5.1 || echo "[test] torchattacks unavailable: its cross-checks will skip"
ensure_fmnist || echo "[test] Fashion-MNIST unavailable: its tests will skip"
command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
  || apt_install postgresql || echo "[test] PostgreSQL unavailable: its tests will skip"
command -v chromium >/dev/null || apt_install chromium || echo "[test] Chromium unavailable: its test will skip"

echo "[test] ruff, mypy and the import contracts (pyproject.toml [tool.importlinter])"
ruff check .
mypy searchprune
mypy scripts/*.py  # the benchmark and reproduction scripts (and scripts/_repro through them)
lint-imports

set +e
python -m pytest -q -ra "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "[test] pytest collected no tests"; exit 0; fi
exit "$rc"
