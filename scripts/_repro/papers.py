"""The rows of each seed paper, full and ``--quick``, with the papers' numbers and the targets.

Every paper is a :class:`Plan`: a :class:`~_repro.core.Setup` (data sizes, threat model,
evaluation, base models), its rows (one ``run_trial`` each), the papers' numbers per cell
(``shared/reference/methods.md``), the notes that say how this run differs from the paper (and how
``--quick`` differs from the full run), and a function deciding the targets of the issue.

Seeds vary the pruning randomness, calibration batches and fine-tuning order; each base model is
trained once (seed 0). Every number is measured on held-out test images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from searchprune.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    PruneConfig,
    QuantConfig,
    ThreatModel,
    TrainConfig,
    TrainRunConfig,
    TrialParams,
    build,
    load_yaml,
)
from searchprune.errors import ConfigError

from .core import Base, Cell, Reference, Row, Setup, Target, pixel_eps

__all__ = ["Plan", "PAPERS", "make_plan", "list_papers", "TableSpec"]

ROOT = Path(__file__).resolve().parents[2]
FMNIST_STD = 0.3530  # Fashion-MNIST pixel std (train set), ShrinkBench's normalization

CellKey = tuple[str, str, str, str]


@dataclass(frozen=True)
class TableSpec:
    """One markdown table of a paper's report: the cells of ``table`` (or of several tables)."""

    table: str
    caption: str
    extra: tuple[tuple[str, str], ...] = ()  # (header, metric) measured columns beside clean / PGD
    plot_with: tuple[str, ...] = ()  # other tables whose cells of the same series join this table's plot
    xlabel: str = ""  # the plot's x axis ("" : no plot for this table)
    xlog: bool = False


@dataclass(frozen=True)
class Plan:
    """A paper's run: setup, rows, references, tables, notes and targets."""

    paper: str
    title: str
    setup: Setup
    rows: tuple[Row, ...]
    refs: Mapping[CellKey, Reference]
    tables: tuple[TableSpec, ...]
    notes: tuple[str, ...]
    targets: Callable[[Sequence[Cell]], list[Target]] = field(default=lambda cells: [])
    # row key -> MAC ratio the row's sparsity must meet (resolved on the base model by the runner)
    match_macs: Mapping[str, float] = field(default_factory=dict)


def _train_run(name: str) -> TrainRunConfig:
    return build(TrainRunConfig, load_yaml(ROOT / "studies" / "train" / name))


def _find(cells: Sequence[Cell], table: str, base: str, method: str, finetune: str) -> Cell | None:
    for c in cells:
        if c.cell_key == (table, base, method, finetune):
            return c
    return None


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.2f}"


# ---------------------------------------------------------------------------------------------
# 001: Adver-Fine (Thorsteinsson et al.)
# ---------------------------------------------------------------------------------------------

