"""One cache for what is expensive to compute on a base model and the same for many trials.

A study's trials all start from one dense base model and score it on the same batches, so the
statistics they compute before the pruning cut (GAP's summed adversarial gradients, Hessian and
Taylor scores, MRS sensitivities), the transfer examples crafted on the dense model, and whole
identical prune steps are the same from trial to trial. :class:`StatCache` computes each once:

* an entry's key hashes everything its value depends on: the model's state (every tensor of its
  ``state_dict``: a different base checkpoint misses), the data (:meth:`StatCache.data_digest`:
  the dataset's tensors and the loader's batching, shuffling and subset), and the options that
  change the result (the method's options, granularity, layers, threat model);
* values are dicts/lists of tensors and plain numbers, held in memory (a small LRU) and, with a
  directory, on disk as ``<kind>-<hash>.pt`` (atomic writes: parallel workers may race);
* :meth:`StatCache.compute` runs the computation under a seed derived from the key inside
  ``torch.random.fork_rng``, so the value is a function of the key alone and a hit and a miss leave
  the caller's random stream in the same state;
* ``hits`` and ``misses`` count per kind (what the tests and the study log read).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["StatCache", "as_cache", "cached_unit_scores"]

T = TypeVar("T")
_VERSION = 1


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(str((t.dtype, tuple(t.shape))).encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _jsonable(parts: Mapping[str, Any]) -> str:
    return json.dumps(parts, sort_keys=True, default=repr)


class StatCache:
    """Keyed results of expensive computations, in memory and (optionally) on disk.

    Args:
        directory: where entries are stored as files; None keeps them in memory only.
        memory_items: entries kept in memory per kind (least recently used dropped first), so whole
            prune steps do not push the scores or transfer examples out.
    """

    def __init__(self, directory: str | Path | None = None, *, memory_items: int = 16) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.memory_items = int(memory_items)
        self.hits: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()
        self._memory: dict[str, OrderedDict[str, Any]] = {}
        self._data_digests: dict[int, tuple[object, str]] = {}  # id(dataset) -> (the dataset, its digest)

    # -- keys ------------------------------------------------------------------------------------

    @staticmethod
    def key(kind: str, parts: Mapping[str, Any]) -> str:
        """sha256 of the kind and the JSON form of ``parts`` (keys sorted)."""
        return hashlib.sha256(f"v{_VERSION}:{kind}:{_jsonable(parts)}".encode()).hexdigest()

    @staticmethod
    def model_digest(model: nn.Module) -> str:
        """Hash of every tensor of the model's ``state_dict`` (names, dtypes, shapes, bytes)."""
        h = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            _hash_tensor(h, t)
        return h.hexdigest()

    def data_digest(self, loader: Any) -> str:
        """Hash of the data a loader yields.

        A :class:`searchprune.data.BatchLoader` is hashed by its dataset's tensors (once per dataset
        object) and its batch size, shuffle, seed, epoch, subset size and ``drop_last``; any other
        iterable of ``(x, y)`` batches is hashed batch by batch.
        """
        h = hashlib.sha256()
        ds = getattr(loader, "dataset", None)
        images, labels = getattr(ds, "images", None), getattr(ds, "labels", None)
        if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
            memo = self._data_digests.get(id(ds))
            if memo is None or memo[0] is not ds:
                dh = hashlib.sha256()
                _hash_tensor(dh, images)
                _hash_tensor(dh, labels)
                memo = (ds, dh.hexdigest())
                self._data_digests[id(ds)] = memo
            h.update(memo[1].encode())
            h.update(_jsonable({k: getattr(loader, k, None) for k in (
                "batch_size", "shuffle", "seed", "epoch", "num_images", "drop_last")}).encode())
            return h.hexdigest()
        for x, y in loader:
            _hash_tensor(h, x)
            _hash_tensor(h, y)
        return h.hexdigest()

    # -- storage ---------------------------------------------------------------------------------

    def _path(self, kind: str, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{kind}-{key[:24]}.pt"

    def _remember(self, kind: str, key: str, value: Any) -> None:
        memory = self._memory.setdefault(kind, OrderedDict())
        memory[key] = value
        memory.move_to_end(key)
        while len(memory) > self.memory_items:
            memory.popitem(last=False)

    def _read(self, path: Path, key: str) -> Any:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # missing, partly written by a killed worker, or from another version
            return None
        return data["value"] if isinstance(data, dict) and data.get("key") == key else None

    def _write(self, path: Path, key: str, value: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"key": key, "value": value}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def compute(self, kind: str, parts: Mapping[str, Any], fn: Callable[[], T], *, disk: bool = True,
                seeded: bool = True) -> T:
        """The value for ``(kind, parts)``: from memory, from disk, or ``fn()`` (then stored).

        Args:
            kind: what is cached ("scores", "mrs", "transfer", "prune_step", ...); counts are per kind.
            parts: everything the value depends on (JSON-able; digests for models and data).
            fn: computes the value (tensors, numbers, strings in dicts/lists/tuples when ``disk``).
            disk: also store on disk (when the cache has a directory); False keeps it in memory only
                (values that do not pickle safely, e.g. whole models).
            seeded: run ``fn`` under a seed derived from the key, with the caller's RNG state restored.

        Returns:
            A deep copy of the cached value (callers may change it freely).
        """
        key = self.key(kind, parts)
        memory: Mapping[str, Any] = self._memory.get(kind, {})
        if key in memory:
            self.hits[kind] += 1
            self._memory[kind].move_to_end(key)
            return copy.deepcopy(memory[key])
        path = self._path(kind, key) if disk else None
        if path is not None and path.exists():
            value = self._read(path, key)
            if value is not None:
                self.hits[kind] += 1
                self._remember(kind, key, value)
                return copy.deepcopy(value)
        self.misses[kind] += 1
        if seeded:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(key[:15], 16))
                value = fn()
        else:
            value = fn()
        self._remember(kind, key, value)
        if path is not None:
            self._write(path, key, value)
        return copy.deepcopy(value)


