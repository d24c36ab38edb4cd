"""CPU latency of channel-pruned networks, raw and in their exported (deployable) form, beside dense.

For each model, channel pruning (magnitude criterion, the same fraction of output channels removed
in every layer, optionally keeping a multiple of ``--round-to`` channels) gives physically smaller
networks. Each network is timed twice: *raw* (as ``prune_`` leaves it: BatchNorm separate, NCHW)
and *deployed* (``searchprune.deploy.deployable``: BatchNorm folded, channels_last where the
timing says it helps). All forms of a model are timed in one process, round-robin (dense raw,
dense deployed, -30% raw, ...), so drift on a shared machine hits them alike.

Reported per network: effective MACs, the MAC ratio dense / pruned (the ideal speedup), and for
each form the median latency, the speedup over the dense network *in the same form* and
speedup / MAC ratio (1.0 = the whole MAC saving shows up as time); ``ACTr`` is the ratio of activation entries
written by the conv / linear layers (memory traffic falls with channels, MACs with their square);
``MACr16`` the MAC ratio with output channels counted in blocks of 16 (what AVX-512 fp32
kernels execute, :func:`blocked_macs`) and ``/MACr16`` the deployed speedup against it;
``deploy/raw`` is how much
faster the deployed form of the same network is. Where a deployed network misses 0.8 x its MAC
ratio, the per-layer times of dense and pruned (deployed, NCHW/NHWC as chosen) say where.

Target (issue 14): deployed speedup >= 0.8 x MAC ratio at batch 128 for 30-70% channel sparsity.

Usage:
    OMP_NUM_THREADS=1 python scripts/bench_prune.py [--threads 1] [--repeats 15] [--batch 128]
        [--sparsities 0.3 0.5 0.7] [--round-to 1 8] [--models cnn8 resnet20]

The machine must be otherwise idle for the ratios to mean anything: on a loaded 2-core machine the
same model's latency moves by 30% between rounds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from searchprune.config import PruneConfig
from searchprune.deploy import LatencyCache, deployable
from searchprune.models import create_model
from searchprune.models.macs import count_macs, layer_costs
from searchprune.prune import prune_

MODELS: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {  # name -> (input (C, H, W), create_model kwargs)
    "cnn8": ((1, 28, 28), {"in_channels": 1, "image_size": (28, 28)}),
    "resnet20": ((3, 32, 32), {"in_channels": 3, "image_size": (32, 32)}),
}
TARGET = 0.8
BLOCK = 16  # output channels per fp32 vector register on AVX-512 (see blocked_macs)


def _time_once(model: nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def _randomized_bn_(model: nn.Module) -> nn.Module:
    """Trained-looking BatchNorm statistics (fresh ones are the identity): folding must do real work."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def networks(name: str, sparsities: list[float], round_tos: list[int]) -> list[tuple[str, nn.Module]]:
    """``[(label, eval model)]``: the dense model, then each sparsity x round_to."""
    shape, kw = MODELS[name]
    torch.manual_seed(0)
    dense = _randomized_bn_(create_model(name, num_classes=10, **kw))
    out: list[tuple[str, nn.Module]] = [("dense", dense)]
    for r in round_tos:
        for s in sparsities:
            model = copy.deepcopy(dense)
            cfg = PruneConfig(method="magnitude", granularity="channel", allocation="uniform", sparsity=s,
                              options={"round_to": r} if r > 1 else {})
            prune_(model, cfg, input_shape=shape)
            out.append((f"-{s:.0%}" + (f" r{r}" if r > 1 else ""), model.eval()))
    return out


def activation_entries(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Entries per image written by the conv / linear layers (out channels x output positions).

    Memory traffic of activations (and of the elementwise ops on them) falls with the channel count,
    MACs with its square: where the speedup sits between this ratio and the MAC ratio, the pruned
    network is bound by memory traffic rather than by multiply-adds.
    """
    modules = dict(model.named_modules())
    total = 0
    for n, c in layer_costs(model, shape).items():
        w = modules[n].weight
        total += int(w.shape[0]) * c.out_positions
    return total


def blocked_macs(model: nn.Module, shape: tuple[int, ...], block: int) -> int:
    """MACs per image with each layer's output channels rounded up to a multiple of ``block``.

    The fp32 oneDNN kernels on an AVX-512 CPU hold 16 output channels in one vector register, so a
    layer's time follows ``ceil(C_out / 16)``, not ``C_out`` (measured: a 3x3 conv 16->8 channels at
    32x32, batch 128, NHWC takes 0.96x the time of 16->16). Dense / this is the ideal speedup such
    kernels can reach.
    """
    modules = dict(model.named_modules())
    total = 0
    for n, c in layer_costs(model, shape).items():
        out = int(modules[n].weight.shape[0])
        total += c.dense_macs // out * (-(-out // block) * block)
    return total


def layer_times(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median ms per conv / linear layer (forward hooks around each call)."""
    starts: dict[str, float] = {}
    times: dict[str, list[float]] = {}
    handles = []
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            def pre(mod: nn.Module, args: object, n: str = n) -> None:
                starts[n] = time.perf_counter()

            def post(mod: nn.Module, args: object, out: object, n: str = n) -> None:
                times.setdefault(n, []).append(time.perf_counter() - starts[n])

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            for _ in range(repeats):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: statistics.median(v) * 1e3 for n, v in times.items()}


