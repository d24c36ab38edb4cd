"""The per-paper report (``DIR/REPORT.md`` + ``DIR/<paper>.png``) and ``docs/RESULTS.md``.

The report is rewritten after every finished row, so a run stopped by a timeout leaves a report
of the rows it finished, marked partial.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .core import Cell, aggregate, load_results, lookup_reference, markdown_table, record_classes, row_at_chance
from .masking import MASKING_FILE, masking_section

__all__ = ["METRICS", "write_report", "plot_plan", "write_results_md"]

METRICS = ("clean_acc", "pgd_acc", "transfer_acc", "mac_ratio", "sparsity")
_MARK = {True: "met", False: "**missed**", None: "not decided"}


def _machines(records: Sequence[Mapping[str, Any]]) -> str:
    """Where the rows ran, from what each recorded (not the machine writing the report)."""
    seen = sorted({r["machine"] for r in records if r.get("machine")})
    unrecorded = sum(not r.get("machine") for r in records)
    if unrecorded:
        seen.append(f"{unrecorded} row(s) from before rows recorded their machine (the commands above give their "
                    "torch threads)")
    return "; ".join(seen)


def _chance_section(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows whose model ended at chance, each named: a cell's mean and spread average them in
    with its other seeds, and a target such as a MAC ratio can read "met" for a constant predictor."""
    dead = [r for r in sorted(records, key=lambda r: (r["index"], r["seed"])) if row_at_chance(r)]
    if not dead:
        return []
    lines = ["### Rows at chance", "",
             "These models predict one class (or nearly) for every test image: their numbers measure a failed "
             "run, not the method. Their cells are marked in the tables above; a cell's mean and spread include "
             "them.", ""]
    for r in dead:
        pgd = r["metrics"].get("pgd_acc")
        lines.append(f"- `{r['key']}`: clean {100 * r['metrics']['clean_acc']:.2f}, PGD "
                     f"{'-' if pgd is None else f'{100 * pgd:.2f}'} with {record_classes(r)} classes")
    return lines + [""]


def write_report(plan: Any, out: Path, *, command: str, quick: bool) -> Path:
    """Writes ``out/REPORT.md`` (tables, targets, notes) and ``out/<paper>.png``; returns the report path.
    Cells come in the plan's row order (a row added to a plan after others ran sits beside its kin)."""
    position = {r.key: i for i, r in enumerate(plan.rows)}
    records = [{**r, "index": position.get(r["key"], len(position) + r.get("index", 0))}
               for r in load_results(out / "results.jsonl").values()]
    cells = aggregate(records, METRICS)
    done = {r["key"] for r in records}
    n_done = sum(r.key in done for r in plan.rows)
    status = "complete" if n_done == len(plan.rows) else f"**partial: {n_done} of {len(plan.rows)} rows finished**"
    last = max((r.get("finished", "") for r in records), default="")
    seconds = sum(float(r.get("seconds", 0.0)) for r in records)
    commands = command.splitlines() or [command]
    head = ([f"Command: `{commands[0]}`"] if len(commands) == 1 else
            ["Commands (each ran some of the rows, in this order):", "", *(f"- `{c}`" for c in commands)])
    lines = [f"## Seed {plan.paper}{'' if quick else ' (full settings)'}: {plan.title}", "", *head, "",
             f"Mode: {'**--quick** (CPU-sized, see notes)' if quick else 'full'}; {status}; "
             f"{seconds / 60:.0f} min of rows; last row {last or '-'}."
             + (f" Machine: {m}." if (m := _machines(records)) else ""),
             ""]
    lines += [f"- {n}" for n in plan.notes]
    for b in plan.setup.bases.values():
        lines.append(f"- Base `{b.name}`: {b.model.arch}, {b.train.recipe} training, {b.note}.")
    lines.append("")
    for spec in plan.tables:
        sel = [c for c in cells if c.table == spec.table]
        if not sel:
            continue
        lines += [f"### {spec.caption}", "", markdown_table(sel, plan.refs, extra=spec.extra), ""]
    lines += masking_section(out, order=[r.key for r in plan.rows])
    lines += _chance_section(records)
    targets = plan.targets(cells)
    if targets:
        lines += ["### Targets", ""]
        lines += [f"- {t.claim}: {_MARK[t.met]} ({t.detail})" for t in targets]
        lines.append("")
    png = plot_plan(plan, cells, out / f"{plan.paper}.png")
    if png is not None:
        lines += [f"![seed {plan.paper}]({png.name})", ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps({
        "paper": plan.paper, "quick": quick, "rows": len(plan.rows), "done": n_done, "command": command,
        "targets": [{"claim": t.claim, "met": t.met, "detail": t.detail} for t in targets]}, indent=2))
    return path