def as_cache(cache: StatCache | str | Path | None) -> StatCache | None:
    """A :class:`StatCache` for ``prune_(cache=...)``: itself, one on a directory, or None."""
    if cache is None or isinstance(cache, StatCache):
        return cache
    return StatCache(cache)


def cached_unit_scores(method: Any, ctx: Any, granularity: str) -> dict[str, torch.Tensor]:
    """``method.unit_scores(ctx, granularity)`` through ``ctx.cache`` for methods with ``cache_scores``.

    The key holds the model's state, the scoring data, the layers, the method, its options, the
    granularity and the threat model. What scoring leaves behind is cached with the scores and restored
    on a hit: the model's buffers (GAP's train-mode forwards update BatchNorm statistics) and the
    method's diagnostics.
    """
    cache: StatCache | None = getattr(ctx, "cache", None)
    if cache is None or not getattr(method, "cache_scores", False):
        return dict(method.unit_scores(ctx, granularity))
    threat = getattr(ctx, "threat", None)
    parts = {
        "model": cache.model_digest(ctx.model),
        "data": cache.data_digest(ctx.loader) if getattr(ctx, "loader", None) is not None else None,
        "layers": sorted(ctx.layers), "method": method.name, "options": dict(method.options),
        "granularity": granularity, "threat": None if threat is None else repr(threat),
    }

    def compute() -> dict[str, Any]:
        scores = method.unit_scores(ctx, granularity)
        return {"scores": {n: s.detach().cpu() for n, s in scores.items()},
                "buffers": {n: b.detach().cpu().clone() for n, b in ctx.model.named_buffers()},
                "extra": dict(getattr(method, "_extra", {}))}

    value = cache.compute("scores", parts, compute)
    _load_buffers(ctx.model, value["buffers"].items())
    method._extra = value["extra"]
    return {n: s.to(ctx.device) for n, s in value["scores"].items()}


def _load_buffers(model: nn.Module, buffers: Iterable[tuple[str, torch.Tensor]]) -> None:
    own = dict(model.named_buffers())
    with torch.no_grad():
        for name, t in buffers:
            if name in own:
                own[name].copy_(t)
