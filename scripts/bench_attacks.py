"""Throughput of the project's attacks against a plain PGD loop and torchattacks' PGD.

For ``cnn8`` (1x28x28, Fashion-MNIST, or the synthetic set when it is not installed) and
``resnet20`` (3x32x32, synthetic), each briefly trained with a plain loop, every contender attacks
the *same* images with the same eps / alpha / steps, in one process with a fixed thread count:

* ``plain PGD``: the textbook loop written below (fp32, NCHW, ``loss.backward()``, last iterate);
* ``torchattacks PGD``: torchattacks 3.5.1 (skipped with a note when it does not import);
* ``project PGD``: the registered ``"pgd"`` attack as a study runs it (early stop on, fp32);
* ``project PGD, no early stop``: the keyword function ``pgd`` (textbook: every example runs every
  step and returns its last iterate; the per-step speed);
* ``project PGD bf16``: the registered attack with ``precision="bf16"``;
* ``project APGD``: APGD-CE with the same number of steps;
* ``project Square``: Square with ``--queries`` queries (forward passes only).

Timings are the median of ``--repeats`` passes, contenders interleaved round-robin so that load
from other processes hits all of them alike. Each row also gives the robust accuracy on those
images, so the reader can see the contenders agree (to within a few images: random starts differ,
and early stopping keeps the first fooling input where the plain loop keeps its last iterate).
A per-step breakdown (one forward+backward on one batch, several ways) explains the ratios.

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_attacks.py --threads 1
    # torchattacks, optional; a plain install would replace torch with a CUDA build:
    pip install --no-deps torchattacks==3.5.1 scipy tqdm
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from searchprune.attacks import apgd, get_attack, pgd, square  # noqa: E402
from searchprune.attacks._base import conv_layout  # noqa: E402
from searchprune.config import ThreatModel  # noqa: E402
from searchprune.data import ArrayDataset, load_dataset, make_synthetic  # noqa: E402
from searchprune.errors import ConfigError  # noqa: E402
from searchprune.models import create_model  # noqa: E402

Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Setup:
    name: str
    model: nn.Module
    x: torch.Tensor  # (N, C, H, W) float in [0, 1]
    y: torch.Tensor  # (N,)
    eps: float
    alpha: float
    data: str


# ---------------------------------------------------------------------------------------------
# The straightforward baseline: what a PGD loop looks like without any tricks
# ---------------------------------------------------------------------------------------------


def plain_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
              steps: int) -> torch.Tensor:
    """Textbook L-inf PGD with a uniform random start: fp32, NCHW, ``loss.backward()``."""
    model.eval()
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        model.zero_grad()
        loss.backward()
        assert x_adv.grad is not None
        x_adv = x_adv.detach() + alpha * x_adv.grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


# ---------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------


def _floats(ds: ArrayDataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return ds.images[:n].float() / 255.0, ds.labels[:n].clone()


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch: int = 64) -> None:
    """A brief plain training run (Adam), so the attacks face a model that classifies."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()


def make_setups(args: argparse.Namespace) -> list[Setup]:
    setups = []
    try:
        train, test, info = load_dataset("fashion-mnist")
        data = "fashion-mnist"
    except ConfigError:
        train, test, info = make_synthetic(num_train=args.n_train, num_test=args.n, in_channels=1,
                                           image_size=(28, 28))
        data = "synthetic 1x28x28 (fashion-mnist not installed)"
    model = create_model("cnn8", num_classes=info.num_classes, in_channels=1, image_size=(28, 28),
                         mean=info.mean, std=info.std)
    xt, yt = _floats(train, args.n_train)
    _train(model, xt, yt, epochs=args.epochs)
    x, y = _floats(test, args.n)
    setups.append(Setup("cnn8", model, x, y, eps=args.eps_cnn8, alpha=args.eps_cnn8 / 4, data=data))

    train, test, info = make_synthetic(num_train=args.n_train, num_test=args.n, in_channels=3,
                                       image_size=(32, 32))
    model = create_model("resnet20", num_classes=info.num_classes, in_channels=3, image_size=(32, 32),
                         mean=info.mean, std=info.std)
    xt, yt = _floats(train, args.n_train)
    _train(model, xt, yt, epochs=args.epochs)
    x, y = _floats(test, args.n)
    setups.append(Setup("resnet20", model, x, y, eps=args.eps_resnet20, alpha=args.eps_resnet20 / 4,
                        data="synthetic 3x32x32"))
    return setups


# ---------------------------------------------------------------------------------------------
# Contenders and timing
# ---------------------------------------------------------------------------------------------


def contenders(s: Setup, args: argparse.Namespace, ta: object | None) -> dict[str, Attack]:
    kw = dict(eps=s.eps, alpha=s.alpha, steps=args.steps)
    c: dict[str, Attack] = {
        "plain PGD (baseline)": lambda x, y: plain_pgd(s.model, x, y, **kw),
    }
    if ta is not None:
        atk = ta.PGD(s.model, random_start=True, **kw)  # type: ignore[attr-defined]
        c["torchattacks PGD"] = lambda x, y: atk(x, y)
    threat = ThreatModel(eps=s.eps, alpha=s.alpha, steps=args.steps, random_start=True)
    registered = get_attack("pgd")
    c["project PGD"] = lambda x, y: registered(s.model, x, y, threat)
    c["project PGD, no early stop"] = lambda x, y: pgd(s.model, x, y, random_start=True, early_stop=False,
                                                       **kw)
    c["project PGD bf16"] = lambda x, y: registered(s.model, x, y, threat, precision="bf16")
    c[f"project APGD ({args.steps} steps)"] = lambda x, y: apgd(s.model, x, y, eps=s.eps, steps=args.steps)
    c[f"project Square ({args.queries} queries)"] = lambda x, y: square(s.model, x, y, eps=s.eps,
                                                                         queries=args.queries)
    return c


