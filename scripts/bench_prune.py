"""CPU latency of structurally pruned networks against their dense originals, side by side.

For each model, channel pruning (magnitude criterion, the same fraction of output channels removed
in every layer) at each sparsity gives a physically smaller network. All variants of a model are
timed in one process, round-robin (dense, 30%, 50%, 70%, dense, ...), so drift on a shared machine
hits them alike. Reported per variant: effective MACs, the MAC ratio dense / pruned (the ideal
speedup), the measured median latency at batch 128 and batch 1, the speedup, and speedup / MAC
ratio (1.0 = the whole MAC saving shows up as time).

Target: wherever MACs fall by at least half (MAC ratio >= 2), speedup >= 0.7 x MAC ratio.

Usage:
    python scripts/bench_prune.py [--threads 1] [--repeats 7] [--sparsities 0.3 0.5 0.7]
        [--round-to 8] [--fold-bn] [--channels-last]

The machine must be otherwise idle for the ratios to mean anything: on a loaded 2-core machine the
same model's latency moves by 30% between rounds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from searchprune.config import PruneConfig
from searchprune.macs import count_macs
from searchprune.models import create_model
from searchprune.prune import prune_

MODELS = {  # name -> (input shape (C, H, W), create_model kwargs)
    "cnn8": ((1, 28, 28), {"in_channels": 1, "image_size": (28, 28)}),
    "resnet20": ((3, 32, 32), {"in_channels": 3, "image_size": (32, 32)}),
}


def _time_once(model: nn.Module, x: torch.Tensor, inner: int) -> float:
    """Seconds per forward, averaged over ``inner`` back-to-back forwards."""
    t0 = time.perf_counter()
    for _ in range(inner):
        model(x)
    return (time.perf_counter() - t0) / inner


def bench_model(name: str, sparsities: list[float], *, repeats: int, batch_sizes: tuple[int, ...],
                inner_b1: int, round_to: int = 1, channels_last: bool = False,
                fold_bn: bool = False) -> list[dict]:
    shape, kw = MODELS[name]
    torch.manual_seed(0)
    dense = create_model(name, num_classes=10, **kw).eval()
    variants: list[tuple[float, nn.Module]] = [(0.0, dense)]
    for s in sparsities:
        model = copy.deepcopy(dense)
        cfg = PruneConfig(method="magnitude", granularity="channel", allocation="uniform", sparsity=s,
                          options={"round_to": round_to} if round_to > 1 else {})
        prune_(model, cfg, input_shape=shape)
        variants.append((s, model.eval()))
    macs = [count_macs(m, shape) for _, m in variants]
    if fold_bn:  # deployment form: BatchNorm folded into the preceding conv (torch.fx), same for all
        from torch.fx.experimental.optimization import fuse

        variants = [(s, fuse(m)) for s, m in variants]
    if channels_last:
        variants = [(s, m.to(memory_format=torch.channels_last)) for s, m in variants]
    times: dict[int, list[list[float]]] = {b: [[] for _ in variants] for b in batch_sizes}
    with torch.inference_mode():
        for b in batch_sizes:
            x = torch.rand(b, *shape)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            inner = 1 if b > 1 else inner_b1
            for _, m in variants:  # warm-up (allocator, oneDNN primitive caches)
                _time_once(m, x, max(2, inner // 4))
            for _ in range(repeats):
                for i, (_, m) in enumerate(variants):
                    times[b][i].append(_time_once(m, x, inner))
    rows = []
    for i, (s, _) in enumerate(variants):
        row = {"model": name, "sparsity": s, "macs": macs[i], "mac_ratio": macs[0] / macs[i]}
        for b in batch_sizes:
            med = statistics.median(times[b][i])
            row[f"ms_b{b}"] = med * 1e3
            row[f"speedup_b{b}"] = statistics.median(times[b][0]) / med
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads, fixed for all variants (1: steadiest when shared)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per variant; the median is reported")
    ap.add_argument("--inner-b1", type=int, default=20, help="forwards averaged per batch-1 timing")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--round-to", type=int, default=1,
                    help="keep a multiple of this many channels per layer (oneDNN blocks of 8/16)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory format for every variant")
    ap.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into convs in every variant")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batch_sizes = (128, 1)

    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} rounds; "
          f"batch 1 averages {args.inner_b1} forwards per round; round_to={args.round_to}, "
          f"channels_last={args.channels_last}, fold_bn={args.fold_bn}")
    head = (f"{'model':<9} {'channels':>8} {'MMACs':>8} {'MAC ratio':>9} | {'b128 ms':>8} {'speedup':>7} "
            f"{'/MACr':>5} | {'b1 ms':>6} {'speedup':>7} {'/MACr':>5}")
    print(head)
    print("-" * len(head))
    misses = []
    for name in args.models:
        for r in bench_model(name, args.sparsities, repeats=args.repeats, batch_sizes=batch_sizes,
                             inner_b1=args.inner_b1, round_to=args.round_to,
                             channels_last=args.channels_last, fold_bn=args.fold_bn):
            label = "dense" if r["sparsity"] == 0 else f"-{r['sparsity']:.0%}"
            eff = [r[f"speedup_b{b}"] / r["mac_ratio"] for b in batch_sizes]
            print(f"{r['model']:<9} {label:>8} {r['macs'] / 1e6:>8.2f} {r['mac_ratio']:>9.2f} | "
                  f"{r['ms_b128']:>8.2f} {r['speedup_b128']:>6.2f}x {eff[0]:>5.2f} | "
                  f"{r['ms_b1']:>6.3f} {r['speedup_b1']:>6.2f}x {eff[1]:>5.2f}")
            if r["mac_ratio"] >= 2:
                misses += [f"{name} -{r['sparsity']:.0%} batch {b}: {e:.2f}"
                           for b, e in zip(batch_sizes, eff) if e < 0.7]
    print("\ntarget (MAC ratio >= 2 -> speedup >= 0.7 x MAC ratio): "
          + ("met" if not misses else "missed for " + "; ".join(misses)))


if __name__ == "__main__":
    main()
