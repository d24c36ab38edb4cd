"""Rows, the resumable results file, aggregation over seeds, tables and unit conversions.

A *row* is one ``run_trial`` call: a base model, hand-written :class:`TrialParams` and a seed. Its
*cell* is the row without the seed: the seeds of one cell are aggregated into mean and spread. A
row's *key* names it in ``results.jsonl``; its *fingerprint* hashes everything that decides its
numbers (params, base recipe, data sizes, threat model, evaluation), so a rerun skips a finished
row only when it would compute the same thing, and refuses a results file made with other settings.

No torch here (only the torch-free config package), so this bookkeeping is tested in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchprune.config import DataConfig, EvalConfig, ModelConfig, ThreatModel, TrainConfig, TrialParams, to_dict
from searchprune.errors import ConfigError

__all__ = [
    "CHANCE_MARGIN", "at_chance", "record_classes", "row_at_chance", "Base", "Row", "Setup", "Cell", "Reference",
    "Target", "row_fingerprint", "load_results", "append_result", "pending_rows", "aggregate", "collapsed_text",
    "format_mean_std", "markdown_table", "pixel_eps", "lookup_reference", "dominates",
]


CHANCE_MARGIN = 0.02  # clean accuracy within this of 1 / classes: the model predicts (almost) one class
# Rows recorded before records kept their class count all ran on Fashion-MNIST (every plan's dataset).
_UNRECORDED_CLASSES = 10


def at_chance(clean_acc: float, num_classes: int) -> bool:
    """A collapsed model: clean accuracy at most :data:`CHANCE_MARGIN` above ``1 / num_classes``
    (it predicts one class, or nearly, for every image): its numbers say nothing about its method."""
    return clean_acc <= 1 / num_classes + CHANCE_MARGIN


def record_classes(record: Mapping[str, Any]) -> int:
    """The class count a finished row was measured with."""
    return int(record.get("num_classes") or _UNRECORDED_CLASSES)


def row_at_chance(record: Mapping[str, Any]) -> bool:
    """A finished row whose model ended at chance (:func:`at_chance` with the row's class count)."""
    clean = record["metrics"].get("clean_acc")
    return clean is not None and at_chance(float(clean), record_classes(record))


# ---------------------------------------------------------------------------------------------
# What a paper's run is made of
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """A dense base model: trained once with ``train`` on ``train_size`` images, then cached.

    Attributes:
        name: short name used in row keys and file names ("standard", "pgd", "trades").
        model: the architecture (``ModelConfig``; its ``checkpoint``/``train`` fields are unused).
        train: the training recipe.
        train_size: training images (None: all of them).
        note: how this base differs from the paper's, said in the tables.
    """

    name: str
    model: ModelConfig
    train: TrainConfig
    train_size: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Setup:
    """What every row of one paper shares: the data sizes, the threat model and the evaluation.

    ``data.val_size`` is 0: nothing is selected here, so every number is measured on the held-out
    test images (``data.test_size`` of them) and fine-tuning sees ``data.train_size`` images.
    """

    data: DataConfig
    threat: ThreatModel
    eval: EvalConfig
    bases: Mapping[str, Base]


@dataclass(frozen=True)
class Row:
    """One ``run_trial`` call.

    Attributes:
        paper: "000" ... "004".
        table: which table or figure of the paper the row belongs to ("table3", "sweep", ...).
        base: a name in the setup's ``bases``.
        method: what was done to the model ("dense", "L1-filter 0.8", "INT8 PTQ", "GAP global").
        finetune: the fine-tuning column ("none", "SFT", "AFT", "TRADES", ...).
        seed: the trial seed (pruning randomness, calibration and fine-tuning order).
        params: the trial.
        x: the plot's abscissa (sparsity, compression, bits, MAC ratio) where the row has one.
        control: the dense model with the compressed rows' fine-tuning (``dense_aft``).
        series: the plot's line this row belongs to ("" : not plotted).
    """

    paper: str
    table: str
    base: str
    method: str
    finetune: str
    seed: int
    params: TrialParams
    x: float | None = None
    control: bool = False
    series: str = ""

    @property
    def cell(self) -> tuple[str, str, str, str]:
        """The row without its seed: what the seeds are averaged over."""
        return (self.table, self.base, self.method, self.finetune)

    @property
    def key(self) -> str:
        return "/".join((self.paper, *self.cell, f"seed{self.seed}"))


def row_fingerprint(row: Row, setup: Setup) -> str:
    """A short hash of everything that decides the row's numbers (not its labels)."""
    base = setup.bases[row.base]
    payload = {
        "params": to_dict(row.params), "base": {"model": to_dict(base.model), "train": to_dict(base.train),
                                                "train_size": base.train_size},
        "data": to_dict(setup.data), "threat": to_dict(setup.threat), "eval": to_dict(setup.eval),
    }
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The resumable results file: one JSON line per finished row
# ---------------------------------------------------------------------------------------------


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """key -> record of every finished row in ``path`` (a missing file: none). A truncated last
    line (the run was killed while writing it) is ignored; the row runs again."""
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[rec["key"]] = rec
    return out


def append_result(path: Path, record: Mapping[str, Any]) -> None:
    """Appends one record as a JSON line and flushes it to disk (a kill loses at most this row)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(dict(record), sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def pending_rows(rows: Sequence[Row], setup: Setup, done: Mapping[str, Mapping[str, Any]]) -> list[Row]:
    """The rows still to run, in order.

    Raises:
        ConfigError: a finished row of the same key was computed with other settings (another
            ``--quick`` mode, base recipe or data size): mixing them would average unlike numbers.
    """
    todo = []
    for row in rows:
        rec = done.get(row.key)
        if rec is None:
            todo.append(row)
        elif rec.get("fingerprint") != row_fingerprint(row, setup):
            raise ConfigError(f"results: row {row.key!r} was finished with other settings (fingerprint "
                              f"{rec.get('fingerprint')} != {row_fingerprint(row, setup)}); use another --out "
                              "or remove that results.jsonl")
    return todo


# ---------------------------------------------------------------------------------------------
# Aggregation over seeds
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """The seeds of one cell: per metric, the values in seed order."""

    table: str
    base: str
    method: str
    finetune: str
    x: float | None
    control: bool
    values: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    series: str = ""
    collapsed: tuple[int, ...] = ()  # the seeds whose model ended at chance (see :func:`at_chance`)

    @property
    def cell_key(self) -> tuple[str, str, str, str]:
        return (self.table, self.base, self.method, self.finetune)

    @property
    def n(self) -> int:
        return max((len(v) for v in self.values.values()), default=0)

    def mean(self, metric: str) -> float:
        vals = self.values.get(metric, ())
        return statistics.fmean(vals) if vals else math.nan

    def std(self, metric: str) -> float:
        """Sample standard deviation over seeds (nan with one seed)."""
        vals = self.values.get(metric, ())
        return statistics.stdev(vals) if len(vals) >= 2 else math.nan


def aggregate(records: Iterable[Mapping[str, Any]], metrics: Sequence[str]) -> list[Cell]:
    """Groups finished rows by cell (first-seen order) and collects each metric over the seeds.

    A metric that is None for a row (e.g. transfer accuracy when not measured) is left out. The
    seeds whose model ended at chance are listed in :attr:`Cell.collapsed`: they are averaged in
    like the others, so whoever reads the cell must be told.
    """
    order: list[tuple[str, str, str, str]] = []
    info: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    vals: dict[tuple[str, str, str, str], dict[str, list[float]]] = {}
    collapsed: dict[tuple[str, str, str, str], list[int]] = {}
    for rec in sorted(records, key=lambda r: (r.get("index", 0), r["seed"])):
        cell = (rec["table"], rec["base"], rec["method"], rec["finetune"])
        if cell not in vals:
            order.append(cell)
            vals[cell] = {m: [] for m in metrics}
            info[cell] = {"x": rec.get("x"), "control": bool(rec.get("control", False)),
                          "series": rec.get("series", "")}
            collapsed[cell] = []
        if row_at_chance(rec):
            collapsed[cell].append(int(rec["seed"]))
        for m in metrics:
            v = rec["metrics"].get(m)
            if v is not None:
                vals[cell][m].append(float(v))
    return [Cell(*c, x=info[c]["x"], control=info[c]["control"], series=info[c]["series"],
                 values={m: tuple(v) for m, v in vals[c].items() if v}, collapsed=tuple(collapsed[c]))
            for c in order]


def collapsed_text(cell: Cell) -> str:
    """``"seed 0 of 2 at chance"``, ``"seeds 0, 1 of 2 at chance"`` (``""`` when none is)."""
    if not cell.collapsed:
        return ""
    seeds = ", ".join(str(s) for s in cell.collapsed)
    return f"seed{'s' if len(cell.collapsed) > 1 else ''} {seeds} of {cell.n} at chance"


def format_mean_std(cell: Cell, metric: str, *, scale: float = 100.0, digits: int = 2) -> str:
    """``"83.91 ± 0.52"`` (mean ± sample std over seeds), ``"83.91"`` with one seed, ``"-"`` without."""
    m = cell.mean(metric)
    if math.isnan(m):
        return "-"
    s = cell.std(metric)
    if math.isnan(s):
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# The papers' numbers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A paper's number for a cell, in percent, and where it comes from (``methods.md`` section)."""

    clean: float | None
    pgd: float | None
    source: str
    comparable: bool = True  # False: another dataset or model (shown, but no difference is computed)


@dataclass(frozen=True)
class Target:
    """A stated reproduction target and whether the measured cells meet it."""

    claim: str
    met: bool | None  # None: not enough rows finished to decide
    detail: str


def lookup_reference(refs: Mapping[tuple[str, str, str, str], Reference], cell: Cell) -> Reference | None:
    """The paper's number for ``cell``: exact (table, base, method, finetune), else the same cell
    with base ``"*"`` (a number that holds for any base, e.g. a qualitative row)."""
    return refs.get((cell.table, cell.base, cell.method, cell.finetune)) or \
        refs.get((cell.table, "*", cell.method, cell.finetune))


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _pp(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown_table(cells: Sequence[Cell], refs: Mapping[tuple[str, str, str, str], Reference], *,
                   extra: Sequence[tuple[str, str]] = (), show_base: bool = True) -> str:
    """A markdown table: one line per cell, measured (mean ± std over seeds, %) beside the paper.

    Args:
        cells: the aggregated cells, in the order to show them.
        refs: cell -> the paper's number (see :func:`lookup_reference`).
        extra: additional measured columns as (header, metric); fractions are shown as %, except
            ``mac_ratio`` (shown as a fraction of dense).
        show_base: include the base-model column.
    """
    head = (["base"] if show_base else []) + ["model", "fine-tuning", "clean (ours)", "PGD (ours)"]
    head += [h for h, _ in extra] + ["clean (paper)", "PGD (paper)", "Δ clean", "Δ PGD", "MACs", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        ref = lookup_reference(refs, c)
        rc, rp = (ref.clean, ref.pgd) if ref is not None else (None, None)
        same = ref is not None and ref.comparable
        d_clean = None if rc is None or not same or math.isnan(c.mean("clean_acc")) else 100 * c.mean("clean_acc") - rc
        d_pgd = None if rp is None or not same or math.isnan(c.mean("pgd_acc")) else 100 * c.mean("pgd_acc") - rp
        method = f"{c.method} (control)" if c.control else c.method
        if c.collapsed:
            method += f" ({collapsed_text(c)})"
        cols = ([c.base] if show_base else []) + [method, c.finetune, format_mean_std(c, "clean_acc"),
                                                   format_mean_std(c, "pgd_acc")]
        for _, metric in extra:
            if metric == "mac_ratio":
                m = c.mean(metric)
                cols.append("-" if math.isnan(m) else f"{m:.3f}")
            else:
                cols.append(format_mean_std(c, metric))
        mr = c.mean("mac_ratio")
        mark = "" if ref is None or ref.comparable else "*"
        cols += [_pp(rc) + (mark if rc is not None else ""), _pp(rp) + (mark if rp is not None else ""),
                 "-" if d_clean is None else f"{d_clean:+.2f}",
                 "-" if d_pgd is None else f"{d_pgd:+.2f}", "-" if math.isnan(mr) else f"{mr:.0%}", str(c.n)]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Unit conversions
# ---------------------------------------------------------------------------------------------


def pixel_eps(eps_normalized: float, std: Sequence[float]) -> float:
    """An L-inf budget given in normalized units (after ``(x - mean) / std``) on the [0, 1] pixel
    scale: ``eps * std``; with several channels the smallest std (the budget every channel meets).

    GAP's code attacks ShrinkBench-normalized inputs with eps 8/255: on Fashion-MNIST (std 0.3530)
    that is 0.0111 in pixels, not 0.0314.
    """
    if eps_normalized < 0 or not std or min(std) <= 0:
        raise ConfigError(f"pixel_eps: expected eps >= 0 and positive stds, got {eps_normalized}, {list(std)}")
    return eps_normalized * min(std)


def dominates(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """``a`` is at least as good as ``b`` in clean accuracy, PGD accuracy and MACs (lower), and better in one."""
    ge = a["clean_acc"] >= b["clean_acc"] and a["pgd_acc"] >= b["pgd_acc"] and a["macs"] <= b["macs"]
    gt = a["clean_acc"] > b["clean_acc"] or a["pgd_acc"] > b["pgd_acc"] or a["macs"] < b["macs"]
    return ge and gt