def plot_plan(plan: Any, cells: Sequence[Cell], path: Path) -> Path | None:
    """One panel per (plotted table, metric): measured mean ± std per series, the paper's numbers
    as hollow markers on a dotted line of the same colour; a cell with a seed at chance gets a red
    cross (its mean averages a failed run in). None when nothing is plottable yet."""
    panels = []
    for spec in plan.tables:
        if not spec.xlabel:
            continue
        sel = [c for c in cells if c.series and c.x is not None and
               (c.table == spec.table or c.table in spec.plot_with)]
        mine = {c.series for c in cells if c.table == spec.table and c.series}
        sel = [c for c in sel if c.series in mine]
        if len({c.x for c in sel}) < 2:
            continue
        metrics = ["clean_acc", "pgd_acc"] + [m for _, m in spec.extra if m.endswith("_acc")]
        panels += [(spec, m, sel) for m in metrics]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (spec, metric, sel) in zip(axes.flat, panels):
        series = sorted({c.series for c in sel})
        dead_label = "a seed at chance"
        for i, name in enumerate(series):
            pts = sorted((c for c in sel if c.series == name), key=lambda c: float(c.x or 0))
            xs = [float(c.x or 0) for c in pts]
            ys = [100 * c.mean(metric) for c in pts]
            es = [0.0 if math.isnan(c.std(metric)) else 100 * c.std(metric) for c in pts]
            color = f"C{i}"  # the colour cycle repeats after 10 series: the marker tells them apart
            marker = "os^Dv"[(i // 10) % 5]
            ax.errorbar(xs, ys, yerr=es, marker=marker, color=color, label=name, capsize=3)
            dead = [(x, y) for c, x, y in zip(pts, xs, ys) if c.collapsed]
            if dead:
                ax.scatter(*zip(*dead), marker="x", s=70, color="red", zorder=5, label=dead_label)
                dead_label = "_nolegend_"
            ref_pts = []
            for c in pts:
                ref = lookup_reference(plan.refs, c)
                val = None if ref is None else (ref.clean if metric == "clean_acc" else
                                                ref.pgd if metric == "pgd_acc" else None)
                if val is not None:
                    ref_pts.append((float(c.x or 0), val))
            if ref_pts:
                ax.plot(*zip(*ref_pts), linestyle=":", marker=marker, mfc="none", color=color, label=f"{name} (paper)")
        if spec.xlog:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(spec.xlabel)
        ax.set_ylabel(f"{metric.replace('_acc', '')} accuracy (%, test)")
        ax.set_title(spec.caption[:60], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


HEADER = """# Reproducing the seed papers

Every table below is produced by `scripts/reproduce.py` (one `searchprune.trial.run_trial` call per row,
no Optuna) and assembled by `python scripts/reproduce.py --write-results`. Numbers are measured here,
on held-out **test** images, with the threat model each section states; the papers' numbers sit beside
them (`shared/reference/methods.md`). A row is written to `DIR/results.jsonl` as it finishes and a rerun
skips finished rows, so a full run can be stopped and resumed. `±` is the sample standard deviation over
seeds (seeds vary pruning randomness, calibration and fine-tuning order; each base is trained once).

Where a section says **--quick** or **partial**, its numbers come from CPU-sized settings (fewer
fine-tuning images and epochs, fewer test images, shortened base training) or from a run stopped
before all rows finished: they show the machinery and the direction of each effect, not the papers'
full-budget numbers. Full runs: the same command without `--quick` (hours on a CPU).

CIFAR-10 versions of the studies, runnable unchanged on a CUDA machine (`searchprune study create --config F`
then `searchprune study optimize`; each validates at creation): `studies/adver_fine_cifar10.yaml` (seed 001,
ResNet-20), `studies/gap_cifar10.yaml` (000, ResNet-20), `studies/in_train_cifar10.yaml` (002, ResNet-20, L1-filter
at matching MAC ratios), `studies/hydra_cifar10.yaml` (003, VGG-16), `studies/mrpf_cifar10.yaml` (004, ResNet-20).
None of them was run in this session (no GPU was available); every table below ran on CPU, as its section says.
"""


ARCHIVED = ("REPORT.md", "summary.json", "results.jsonl", "command.txt", MASKING_FILE)


def archive_run(d: Path, archive: Path) -> Path:
    """Copies a run directory's small text outputs (rows, summary, report, command) to ``archive/d.name``:
    ``runs/`` is not kept in git, the archive is, so RESULTS.md can be rebuilt after the run directory
    is gone (``--write-results`` reads archived runs that have no run directory)."""
    dest = archive / d.name
    if d.resolve() == dest.resolve():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for name in ARCHIVED:
        if (d / name).exists():
            shutil.copyfile(d / name, dest / name)
    for png in d.glob("*.png"):
        shutil.copyfile(png, dest / png.name)
    return dest


def _seeds(d: Path) -> str:
    """Seeds per cell of the run's finished rows: "2", or "1-2" where some cells have fewer than others."""
    per_cell: dict[str, set[int]] = {}
    for key, r in load_results(d / "results.jsonl").items():
        if "seed" in r:
            per_cell.setdefault(re.sub(r"/seed\d+$", "", key), set()).add(r["seed"])
    counts = sorted({len(s) for s in per_cell.values()})
    return "-" if not counts else str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def glance(dirs: Sequence[Path]) -> list[str]:
    """RESULTS.md's first table, computed from each run's ``summary.json`` (never written by hand):
    per paper and mode the rows done, the seeds, and how many targets are met, missed and undecided
    (the joint search: its finding); then every target missed at full settings, with its detail."""
    rows = ["| paper | mode | rows done | seeds | targets: met / missed / not decided |", "|---|---|---|---|---|"]
    missed: list[str] = []
    for d in dirs:
        if not (d / "summary.json").exists():
            continue
        s = json.loads((d / "summary.json").read_text())
        ts = s.get("targets", [])
        n = [sum(t["met"] is v for t in ts) for v in (True, False, None)]
        verdict = s.get("finding") or (" / ".join(map(str, n)) if ts else "-")
        st = s.get("states")  # the joint search: how its trials ended
        how = f" ({st['complete']} complete, {st['pruned']} pruned, {st['failed']} failed)" if st else ""
        rows.append(f"| {s['paper']} | {'quick' if s['quick'] else 'full'} | {s['done']} of {s['rows']}{how} | "
                    f"{s.get('seeds') or _seeds(d)} | {verdict} |")  # the joint search: its one sampler seed
        if not s["quick"]:
            missed += [f"- {s['paper']}: {t['claim']} ({t['detail']})" for t in ts if t["met"] is False]
    if len(rows) == 2:
        return []
    out = ["## Targets at a glance", "", "Counted from each run's `summary.json` (the targets listed in each "
           "section below); a run with rows still to do decides only the targets of the rows it finished, and a "
           "comparison only where the rows still to run cannot change it; "
           "seeds: per cell, `1-2` where some cells have fewer seeds than others, `-` where the run's row file "
           "was not kept.", "", *rows, ""]
    if missed:
        out += ["Missed at full settings (each section says why):", "", *missed, ""]
    return out


def write_results_md(dirs: Sequence[Path], dest: Path, *, preamble: str = "",
                     not_run: Sequence[tuple[str, str]] = ()) -> Path:
    """Assembles ``dest`` (docs/RESULTS.md) from each run directory's ``REPORT.md``; each run is archived
    into ``results/<run>/`` beside it (rows, summary, report, plot) and the image links point there."""
    parts = [HEADER, *glance(dirs), preamble] if preamble else [HEADER, *glance(dirs)]
    img_dir = dest.parent / "results"
    status = ["| paper | mode | rows | rows, report and plot (archived) |", "|---|---|---|---|"]
    bodies = []
    for d in dirs:
        rep, summ = d / "REPORT.md", d / "summary.json"
        if not rep.exists() or not summ.exists():
            continue
        s = json.loads(summ.read_text())
        text = rep.read_text()
        kept = archive_run(d, img_dir)
        for png in kept.glob("*.png"):
            text = text.replace(f"]({png.name})", f"](results/{d.name}/{png.name})")
        status.append(f"| {s['paper']} | {'quick' if s['quick'] else 'full'} | {s['done']} of {s['rows']} | "
                      f"`{dest.parent.name}/results/{d.name}` |")
        bodies.append(text)
    done = {json.loads((d / "summary.json").read_text())["paper"] for d in dirs if (d / "summary.json").exists()}
    for paper, command in not_run:
        if paper not in done:
            status.append(f"| {paper} | **not run in this session** | 0 | `{command}` |")
    parts += ["## What was run", "", *status, "", *bodies]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(parts).rstrip() + "\n")
    return dest
