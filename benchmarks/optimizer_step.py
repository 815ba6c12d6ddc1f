"""Time of one optimizer step over a real model's parameters, for every optimizer the trainable builds.

    python benchmarks/optimizer_step.py [--depth 20] [--device cpu|cuda] [--steps 200]

Rows: each optimizer as `trainable.optim.build` makes it (torch's fused kernels for
SGD, Adam and AdamW; foreach steps for LARS, LAMB and AdaBound), and torch's
SGD, Adam and AdamW with their default (foreach) implementation as the reference,
measured in the same run, interleaved, median of 5 rounds.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from trainable import from_flat, optim  # noqa: E402
from trainable.models import build_model  # noqa: E402

SETTINGS = {"sgd": {"optim.momentum": 0.9, "optim.nesterov": True, "optim.weight_decay": 5e-4},
            "adam": {"optim.lr": 1e-3}, "adamw": {"optim.lr": 1e-3, "optim.weight_decay": 0.05},
            "lars": {"optim.weight_decay": 5e-4}, "lamb": {"optim.lr": 1e-3, "optim.weight_decay": 0.01},
            "adabound": {"optim.lr": 1e-3}}
REFERENCE = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def step_time(opt: torch.optim.Optimizer, params: list, steps: int, device: torch.device) -> float:
    for _ in range(5):
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    device = torch.device(args.device)
    model = build_model(from_flat({"model.name": "resnet_preact", "model.depth": args.depth}).model, 10, 3).to(device)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2

    def ours(name):
        cfg = from_flat({"optim.name": name, **SETTINGS[name]}).optim
        return optim.build(model, cfg, 128)

    def reference(name):
        cfg = from_flat({"optim.name": name, **SETTINGS[name]}).optim
        kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
        if name == "sgd":
            kwargs |= {"momentum": cfg.momentum, "nesterov": cfg.nesterov}
        return REFERENCE[name](optim.param_groups(model, cfg), foreach=True, **kwargs)

    rows = {**{(n, "trainable.optim.build"): (ours, n) for n in SETTINGS},
            **{(n, "torch foreach (reference)"): (reference, n) for n in REFERENCE}}
    rounds = []
    for _ in range(5):
        rounds.append({key: step_time(make(n), params, args.steps, device) for key, (make, n) in rows.items()})
    median = {key: statistics.median(r[key] for r in rounds) for key in rows}
    print(f"{len(params)} tensors, {sum(p.numel() for p in params):,} parameters (ResNet-preact-{args.depth}), "
          f"{args.device}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{date.today()}")
    print("| optimizer | implementation | ms per step | vs torch foreach |")
    print("|---|---|---|---|")
    for (name, impl), seconds in median.items():
        ref = median.get((name, "torch foreach (reference)"))
        ratio = f"{ref / seconds:.2f}x faster" if ref and impl != "torch foreach (reference)" else ""
        print(f"| {name} | {impl} | {seconds * 1e3:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