_R001 = "methods.md E.6"
REFS_001: dict[CellKey, Reference] = {
    ("table3", "standard", "dense", "none"): Reference(90.49, 4.26, "Table 2"),
    ("table3", "standard", "dense", "AFT"): Reference(85.37, 77.53, "Table 2"),
    ("table3", "pgd", "dense", "none"): Reference(87.87, 82.51, "Table 2"),
    ("table3", "standard", "L1-filter 0.8", "none"): Reference(33.21, 0.33, "Table 3"),
    ("table3", "standard", "L1-filter 0.8", "SFT"): Reference(88.94, 0.28, "Table 3"),
    ("table3", "standard", "L1-filter 0.8", "AFT"): Reference(83.91, 76.74, "Table 3"),
    ("table3", "standard", "INT8", "none"): Reference(90.40, 11.72, "Table 3"),
    ("table3", "standard", "INT8", "SFT"): Reference(90.07, 7.00, "Table 3"),
    ("table3", "standard", "INT8", "AFT"): Reference(84.93, 79.43, "Table 3"),
    ("table3", "pgd", "L1-filter 0.8", "none"): Reference(16.68, 14.40, "Table 3"),
    ("table3", "pgd", "L1-filter 0.8", "SFT"): Reference(87.71, 16.26, "Table 3"),
    ("table3", "pgd", "L1-filter 0.8", "AFT"): Reference(84.53, 78.84, "Table 3"),
    ("table3", "pgd", "INT8", "none"): Reference(87.90, 82.80, "Table 3"),
    ("table3", "pgd", "INT8", "SFT"): Reference(89.54, 25.66, "Table 3"),
    ("table3", "pgd", "INT8", "AFT"): Reference(87.51, 82.65, "Table 3"),
}
# Figure 1 (read off the plot, +-0.5 pp): sparsity -> (std clean, rob clean, std PGD, rob PGD)
FIG1_001 = {0.1: (85.3, 87.3, 78.7, 81.6), 0.3: (84.8, 86.3, 77.7, 80.0), 0.5: (84.9, 86.6, 77.2, 81.1),
            0.6: (84.9, 86.5, 73.5, 80.6), 0.7: (84.1, 85.0, 77.1, 79.5), 0.8: (83.9, 84.6, 76.8, 78.9),
            0.9: (80.7, 81.5, 72.7, 74.6)}
for _s, (_sc, _rc, _sp, _rp) in FIG1_001.items():
    REFS_001[("sweep", "standard", f"L1-filter {_s:g}", "AFT")] = Reference(_sc, _sp, "Figure 1")
    REFS_001[("sweep", "pgd", f"L1-filter {_s:g}", "AFT")] = Reference(_rc, _rp, "Figure 1")
# PTQ + AFT sweep (E.6): int16/int8 about 85.5 / 79 (standard base), 87.5 / 82 (robust); int2 10 / 10
for _b, (_c, _p) in {"standard": (85.5, 79.0), "pgd": (87.5, 82.0)}.items():
    REFS_001[("ptq", _b, "PTQ 16-bit", "AFT")] = Reference(_c, _p, "E.6 PTQ sweep")
    REFS_001[("ptq", _b, "PTQ 2-bit", "AFT")] = Reference(10.0, 10.0, "E.6 PTQ sweep")


