"""Reproduce a seed paper's tables through the trial core, resumably, and write docs/RESULTS.md.

    python scripts/reproduce.py --paper 001 --quick            # CPU-sized, <= 30 min on 2 cores
    python scripts/reproduce.py --paper 001 --seeds 3          # the full settings (hours on a CPU)
    python scripts/reproduce.py --paper 001 --report-only      # rewrite the tables from results.jsonl
    python scripts/reproduce.py --write-results                # assemble docs/RESULTS.md from runs/repro/*
    python scripts/reproduce.py --paper 000 --check-masking runs/repro/000/models   # attack saved rows again

Each row of a table is one ``searchprune.trial.run_trial`` call with hand-written TrialParams: the
code a study runs, with no Optuna involved. Rows are appended to ``DIR/results.jsonl`` as they finish
(default DIR: ``runs/repro/<paper>[-quick]``); a rerun skips the finished ones, and refuses a results
file made with other settings. After every row ``DIR/REPORT.md`` (measured beside the paper's numbers,
the targets, the notes) and ``DIR/<paper>.png`` are rewritten. Base models are trained once and cached
in ``--bases`` (shared by the papers that use the same recipe). Every number is measured on held-out
test images. ``--paper joint`` runs ``studies/fmnist_full.yaml`` as a study instead (see _repro/joint.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from _repro.masking import check_saved_models
from _repro.papers import list_papers, make_plan
from _repro.report import write_report, write_results_md
from _repro.runner import run_rows

from searchprune._torch import set_cpu_threads
from searchprune.attacks import CheckBudget
from searchprune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("000", "001", "002", "003", "004", "joint")


def default_out(paper: str, quick: bool) -> Path:
    return Path("runs/repro") / (f"{paper}-quick" if quick else paper)


def _run_dirs(archive: Path) -> list[Path]:
    """Every run directory under runs/repro with a report, plus the archived runs (docs/results/*) that
    have no run directory here any more, in paper order."""
    live = {d.name: d for d in Path("runs/repro").glob("*") if (d / "REPORT.md").exists()}
    kept = {d.name: d for d in archive.glob("*") if (d / "REPORT.md").exists() and d.name not in live}
    return sorted({**kept, **live}.values(),
                  key=lambda d: (ORDER.index(d.name.split("-")[0]) if d.name.split("-")[0] in ORDER else 99, d.name))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paper", choices=[*list_papers(), "joint"], help="which seed paper to reproduce")
    ap.add_argument("--quick", action="store_true", help="CPU-sized settings (the report says how they differ)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per cell (default 2)")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default runs/repro/<paper>[-quick])")
    ap.add_argument("--bases", type=Path, default=None, help="base-model cache (default runs/repro/bases[-quick])")
    ap.add_argument("--base-checkpoint", action="append", default=[], metavar="NAME=PATH",
                    help="use an existing base model for base NAME (e.g. standard=runs/base/cnn8_fmnist_paper_standard"
                         ".pt, from `searchprune train --config studies/train/cnn8_fmnist_standard.yaml`)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--only", nargs="+", default=None, metavar="PATTERN",
                    help="run only the rows whose key matches one of these shell patterns (keys look like "
                         "001/table3/standard/L1-filter 0.8/AFT/seed0); the report lists the others as not run")
    ap.add_argument("--save-models", type=Path, default=None, metavar="DIR",
                    help="keep each row's final model in DIR/<row key>/ (model.pt + metadata.json), so "
                         "`searchprune eval DIR/<row> --attacks apgd square` can attack it again")
    ap.add_argument("--check-masking", type=Path, default=None, metavar="MODELS",
                    help="run the gradient-masking checks on the models saved in MODELS (by --save-models), "
                         "append them to DIR/masking.jsonl and rewrite the report; --only selects rows")
    ap.add_argument("--n-check", type=int, default=1000, help="test images per masking check (default 1000)")
    ap.add_argument("--square-queries", type=int, default=1000,
                    help="Square Attack queries per masking check (default 1000)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite DIR/REPORT.md from results.jsonl")
    ap.add_argument("--write-results", action="store_true", help="assemble docs/RESULTS.md from run directories")
    ap.add_argument("--from", dest="from_dirs", type=Path, nargs="*", default=None,
                    help="run directories for --write-results (default: every runs/repro/* with a REPORT.md)")
    ap.add_argument("--results-md", type=Path, default=ROOT / "docs" / "RESULTS.md")
    ap.add_argument("--preamble", type=Path, default=None, help="markdown file put after RESULTS.md's header")
    a = ap.parse_args(argv)
    try:
        if a.write_results:
            dirs = a.from_dirs if a.from_dirs is not None else _run_dirs(a.results_md.parent / "results")
            not_run = [(p, f"python scripts/reproduce.py --paper {p} --quick") for p in ORDER]
            pre = a.preamble.read_text() if a.preamble is not None else ""
            dest = write_results_md(dirs, a.results_md, not_run=not_run, preamble=pre)
            print(f"wrote {dest} from {len(dirs)} run(s)")
            return 0
        if a.paper is None:
            ap.error("give --paper (or --write-results)")
        set_cpu_threads(a.threads)
        out = a.out or default_out(a.paper, a.quick)
        bases = a.bases or Path("runs/repro") / ("bases-quick" if a.quick else "bases")
        this = shlex.join(["python", "scripts/reproduce.py", *(argv if argv is not None else sys.argv[1:])])
        out.mkdir(parents=True, exist_ok=True)
        if a.paper == "joint":
            from _repro.joint import run_joint  # Optuna is needed only by this mode

            run_joint(out, quick=a.quick, seeds=a.seeds, device=a.device, command=this)
            return 0
        plan = make_plan(a.paper, quick=a.quick, seeds=range(a.seeds))
        # the report names every command that ran rows into this directory (a full run is often done in
        # parts, e.g. with --only), in the order they first ran; a command is recorded with its first row
        # (read afresh each time and appended to, so runs sharing the directory keep each other's lines)
        def recorded() -> list[str]:
            path = out / "command.txt"
            return path.read_text().split("\n") if path.exists() else []

        def commands() -> str:
            return "\n".join(c for c in recorded() if c) or this

        def on_row() -> None:
            if this not in recorded():
                with open(out / "command.txt", "a") as f:
                    f.write(this + "\n")
            write_report(plan, out, command=commands(), quick=a.quick)

        given = {}
        for item in a.base_checkpoint:
            name, sep, path = item.partition("=")
            if not sep or name not in plan.setup.bases:
                raise ConfigError(f"--base-checkpoint: expected NAME=PATH with NAME one of "
                                  f"{', '.join(plan.setup.bases)}, got {item!r}")
            given[name] = Path(path)
        if a.check_masking is not None:
            for flag, value in (("--n-check", a.n_check), ("--square-queries", a.square_queries)):
                if value < 1:
                    raise ConfigError(f"{flag}: expected >= 1, got {value}")
            budget = CheckBudget(n_images=a.n_check, square_queries=a.square_queries)
            n = check_saved_models(a.check_masking, out, budget=budget, device=a.device, only=a.only,
                                   command=this)
            print(f"checked {n} model(s) -> {out / 'masking.jsonl'}")
        elif not a.report_only:
            run_rows(plan, out, bases_dir=bases, device=a.device, quick=a.quick, base_checkpoints=given, only=a.only,
                     on_row=on_row, save_models=a.save_models)
        print(f"wrote {write_report(plan, out, command=commands(), quick=a.quick)}")
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