def run_once(attack: Attack, s: Setup, batch: int, seed: int) -> tuple[float, float]:
    """Attacks all images batch by batch; returns (seconds, robust accuracy)."""
    torch.manual_seed(seed)  # the same random starts for every repeat
    correct = 0
    t = time.perf_counter()
    advs = [attack(s.x[i:i + batch], s.y[i:i + batch]) for i in range(0, len(s.x), batch)]
    elapsed = time.perf_counter() - t
    with torch.no_grad():
        for i, xa in zip(range(0, len(s.x), batch), advs):
            correct += int((s.model(xa).argmax(1) == s.y[i:i + batch]).sum())
    return elapsed, correct / len(s.x)


def per_step_breakdown(s: Setup, batch: int, reps: int = 5) -> dict[str, float]:
    """Milliseconds for one forward+backward w.r.t. the input on one batch, several ways."""
    model = s.model.eval()
    x, y = s.x[:batch], s.y[:batch]

    def time_it(fn: Callable[[], object]) -> float:
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return 1000 * statistics.median(ts)

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    def backward_nchw() -> None:
        xa = x.clone().requires_grad_(True)
        model.zero_grad()
        F.cross_entropy(model(xa), y).backward()

    def grad_nchw() -> None:
        xa = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xa), y), xa)

    xcl = x.contiguous(memory_format=torch.channels_last)

    def grad_cl() -> None:
        xa = xcl.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xa), y), xa)

    def grad_cl_bf16() -> None:
        xa = xcl.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(xa).float()
        torch.autograd.grad(F.cross_entropy(out, y), xa)

    def with_cl_weights(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with conv_layout(model):
                fn()
        return run

    out = {
        "forward only (no_grad)": time_it(fwd),
        "fwd+bwd: loss.backward(), NCHW": time_it(backward_nchw),
        "fwd+bwd: autograd.grad(x), NCHW": time_it(grad_nchw),
        "fwd+bwd: autograd.grad(x), channels_last input": time_it(grad_cl),
        "fwd+bwd: autograd.grad(x), channels_last input + weights": time_it(with_cl_weights(grad_cl)),
        "fwd+bwd: autograd.grad(x), channels_last input + weights, bf16":
            time_it(with_cl_weights(grad_cl_bf16)),
    }
    model.zero_grad(set_to_none=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=128, help="test images attacked by every contender")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=1, help="training epochs over --n-train images")
    # budgets at which the briefly trained models keep a fair share of robust inputs, so early
    # stopping is not handed an easy win by a model every attack fools at once
    ap.add_argument("--eps-cnn8", type=float, default=0.1)
    ap.add_argument("--eps-resnet20", type=float, default=4 / 255)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        ta = importlib.import_module("torchattacks")
        ta_note = f"torchattacks {ta.__version__}"
    except Exception as e:  # noqa: BLE001 - any import failure just drops the column
        ta, ta_note = None, f"torchattacks not importable ({type(e).__name__}: {e}); column skipped"
    print(f"# attack throughput: torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.n} images, batch {args.batch}, L-inf, {args.steps} steps, alpha = eps/4, random start; "
          f"median of {args.repeats}; {ta_note}\n")

    t0 = time.perf_counter()
    setups = make_setups(args)
    print(f"(models trained in {time.perf_counter() - t0:.0f} s)\n")
    for s in setups:
        with torch.no_grad():
            clean = float((s.model(s.x).argmax(1) == s.y).float().mean())
        cs = contenders(s, args, ta)
        for fn in cs.values():  # warm-up (oneDNN primitive caches, autocast kernels)
            fn(s.x[:16], s.y[:16])
        times: dict[str, list[float]] = {k: [] for k in cs}
        accs: dict[str, float] = {}
        for r in range(args.repeats):
            for name, fn in cs.items():
                dt, acc = run_once(fn, s, args.batch, seed=r)
                times[name].append(dt)
                accs[name] = acc
        ips = {k: len(s.x) / statistics.median(v) for k, v in times.items()}
        base = ips["plain PGD (baseline)"]
        tav = ips.get("torchattacks PGD")
        print(f"## {s.name} ({s.data}), eps = {s.eps:.4f}, clean accuracy {clean:.3f}\n")
        print("| contender | images/s | vs plain | vs torchattacks | robust acc |")
        print("|---|---:|---:|---:|---:|")
        for k in cs:
            vs_ta = f"{ips[k] / tav:.2f}x" if tav else "n/a"
            print(f"| {k} | {ips[k]:.1f} | {ips[k] / base:.2f}x | {vs_ta} | {accs[k]:.3f} |")
        p = ips["project PGD"]
        print(f"\ntargets: project PGD / plain = {p / base:.2f}x (target >= 1.5x: "
              f"{'met' if p / base >= 1.5 else 'MISSED'})", end="")
        if tav:
            verdict = "met" if p / tav >= 1.2 else "MISSED"
            print(f"; / torchattacks = {p / tav:.2f}x (target >= 1.2x: {verdict})")
        else:
            print("; torchattacks: skipped")
        print(f"\nper step on one batch of {args.batch} (ms, median of 5):\n")
        for k, v in per_step_breakdown(s, args.batch).items():
            print(f"- {k}: {v:.1f}")
        print()
    print(f"(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