def plan_001(quick: bool, seeds: Sequence[int]) -> Plan:
    std_run = _train_run("cnn8_fmnist_standard.yaml")
    rob_run = _train_run("cnn8_fmnist_pgd_short.yaml")
    std_train, rob_train = std_run.train, rob_run.train
    std_size = rob_size = None
    if quick:
        std_train = dataclasses.replace(std_train, epochs=4.0)
        std_size = 20000
        rob_train = dataclasses.replace(rob_train, epochs=1.0)
        rob_size = 5000
    else:
        rob_train = dataclasses.replace(rob_train, epochs=4.0)
    bases = {
        "standard": Base("standard", std_run.model, std_train, std_size,
                         note="the paper's recipe (20 epochs, SGD lr 0.1 -> 0.01 after 5, batch 64, all 60k images)"
                         if not quick else "the paper's recipe cut to 4 epochs on 20,000 images"),
        "pgd": Base("pgd", rob_run.model, rob_train, rob_size,
                    note=("PGD-20 adversarial training against the threat model, "
                          f"{rob_train.epochs:g} epochs on {rob_size or 60000} images (paper: 20 epochs; "
                          "SGD momentum 0.9, cosine, He init so the short budget converges)")),
    }
    threat = ThreatModel(norm="linf", eps=0.05, alpha=0.005, steps=20, random_start=False, clamp=False)
    data = DataConfig(dataset="fashion-mnist", val_size=0, train_size=2000 if quick else None,
                      test_size=500 if quick else None, batch_size=64, eval_batch_size=500)
    setup = Setup(data=data, threat=threat, bases=bases,
                  eval=EvalConfig(n_eval=None, attacks=("pgd",), transfer=False, checks=False, stagewise=False))
    epochs = 1.0 if quick else 3.0

    # Appendix A.1: after pruning SGD lr 0.1 (as base training); after PTQ SGD momentum 0.9, lr 0.01.
    def ft(recipe: str, after: str, seed: int) -> TrainConfig | None:
        if recipe == "none":
            return None
        lr, mom = (0.1, 0.0) if after == "prune" else (0.01, 0.9)
        return TrainConfig(recipe="pgd" if recipe == "AFT" else "standard", epochs=epochs, lr=lr, momentum=mom,
                           weight_decay=0.0, batch_size=64, seed=seed)

    def l1(s: float) -> PruneConfig:
        return PruneConfig(method="l1_filter", granularity="channel", allocation="uniform", sparsity=s)

    def quant(bits: int, recipe: str) -> QuantConfig:
        # Adver-Fine fine-tunes after PTQ with the quantizers in place (QAT-style), see E.5
        return QuantConfig(mode="ptq" if recipe == "none" else "qat", weight_bits=bits, act_bits=bits)

    dense = PruneConfig(sparsity=0.0)
    rows: list[Row] = []
    for seed in seeds:
        for b in bases:
            rows.append(Row("001", "table3", b, "dense", "none", seed, TrialParams(prune=dense, seed=seed)))
            rows.append(Row("001", "table3", b, "dense", "AFT", seed,
                            TrialParams(prune=dense, finetune=ft("AFT", "prune", seed), seed=seed), control=True))
            for r in ("none", "SFT", "AFT"):
                rows.append(Row("001", "table3", b, "L1-filter 0.8", r, seed,
                                TrialParams(prune=l1(0.8), finetune=ft(r, "prune", seed), seed=seed), x=0.8,
                                series=f"{b} base, L1-filter + AFT" if r == "AFT" else ""))
            for r in ("none", "SFT", "AFT"):
                rows.append(Row("001", "table3", b, "INT8", r, seed,
                                TrialParams(prune=dense, quant=quant(8, r), finetune=ft(r, "quant", seed), seed=seed),
                                x=8, series=f"{b} base, PTQ + AFT" if r == "AFT" else ""))
    sweep_seeds = seeds[:1] if quick else seeds
    sweep = (0.3, 0.6, 0.9) if quick else (0.1, 0.3, 0.5, 0.6, 0.7, 0.9)  # 0.8 is Table 3's cell
    bits = (16, 4, 2)  # 8 is Table 3's cell
    for seed in sweep_seeds:
        for b in bases:
            for s in sweep:
                rows.append(Row("001", "sweep", b, f"L1-filter {s:g}", "AFT", seed,
                                TrialParams(prune=l1(s), finetune=ft("AFT", "prune", seed), seed=seed), x=s,
                                series=f"{b} base, L1-filter + AFT"))
            for nb in bits:
                rows.append(Row("001", "ptq", b, f"PTQ {nb}-bit", "AFT", seed,
                                TrialParams(prune=dense, quant=quant(nb, "AFT"), finetune=ft("AFT", "quant", seed),
                                            seed=seed), x=nb, series=f"{b} base, PTQ + AFT"))
    n_ft = data.train_size or 60000
    notes = [
        "Threat model: PGD-20, eps 0.05 on [0,1] (= the paper's 0.1 on [-1,1]), step 0.005, no random start, "
        "**no clamp of x+delta to [0,1]** (the paper's convention).",
        f"Fine-tuning: {epochs:g} epoch(s) on {n_ft} training images; after pruning SGD lr 0.1 (no momentum), "
        "after PTQ SGD lr 0.01 momentum 0.9 with the quantizers in place; batch 64. AFT = PGD-20 against the threat "
        "model. The control `dense` + AFT gets the pruned rows' recipe (lr 0.1), so every AFT row has the same budget.",
        "L1-filter: the same ratio in every conv, FC layers dense, channels removed physically. INT8: per-channel "
        "symmetric weights, 8-bit activations.",
        f"Measured on {data.test_size or 10000} test images. Seeds vary pruning, calibration and fine-tuning order; "
        "each base is trained once.",
        f"Sweep (Figure 1) and PTQ bits: {len(sweep_seeds)} seed(s); sparsity 0.8 and 8 bits are Table 3's cells.",
    ]
    if quick:
        notes.append("**--quick**: fine-tuning 1 epoch on 2,000 images (paper: 3 on 60,000), 500 test images, "
                     "bases cut (above), sweep at 0.3 / 0.6 / 0.9 only, one seed for the sweeps. Quick AFT numbers "
                     "sit several points below full ones (less adversarial training); the none / SFT gaps hold.")

    def targets(cells: Sequence[Cell]) -> list[Target]:
        out = []
        for key, ref in REFS_001.items():
            if key[0] != "table3" or key[1] != "standard":
                continue
            c = _find(cells, *key)
            if c is None or ref.clean is None or ref.pgd is None:
                out.append(Target(f"{key[2]} / {key[3]} within 2 pp of {ref.clean} / {ref.pgd}", None,
                                  "not run yet"))
                continue
            dc, dp = 100 * c.mean("clean_acc") - ref.clean, 100 * c.mean("pgd_acc") - ref.pgd
            out.append(Target(f"standard base, {key[2]} / {key[3]} within 2 pp of {ref.clean:.2f} / {ref.pgd:.2f}",
                              abs(dc) <= 2 and abs(dp) <= 2,
                              f"measured {_pct(c.mean('clean_acc'))} / {_pct(c.mean('pgd_acc'))} "
                              f"(Δ {dc:+.2f} / {dp:+.2f})"))
        sft = _find(cells, "table3", "standard", "L1-filter 0.8", "SFT")
        rob = _find(cells, "table3", "pgd", "dense", "none")
        aft = _find(cells, "table3", "standard", "L1-filter 0.8", "AFT")
        if sft is not None:
            out.append(Target("standard fine-tuning leaves PGD accuracy near zero (< 5%)",
                              sft.mean("pgd_acc") < 0.05, f"pruned + SFT PGD {_pct(sft.mean('pgd_acc'))}"))
        if rob is not None and aft is not None:
            gap = 100 * (rob.mean("pgd_acc") - aft.mean("pgd_acc"))
            out.append(Target("pruned standard + AFT within 5 pp of the adversarially trained dense model in PGD",
                              gap <= 5, f"robust base {_pct(rob.mean('pgd_acc'))}, pruned + AFT "
                              f"{_pct(aft.mean('pgd_acc'))} (gap {gap:.2f} pp)"))
        return out

    return Plan("001", "Adver-Fine (Thorsteinsson et al.): adversarial fine-tuning of compressed CNN-8, Fashion-MNIST",
                setup, tuple(rows), REFS_001,
                (TableSpec("table3", "Tables 2-3: dense, L1-filter 0.8 and INT8, none / SFT / AFT"),
                 TableSpec("sweep", "Figure 1: AFT after L1-filter pruning at each sparsity", plot_with=("table3",),
                           xlabel="sparsity (fraction of conv filters removed)"),
                 TableSpec("ptq", "PTQ bit widths + AFT", plot_with=("table3",),
                           xlabel="bits (weights and activations)", xlog=True)),
                tuple(notes), targets)


# ---------------------------------------------------------------------------------------------
# The registry of papers
# ---------------------------------------------------------------------------------------------

PAPERS: dict[str, Callable[[bool, Sequence[int]], Plan]] = {"001": plan_001}


def list_papers() -> list[str]:
    return sorted(PAPERS)


def make_plan(paper: str, *, quick: bool, seeds: Sequence[int]) -> Plan:
    """The plan of ``paper`` ("000" ... "004")."""
    if paper not in PAPERS:
        raise ConfigError(f"--paper: unknown paper {paper!r}; expected one of: {', '.join(list_papers())}, joint")
    if not seeds:
        raise ConfigError("--seeds: expected at least 1 seed")
    return PAPERS[paper](quick, list(seeds))


_ = (ModelConfig, pixel_eps, FMNIST_STD)  # used by the other papers' plans
