"""Latency and prediction agreement of fp32 vs fake-quant vs real int8, side by side.

For each model (cnn8 on Fashion-MNIST 1x28x28, resnet20 on 3x32x32 synthetic data unless CIFAR-10
is on disk) the script briefly trains the fp32 model so predictions mean something, builds the
fake-quant model (``quantize_``, w8/a8, per-channel, min-max calibration) and the int8 model
(``to_int8`` on the same calibration batches), then times the three in an interleaved loop
(one forward of each per round, so machine noise hits all alike) at batch 128 and 1, and
reports the median latency, ratios against fp32, accuracies and prediction agreement.

Usage:
    python scripts/bench_quant.py                       # both models, 2 threads
    python scripts/bench_quant.py --models cnn8 --threads 1 --train-images 0
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from searchprune.config import QuantConfig
from searchprune.data import ArrayDataset, BatchLoader, DatasetInfo, load_dataset, make_synthetic
from searchprune.errors import ConfigError
from searchprune.models import create_model
from searchprune.quantize import int8_backend, quantize_, to_int8

MODELS = {  # name -> (preferred dataset, fallback input shape)
    "cnn8": ("fashion-mnist", (1, 28, 28)),
    "resnet20": ("cifar10", (3, 32, 32)),
}


def _data(arch: str) -> tuple[ArrayDataset, ArrayDataset, DatasetInfo]:
    name, shape = MODELS[arch]
    try:
        return load_dataset(name)
    except ConfigError:  # not on disk: a synthetic task of the same shape
        return make_synthetic(num_train=4096, num_test=2048, in_channels=shape[0], image_size=shape[1:])


def _train(model: nn.Module, train: ArrayDataset, images: int, seed: int) -> None:
    if images <= 0:
        return
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for x, y in BatchLoader(train, 128, shuffle=True, seed=seed, max_images=images):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def _latencies(fns: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, *, rounds: int,
               warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each fn, measured round-robin."""
    for _ in range(warmup):
        for fn in fns.values():
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def _predict(model: Callable[[torch.Tensor], torch.Tensor],
             loader: BatchLoader) -> tuple[torch.Tensor, torch.Tensor]:
    preds, labels = [], []
    for x, y in loader:
        preds.append(model(x).argmax(1))
        labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def bench(arch: str, args: argparse.Namespace) -> list[str]:
    train, test, info = _data(arch)
    model = create_model(arch, num_classes=info.num_classes, in_channels=info.in_channels,
                         image_size=info.image_size, mean=info.mean, std=info.std)
    t0 = time.perf_counter()
    _train(model, train, args.train_images, args.seed)
    train_s = time.perf_counter() - t0

    cfg = QuantConfig(mode="ptq", weight_bits=8, act_bits=8, calib_batches=args.calib_batches)
    calib = BatchLoader(train, 128, shuffle=True, seed=args.seed + 1)
    fq = quantize_(copy.deepcopy(model), cfg, calib_loader=calib)
    t0 = time.perf_counter()
    int8 = to_int8(fq, calib, num_batches=cfg.calib_batches)
    export_s = time.perf_counter() - t0

    def fq_cached(x: torch.Tensor) -> torch.Tensor:
        with parametrize.cached():  # quantized weights computed once per call instead of per use
            return fq(x)

    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "fp32": model, "fake-quant w8a8": fq, "fake-quant, parametrize.cached": fq_cached,
        f"int8 (torch.ao {int8_backend()})": int8,
    }

    test_loader = BatchLoader(test, 256, max_images=args.eval_images)
    preds = {k: _predict(m, test_loader) for k, m in variants.items() if "cached" not in k}
    y = preds["fp32"][1]
    acc = {k: (p == y).float().mean().item() for k, (p, _) in preds.items()}
    agree_fq = {k: (p == preds["fake-quant w8a8"][0]).float().mean().item() for k, (p, _) in preds.items()}
    agree_fp = {k: (p == preds["fp32"][0]).float().mean().item() for k, (p, _) in preds.items()}

    x_all = next(iter(BatchLoader(test, 128)))[0]
    lat128 = _latencies(variants, x_all, rounds=args.rounds)
    lat1 = _latencies(variants, x_all[:1], rounds=args.rounds * 5)

    shape = "x".join(str(s) for s in (info.in_channels, *info.image_size))
    rows = [f"\n### {arch} ({shape}, {info.name}; trained on {args.train_images} images in {train_s:.0f} s; "
            f"int8 export {export_s:.1f} s; accuracy on {len(y)} test images)\n",
            "| variant | batch 128 ms | vs fp32 | batch 1 ms | vs fp32 | accuracy | agrees w/ fp32 "
            "| agrees w/ fake-quant |",
            "|---|---|---|---|---|---|---|---|"]
    for k in variants:
        quality = (f"{acc[k]:.4f} | {agree_fp[k]:.4f} | {agree_fq[k]:.4f}" if k in preds
                   else "same as fake-quant | | ")
        rows.append(f"| {k} | {lat128[k] * 1e3:.2f} | {lat128['fp32'] / lat128[k]:.2f}x | "
                    f"{lat1[k] * 1e3:.3f} | {lat1['fp32'] / lat1[k]:.2f}x | {quality} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (fixed for all runs)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds at batch 128 (x5 at batch 1)")
    p.add_argument("--train-images", type=int, default=2048, help="images of brief fp32 training (0: none)")
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), engine "
          f"{torch.backends.quantized.engine} after export, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; median of {args.rounds} (batch 128) / "
          f"{args.rounds * 5} (batch 1) interleaved rounds")
    for arch in args.models:
        print("\n".join(bench(arch, args)), flush=True)


if __name__ == "__main__":
    main()
