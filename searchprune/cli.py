"""The ``searchprune`` command line.

    searchprune study create   --config studies/fmnist_quick.yaml [--storage URL] [--name N]
    searchprune study optimize --name N [--storage URL] [--n-trials K] [--workers W]
    searchprune study show | pareto | plots | dashboard  --name N [--storage URL]
    searchprune study certify  --name N [--attacks autoattack] [--n-test K]
    searchprune study export   --name N (--trial T | --rule RULE) --out DIR [--force]
    searchprune study report   --name N --out DIR
    searchprune train --config train.yaml
    searchprune eval DIR

Every study command takes ``--config FILE`` instead of ``--name/--storage`` to address the study
that config describes. Mistakes in input print one ``error:`` line (exit code 2), never a
traceback from deep inside torch.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import TrainRunConfig, build, load_study_config, load_yaml
from .errors import ConfigError

__all__ = ["main"]


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="study name")
    p.add_argument("--storage", help="storage URL (sqlite:///F, postgresql://..., a journal *.log file); "
                                     "default: runs/NAME/study.db")
    p.add_argument("--config", help="study YAML: address the study it describes")


def _trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-factory", metavar="MODULE:FN",
                   help="import and call this model factory if the checkpoint names it (never done otherwise)")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")


# ---- study commands ------------------------------------------------------------------------


def cmd_study_create(a: argparse.Namespace) -> int:
    from .search import create_study  # lazy: keeps --help fast

    cfg = load_study_config(a.config)
    study = create_study(cfg, storage=a.storage, name=a.name, artifact_dir=a.artifacts,
                         warm_start=a.warm_start, warm_start_storage=a.warm_start_storage)
    print(f"created study {study.study_name!r} in {study.user_attrs['storage_url']}")
    print(f"  objectives: {', '.join(study.metric_names or [])} (maximize, maximize, minimize)")
    waiting = study.get_trials(deepcopy=False)
    baselines = sum(bool(t.user_attrs.get("baseline")) for t in waiting)
    if baselines:
        print(f"  {baselines} baseline trial(s) enqueued")
    warm = study.user_attrs.get("warm_start")
    if warm:
        print(f"  warm start from {warm['source']!r}: {len(warm['enqueued'])} Pareto trial(s) enqueued "
              f"({', '.join(f'#{n}' for n in warm['enqueued']) or 'none'}), {len(warm['skipped'])} skipped")
        for number, reason in warm["skipped"].items():
            print(f"    skipped #{number}: {reason}")
    print(f"next: searchprune study optimize --name {study.study_name} --storage {study.user_attrs['storage_url']}")
    return 0


def cmd_study_optimize(a: argparse.Namespace) -> int:
    from .search import RunFailed, optimize, resolve_storage, study_summary  # lazy: keeps --help fast

    name, storage = resolve_storage(a.name, a.storage, a.config)
    try:
        study = optimize(name, storage, n_trials=a.n_trials, workers=a.workers, device=a.device,
                         timeout=a.timeout, artifact_dir=a.artifacts, quiet=a.quiet)
    except RunFailed as e:  # the summary still shows what is stored; the exit code says the run failed
        print(json.dumps(study_summary(e.study), indent=2, default=str))
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(study_summary(study), indent=2, default=str))
    return 0


def cmd_study_show(a: argparse.Namespace) -> int:
    from .search import load_study, resolve_storage, study_summary  # lazy: keeps --help fast

    name, storage = resolve_storage(a.name, a.storage, a.config)
    study, _ = load_study(name, storage)
    print(json.dumps(study_summary(study), indent=2, default=str))
    return 0


def cmd_study_pareto(a: argparse.Namespace) -> int:
    from .search import format_table, load_study, pareto_rows, resolve_storage  # lazy: keeps --help fast

    name, storage = resolve_storage(a.name, a.storage, a.config)
    study, cfg = load_study(name, storage)
    rows = pareto_rows(study)
    print(f"Pareto set of {name!r}: {len(rows)} trial(s); accuracies on {cfg.eval.n_eval or 'all'} validation "
          f"images, threat {cfg.threat.norm} eps={cfg.threat.eps:g} steps={cfg.threat.steps} "
          f"clamp={cfg.threat.clamp}; cost axis (third objective): {cfg.cost}")
    print(format_table(rows))
    return 0


def cmd_study_export(a: argparse.Namespace) -> int:
    from .search import export_trial, load_study, parse_rule, resolve_storage, select_trial  # lazy: keeps --help fast

    name, storage = resolve_storage(a.name, a.storage, a.config)
    study, _ = load_study(name, storage)
    rule = None
    if a.trial is not None:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == a.trial]
        if not matches:
            raise ConfigError(f"--trial {a.trial}: no such trial in study {name!r} "
                              f"(trials 0..{len(study.get_trials(deepcopy=False)) - 1})")
        trial = matches[0]
    else:
        rule = parse_rule(a.rule)
        trial = select_trial(study, rule)
    print(f"exporting trial {trial.number} to {a.out} ...", flush=True)
    # a factory runs only when the user says so: --trust-factory, or the study YAML they pass names it
    trust = a.trust_factory or (load_study_config(a.config).model.factory if a.config else None)
    meta = export_trial(study, trial, a.out, device=a.device, rule=rule, verify=not a.no_verify,
                        force=a.force, trust_factory=trust)
    v = meta["verification"]
    print(f"verified on validation: clean {v['clean_acc']['export']:.4f} (trial {v['clean_acc']['trial']:.4f}), "
          f"PGD {v['pgd_acc']['export']:.4f} (trial {v['pgd_acc']['trial']:.4f})")
    tm = meta["test_metrics"]
    attacks = ", ".join(f"{k.removeprefix('acc_')} {v:.4f}" for k, v in tm.items() if k.startswith("acc_"))
    print(f"test ({tm['n']} images): clean {tm['clean_acc']:.4f}; {attacks}; worst case {tm['worst_acc']:.4f}")
    cert = meta.get("certified_metrics")
    if cert:
        suite = ", ".join(f"{k.removeprefix('test_acc_')} {v:.4f}" for k, v in cert.items()
                          if k.startswith("test_acc_") and isinstance(v, float))
        print(f"certified (study certify, {cert.get('test_n')} test images, {cert.get('test_attacks')}): "
              f"clean {cert['test_clean_acc']:.4f}; {suite}; worst case {cert['test_worst_acc']:.4f}  <- headline")
    i8 = meta.get("int8_metrics")
    if i8:
        print(f"deployed int8 ({i8.get('int8_n')} val images): clean {i8['int8_clean_acc']:.4f} "
              f"(fake-quant {i8['int8_fq_clean_acc']:.4f}), transfer from fake-quant {i8['int8_transfer_acc']:.4f} "
              f"(fake-quant PGD {i8['int8_fq_pgd_acc']:.4f}), worst {i8['int8_worst_acc']:.4f}")
    print(f"wrote {', '.join(sorted(p.name for p in Path(a.out).iterdir()))}")
    return 0


def cmd_study_certify(a: argparse.Namespace) -> int:
    from .search import certify_study, load_study, resolve_storage  # lazy: keeps --help fast

    name, storage = resolve_storage(a.name, a.storage, a.config)
    study, cfg = load_study(name, storage)
    attacks = a.attacks or ["autoattack"]
    print(f"certifying {name!r} on {a.n_test or 'all'} held-out test images: the study's PGD-{cfg.threat.steps} and "
          f"{', '.join(attacks)} (clamp={cfg.threat.clamp}) ...", flush=True)
    rep = certify_study(study, attacks=attacks, n_test=a.n_test, device=a.device,
                        log=(lambda s: None) if a.quiet else (lambda s: print("  " + s, flush=True)))
    print(f"search front (validation PGD) beside the certified front (test worst case over PGD + "
          f"{', '.join(rep.attacks)}, {rep.n_test} images; cost axis {rep.cost}):")
    print(rep.table())
    print(rep.summary())
    return 0


def cmd_study_dashboard(a: argparse.Namespace) -> int:
    from optuna.artifacts import FileSystemArtifactStore  # lazy: keeps --help fast
    from optuna_dashboard import run_server  # lazy: keeps --help fast

    from .search import load_study, make_storage, resolve_storage  # lazy: keeps --help fast

    name, storage = resolve_storage(a.name, a.storage, a.config)
    study, _ = load_study(name, storage)  # fails clearly when the study does not exist

    art = a.artifacts or study.user_attrs.get("artifact_dir")
    store = FileSystemArtifactStore(art) if art and Path(art).is_dir() else None
    store_obj = make_storage(storage, create=False)
    study_id = store_obj.get_study_id_from_name(name)
    _check_port_free(a.host, a.port)
    print(f"optuna-dashboard for {name!r}: http://{a.host}:{a.port}/dashboard/studies/{study_id}", flush=True)
    print("(Ctrl-C to stop)", flush=True)
    try:
        run_server(store_obj, host=a.host, port=a.port, artifact_store=store)
    except OSError as e:  # taken between the check and the server's own bind
        raise ConfigError(_listen_error(a.host, a.port, e)) from None
    return 0


def _listen_error(host: str, port: int, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use; pick another with --port"
    return f"cannot listen on {host}:{port}: {e.strerror or e}"


def _check_port_free(host: str, port: int) -> None:
    """A one-line error for a port that is taken, before the server prints a traceback for it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(_listen_error(host, port, e)) from None