def bench_model(name: str, sparsities: list[float], *, repeats: int, batch: int, round_tos: list[int],
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per network: MACs, MAC ratio, and per form (raw, deploy) ms, speedup and speedup / MAC ratio."""
    shape, _ = MODELS[name]
    nets = networks(name, sparsities, round_tos)
    macs = [count_macs(m, shape) for _, m in nets]
    acts = [activation_entries(m, shape) for _, m in nets]
    blocked = [blocked_macs(m, shape, BLOCK) for _, m in nets]
    x = torch.rand(batch, *shape)
    cache = LatencyCache()
    forms: list[tuple[int, str, nn.Module]] = []  # (network index, form, module)
    for i, (_, m) in enumerate(nets):
        forms.append((i, "raw", m))
        forms.append((i, "deploy", deployable(m, example_input=x, channels_last="auto", repeats=5, cache=cache)))
    times: list[list[float]] = [[] for _ in forms]
    with torch.inference_mode():
        for _, _, m in forms:  # warm-up (allocator, oneDNN primitive caches)
            _time_once(m, x)
            _time_once(m, x)
        for _ in range(repeats):
            for j, (_, _, m) in enumerate(forms):
                times[j].append(_time_once(m, x))
    med = {(forms[j][0], forms[j][1]): statistics.median(times[j]) * 1e3 for j in range(len(forms))}
    rows = []
    for i, (label, _) in enumerate(nets):
        row: dict[str, Any] = {"model": name, "label": label, "macs": macs[i], "mac_ratio": macs[0] / macs[i],
                     "act_ratio": acts[0] / acts[i], "block_ratio": blocked[0] / blocked[i]}
        for form in ("raw", "deploy"):
            row[f"{form}_ms"] = med[(i, form)]
            row[f"{form}_speedup"] = med[(0, form)] / med[(i, form)]
            row[f"{form}_eff"] = row[f"{form}_speedup"] / row["mac_ratio"]
        dep = next(m for k, f, m in forms if k == i and f == "deploy")
        row["channels_last"] = getattr(dep, "deploy_info").channels_last  # set by deployable()
        row["deploy_block_eff"] = row["deploy_speedup"] / row["block_ratio"]
        row["deploy_vs_raw"] = med[(i, "raw")] / med[(i, "deploy")]
        rows.append(row)
    # where the deployed form misses the target, per layer: which layers do not shrink with their MACs
    dense_dep = next(m for k, f, m in forms if k == 0 and f == "deploy")
    dense_layers = None
    for i, row in enumerate(rows):
        if i == 0 or row["deploy_eff"] >= TARGET:
            continue
        if dense_layers is None:
            dense_layers = layer_times(dense_dep, x, max(3, repeats // 3))
        dep = next(m for k, f, m in forms if k == i and f == "deploy")
        pruned_layers = layer_times(dep, x, max(3, repeats // 3))
        costs = {}
        dense_costs, pruned_costs = layer_costs(nets[0][1], shape), layer_costs(nets[i][1], shape)
        for n in pruned_layers:
            if n in dense_layers and n in dense_costs and n in pruned_costs:
                costs[n] = (dense_layers[n] / pruned_layers[n], dense_costs[n].macs / max(pruned_costs[n].macs, 1),
                            pruned_layers[n])
        convs = sum(pruned_layers.values())
        row["layer_ms"] = convs
        worst = sorted(costs.items(), key=lambda kv: kv[1][1] - kv[1][0], reverse=True)[:3]
        row["reason"] = (f"conv/linear layers {convs:.1f} of {row['deploy_ms']:.1f} ms; layers furthest below "
                         "their MAC ratio (speedup vs MAC ratio, ms): "
                         + ", ".join(f"{n} {s:.2f}x/{r:.2f}x {t:.2f}" for n, (s, r, t) in worst))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads, fixed for all variants (1: steadiest when shared)")
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds per form; the median is reported")
    ap.add_argument("--batch", type=int, default=128, help="images per timed forward")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--round-to", type=int, nargs="+", default=[1],
                    help="prune keeping a multiple of this many channels per group (several: one set each)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of {args.repeats} "
          f"rounds; speedups against the dense network in the same form")
    head = (f"{'model':<9} {'channels':>9} {'MMACs':>7} {'MACr':>5} {'ACTr':>4} | "
            f"{'raw ms':>7} {'speedup':>7} {'/MACr':>5} | "
            f"{'deploy ms':>9} {'speedup':>7} {'/MACr':>5} {'NHWC':>4} | {'dep/raw':>7} | {'MACr16':>6} {'/MACr16':>7}")
    print(head)
    print("-" * len(head))
    misses, reasons = [], []
    for name in args.models:
        for r in bench_model(name, args.sparsities, repeats=args.repeats, batch=args.batch,
                             round_tos=args.round_to):
            print(f"{r['model']:<9} {r['label']:>9} {r['macs'] / 1e6:>7.2f} {r['mac_ratio']:>5.2f} "
                  f"{r['act_ratio']:>4.1f} | "
                  f"{r['raw_ms']:>7.2f} {r['raw_speedup']:>6.2f}x {r['raw_eff']:>5.2f} | "
                  f"{r['deploy_ms']:>9.2f} {r['deploy_speedup']:>6.2f}x {r['deploy_eff']:>5.2f} "
                  f"{'yes' if r['channels_last'] else 'no':>4} | {r['deploy_vs_raw']:>6.2f}x | "
                  f"{r['block_ratio']:>6.2f} {r['deploy_block_eff']:>7.2f}")
            if r["label"] != "dense" and r["deploy_eff"] < TARGET:
                misses.append(f"{name} {r['label']}: {r['deploy_eff']:.2f}")
                reasons.append(f"  {name} {r['label']}: {r['reason']}")
    print(f"\ntarget (deployed speedup >= {TARGET} x MAC ratio): "
          + ("met everywhere" if not misses else "missed for " + "; ".join(misses)))
    for line in reasons:
        print(line)


if __name__ == "__main__":
    main()
