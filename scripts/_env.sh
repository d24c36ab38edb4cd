# Sourced by quickstart.sh and test.sh: one virtual environment with torch and the project.
#   SEARCHPRUNE_TORCH_SPEC  torch requirement (default torch==2.13.0, a CPU wheel here);
#                           CUDA users: e.g. SEARCHPRUNE_TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
#   SEARCHPRUNE_VENV        virtual environment directory (default .venv)
#   PYTHON                  interpreter that creates it (default python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${SEARCHPRUNE_VENV:-.venv}"
TORCH_SPEC="${SEARCHPRUNE_TORCH_SPEC:-torch==2.13.0}"

setup_env() {  # $1: pip extras, e.g. "dev"
  # quickstart.sh and test.sh started at once in one checkout would both create $VENV: take turns
  if command -v flock >/dev/null; then
    exec 9>"${TMPDIR:-/tmp}/searchprune-setup-$(printf %s "$ROOT/$VENV" | cksum | cut -d' ' -f1).lock"
    flock 9
  fi
  _setup_env_locked "${1:-}"
  if command -v flock >/dev/null; then exec 9>&-; fi
}

_setup_env_locked() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  if ! python -c "import torch" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC (first, so no dependency pulls another torch build)"
    # shellcheck disable=SC2086
    python -m pip install -q $TORCH_SPEC
  fi
  local target="."
  [ -n "${1:-}" ] && target=".[$1]"
  echo "[setup] installing searchprune ($target)"
  python -m pip install -q -e "$target"
}

have_fmnist() {
  for d in "${SEARCHPRUNE_DATA:-/nonexistent}" /usr/share/datasets/fashion-mnist; do
    [ -f "$d/train-images-idx3-ubyte.gz" ] || [ -f "$d/train-images-idx3-ubyte" ] && return 0
  done
  return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

apt_install() {  # best effort: Debian packages when apt is usable
  command -v apt-get >/dev/null || return 1
  as_root true 2>/dev/null || return 1
  if [ -z "${_APT_UPDATED:-}" ]; then as_root apt-get update -qq >/dev/null 2>&1 || true; _APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_fmnist() {
  have_fmnist && return 0
  echo "[setup] Fashion-MNIST not found; installing Debian's dataset-fashion-mnist"
  if apt_install dataset-fashion-mnist && have_fmnist; then return 0; fi
  cat >&2 <<'MSG'
Fashion-MNIST is missing and could not be installed with apt. Get it one of these ways:
  sudo apt-get install -y dataset-fashion-mnist          (Debian/Ubuntu: /usr/share/datasets/fashion-mnist)
  export SEARCHPRUNE_DATA=/path/with/train-images-idx3-ubyte.gz ...   (the four IDX files)
  set data.download: true in the study YAML on a machine with internet access
MSG
  return 1
}