def cmd_study_plots(a: argparse.Namespace) -> int:
    from .search import load_study, resolve_storage, write_plots  # lazy: keeps --help fast

    name, storage = resolve_storage(a.name, a.storage, a.config)
    study, cfg = load_study(name, storage)
    out = Path(a.out) if a.out else cfg.out_path / "plots"
    written = write_plots(study, out, push_to_dashboard=True)
    print(f"wrote {len(written)} file(s) to {out} and pushed the figures to the dashboard")
    return 0


def cmd_study_report(a: argparse.Namespace) -> int:
    from .search import load_study, resolve_storage, write_report  # lazy: keeps --help fast

    name, storage = resolve_storage(a.name, a.storage, a.config)
    study, _ = load_study(name, storage)
    path = write_report(study, a.out, rules=a.rule or None, interactive=not a.no_interactive)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained: opens offline)")
    return 0


# ---- train / eval --------------------------------------------------------------------------


def cmd_train(a: argparse.Namespace) -> int:
    from ._torch import get_device, set_cpu_threads  # lazy: keeps --help fast (torch)
    from .checkpoint import save_checkpoint  # lazy: keeps --help fast
    from .data import make_splits  # lazy: keeps --help fast
    from .train import train_base_model  # lazy: keeps --help fast

    set_cpu_threads()
    cfg: TrainRunConfig = build(TrainRunConfig, load_yaml(a.config))
    out = Path(a.out or cfg.output)
    model, meta = train_base_model(cfg.model, cfg.train, make_splits(cfg.data), data=cfg.data, threat=cfg.threat,
                                   device=get_device(a.device), eval_split="test", n_eval=cfg.n_eval,
                                   progress=not a.quiet)
    save_checkpoint(out, model, meta)
    m = meta["metrics"]
    print(f"test ({m['n_test']} images): clean {m['test_clean_acc']:.4f}, PGD-{cfg.threat.steps} "
          f"{m['test_pgd_acc']:.4f} (eps {cfg.threat.eps:g}); trained in {m['train_seconds']:.0f} s -> {out}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .search import evaluate_export  # lazy: keeps --help fast

    res = evaluate_export(a.path, device=a.device, attacks=tuple(a.attacks) if a.attacks else None,
                          data_dir=a.data_dir, trust_factory=a.trust_factory, n_test=a.n_test,
                          progress=not a.quiet)
    m, r = res["measured"], res["recorded"]
    print(f"test ({m['n']} images), threat {res['threat']}")
    for k in m:
        if k == "n":
            continue
        rec = f"  (recorded {r[k]:.4f})" if isinstance(r.get(k), float) else ""
        print(f"  {k:12s} {m[k]:.4f}{rec}")
    return 0


# ---- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="searchprune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    study = sub.add_parser("study", help="create, run and inspect Optuna studies")
    ss = study.add_subparsers(dest="study_command", required=True)

    p = ss.add_parser("create", help="create a study from a YAML config")
    p.add_argument("--config", required=True, help="study YAML (see studies/)")
    p.add_argument("--storage", help="storage URL; default: sqlite file in the study's output_dir")
    p.add_argument("--name", help="override the study name")
    p.add_argument("--artifacts", help="artifact directory (default: OUTPUT_DIR/artifacts)")
    p.add_argument("--warm-start", metavar="OTHER",
                   help="enqueue the feasible Pareto set of study OTHER (what the new space can express)")
    p.add_argument("--warm-start-storage", metavar="URL", help="storage of OTHER (default: the new study's)")
    p.set_defaults(fn=cmd_study_create)

    p = ss.add_parser("optimize", help="run trials until the study has --n-trials finished trials")
    _study_args(p)
    p.add_argument("--n-trials", type=int, default=None, help="target number of finished trials (default: config)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--artifacts", help="artifact directory (default: the one stored with the study)")
    p.add_argument("--quiet", action="store_true")
    _device_arg(p)
    p.set_defaults(fn=cmd_study_optimize)

    for cmd, fn, text in (("show", cmd_study_show, "trials by state, best per objective, Pareto size, hypervolume"),
                          ("pareto", cmd_study_pareto, "print the feasible Pareto set as a table")):
        p = ss.add_parser(cmd, help=text)
        _study_args(p)
        p.set_defaults(fn=fn)

    p = ss.add_parser("export", help="export a trial's model with provenance")
    _study_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--trial", type=int, help="trial number")
    g.add_argument("--rule", help="e.g. 'max robust_acc where macs <= 5e6 and clean_acc >= 0.85'")
    p.add_argument("--out", required=True, help="export directory")
    p.add_argument("--no-verify", action="store_true", help="skip the re-evaluation check (not recommended)")
    _trust_arg(p)
    p.add_argument("--force", action="store_true",
                   help="export a trial that its masking flags made infeasible (its robust accuracy is not trusted)")
    _device_arg(p)
    p.set_defaults(fn=cmd_study_export)

    p = ss.add_parser("certify", help="re-measure the feasible Pareto trials and baselines on held-out test images "
                                      "with the full attack suite; print the certified front beside the search front")
    _study_args(p)
    p.add_argument("--attacks", nargs="+", default=None,
                   help="the suite: NAME or NAME:key=value,... (default: autoattack; e.g. autoattack:version=quick "
                        "or square:queries=1000 for a reduced budget, stated as such in the results)")
    p.add_argument("--n-test", type=int, default=None, help="test images per trial (default: the whole test split)")
    p.add_argument("--quiet", action="store_true")
    _device_arg(p)
    p.set_defaults(fn=cmd_study_certify)

    p = ss.add_parser("dashboard", help="start optuna-dashboard for the study")
    _study_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--artifacts", help="artifact directory (default: the one stored with the study)")
    p.set_defaults(fn=cmd_study_dashboard)

    p = ss.add_parser("plots", help="write Pareto / hypervolume / importance plots and push them to the dashboard")
    _study_args(p)
    p.add_argument("--out", help="output directory (default: OUTPUT_DIR/plots)")
    p.set_defaults(fn=cmd_study_plots)

    p = ss.add_parser("report", help="write one self-contained HTML report (figures, Pareto table, flags, setup)")
    _study_args(p)
    p.add_argument("--out", required=True, help="directory for report.html")
    p.add_argument("--rule", action="append", help="an export rule to answer (repeatable; default: a few "
                                                   "standard ones, e.g. 'max robust_acc where mac_ratio <= 0.5')")
    p.add_argument("--no-interactive", action="store_true",
                   help="PNG figures only (leaves out the ~4 MB of inlined plotly JavaScript)")
    p.set_defaults(fn=cmd_study_report)

    p = sub.add_parser("train", help="train a base model from a YAML config")
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="checkpoint path (default: the config's output)")
    p.add_argument("--quiet", action="store_true")
    _device_arg(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="re-measure an export directory on its test split")
    p.add_argument("path", help="export directory")
    p.add_argument("--attacks", nargs="+", help="attacks to run (default: the export's ensemble)")
    p.add_argument("--data-dir", help="where the dataset lives on this machine")
    p.add_argument("--n-test", type=int, default=None,
                   help="measure only the first N test images (default: the whole test split the export used)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    _trust_arg(p)
    _device_arg(p)
    p.set_defaults(fn=cmd_eval)
    return parser


def _quiet_optuna() -> None:
    """Optuna labels APIs we rely on (metric names, heartbeats) experimental, and logs at INFO;
    both are noise on a user's terminal. Our own lines say what happens."""
    import optuna  # lazy: `searchprune --help` must not pay for importing Optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Baselines (the dense model at sparsity 0) sit outside the searched range on purpose.
    warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range", category=UserWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_optuna()
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
