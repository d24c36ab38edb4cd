"""Where dataset files are looked for and downloaded to, and the error that lists every path tried.

Files are looked for in ``data_dir``, then ``$SEARCHPRUNE_DATA``, then system locations (Debian's
``/usr/share/datasets``, see :mod:`.idx`), then the torchvision cache layout under
``~/.cache/searchprune`` and ``./data``. Nothing is downloaded unless ``download=True``.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError


def _user_roots(data_dir: str | None) -> list[Path]:
    roots = []
    if data_dir:
        roots.append(Path(data_dir).expanduser())
    env = os.environ.get("SEARCHPRUNE_DATA")
    if env:
        roots.append(Path(env).expanduser())
    return roots


def _cache_roots() -> list[Path]:
    return [Path("~/.cache/searchprune").expanduser(), Path.cwd() / "data"]


def _download_root(data_dir: str | None) -> Path:
    """Where downloads go: the first root searched (data_dir, $SEARCHPRUNE_DATA, then the cache)."""
    roots = _user_roots(data_dir)
    return roots[0] if roots else _cache_roots()[0]


def _dedupe(paths: list[Path]) -> list[Path]:
    seen: set[str] = set()
    out = []
    for p in paths:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _missing_error(name: str, wanted: Sequence[str], tried: Sequence[Path], how: str) -> ConfigError:
    lines = "\n".join(f"  {p}" for p in tried)
    return ConfigError(
        f"dataset {name!r} not found: looked for {', '.join(wanted)} in:\n{lines}\n"
        f"To get it: {how}\nor point data.data_dir (or $SEARCHPRUNE_DATA) at a folder holding the files."
    )


def _fetch(urls: Sequence[str], dest: Path) -> None:
    """Downloads the first URL of ``urls`` that answers to ``dest`` (atomically, via a .part file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
                shutil.copyfileobj(resp, f)
            tmp.replace(dest)
            return
        except OSError as e:  # URLError and HTTPError are OSErrors
            errors.append(f"{url}: {e}")
    tmp.unlink(missing_ok=True)
    raise ConfigError(f"could not download {dest.name} to {dest.parent}:\n  " + "\n  ".join(errors))


def _file_key(path: Path) -> tuple[str, int, int]:
    """(path, size, mtime): the cache key of a parsed file, so a rewritten file is read again."""
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns
