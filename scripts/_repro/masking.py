"""Gradient-masking checks on the models a run kept (``--save-models``): is a row's PGD a robustness number?

    python scripts/reproduce.py --paper 000 --check-masking runs/repro/000/models --n-check 1000

Every saved row model (``MODELS/<row>/model.pt`` + ``metadata.json``) is checked by
``searchprune.attacks.masking_checks`` on the first ``--n-check`` test images, with the row's own
threat model: PGD with 4x the steps from the same random start, APGD-CE and the gradient-free
Square Attack, logit-scaled PGD, and the fraction of zero input gradients. One line per model is
appended to ``DIR/masking.jsonl`` as it finishes (a model already checked with the same budget is
skipped), and the paper's report shows them as a table under the tables they check.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fnmatch
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from searchprune.attacks import CheckBudget, masking_checks
from searchprune.errors import ConfigError
from searchprune.search import load_export

__all__ = ["check_saved_models", "masking_section", "MASKING_FILE"]

MASKING_FILE = "masking.jsonl"


def _key(row: str, budget: dict[str, Any]) -> str:
    """A check is identified by its row and its budget: a rerun with a larger budget checks again."""
    return f"{row}|{json.dumps(budget, sort_keys=True)}"


def _load(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[_key(rec["row"], rec["budget"])] = rec
    return out


def check_saved_models(models: Path, out: Path, *, budget: CheckBudget, device: str | None = None,
                       only: Sequence[str] | None = None, command: str = "",
                       log: Callable[[str], None] = print) -> int:
    """Checks every model saved under ``models`` (those whose row key matches one of ``only``'s
    shell patterns, if given) and appends a record per model to ``out/masking.jsonl``; returns how
    many were checked now.

    Raises:
        ConfigError: ``models`` holds no saved row model.
    """
    dirs = sorted(d for d in models.glob("*") if (d / "metadata.json").is_file() and (d / "model.pt").is_file())
    if not dirs:
        raise ConfigError(f"--check-masking: {str(models)!r} holds no saved row model (DIR/<row>/model.pt + "
                          "metadata.json, as --save-models writes them)")
    path = out / MASKING_FILE
    done = _load(path)
    b = dataclasses.asdict(budget)
    n = 0
    for d in dirs:
        key = json.loads((d / "metadata.json").read_text()).get("row", d.name)
        if only and not any(fnmatch.fnmatchcase(key, p) for p in only):
            continue
        if _key(key, b) in done:
            continue
        t0 = time.perf_counter()
        ex = load_export(d, device=device)
        rep = masking_checks(ex.model, ex.loader(budget.n_images), ex.threat, budget=budget)
        rec = {"row": key, "model_dir": d.name, "budget": b, "threat": dict(ex.meta["threat"]),
               "report": dataclasses.asdict(rep), "fired": rep.fired,
               "recorded": dict(ex.meta.get("test_metrics", {})), "command": command,
               "seconds": time.perf_counter() - t0,
               "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        out.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        n += 1
        fired = ", ".join(rep.fired) or "none"
        log(f"checked {key}: PGD {rep.pgd_subset_acc:.3f}, APGD {rep.apgd_acc}, Square {rep.square_acc}, "
            f"flags {fired} ({rec['seconds']:.0f} s)")
    return n


def _p(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def masking_section(out: Path, order: Sequence[str] = ()) -> list[str]:
    """Markdown lines for the report: one row per checked model (in ``order``, the plan's row order,
    then any others), or nothing when the run has no checks."""
    recs = list(_load(out / MASKING_FILE).values())
    if not recs:
        return []
    pos = {k: i for i, k in enumerate(order)}
    recs.sort(key=lambda r: (pos.get(r["row"], len(pos)), r["row"]))
    lines = ["### Gradient-masking checks (saved models)", "",
             "Each model as the table above measured it, attacked again on the first test images with the same "
             "threat model (`searchprune.attacks.masking_checks`): PGD with more steps from the same random "
             "start, APGD-CE, the gradient-free Square Attack, logit-scaled PGD, and the fraction of correctly "
             "classified inputs with a zero input gradient. A flag names a symptom of masking or of an attack "
             "that had not converged; none fired means the PGD number is a robustness number, up to the strength "
             "of these attacks.", "",
             "| row | images | clean | PGD | PGD, more steps | APGD-CE | Square | scaled PGD | worst | zero-grad | "
             "flags |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        m = r["report"]
        lines.append(f"| {r['row']} | {m['n_images']} | {_p(m['clean_acc'])} | {_p(m['pgd_subset_acc'])} | "
                     f"{_p(m['pgd_more_acc'])} | {_p(m['apgd_acc'])} | {_p(m['square_acc'])} | "
                     f"{_p(m['scaled_acc'])} | {_p(m['worst_acc'])} | {100 * m['zero_grad_frac']:.1f}% | "
                     f"{', '.join(r['fired']) or 'none'} |")
    commands = list(dict.fromkeys(r.get("command", "") for r in recs if r.get("command")))
    if commands:
        lines += ["", "Checked by: " + "; ".join(f"`{c}`" for c in commands) + "."]
    budgets = {json.dumps(r["budget"], sort_keys=True) for r in recs}
    for b in sorted(budgets):
        d = json.loads(b)
        lines.append("")
        lines.append(f"Budget: {d['n_images']} test images, PGD with {d['more_steps_factor']}x the steps, "
                     f"APGD {d['apgd_steps']} steps, Square "
                     f"{d['square_queries']} queries, seed {d['seed']}.")
    lines.append("")
    return lines
