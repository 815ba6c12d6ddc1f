"""Images/s of one trial as its ranks grow (train.devices), against the same trial on one rank.

    python benchmarks/scaling.py [--ranks 1,2] [--rounds 3] [--device cpu|cuda]

Each row is one trial of ResNet-preact-20 on Fashion-MNIST (6,400 training images, global batch
128, bf16 autocast on the CPU and channels_last), run as the Optuna engine runs it: a process per
rank (sweeps.isolated), DistributedDataParallel over gloo (CPU) or NCCL (GPU). On the CPU the
machine's cores are shared out: 1 rank x all threads against N ranks x cores/N threads. The
figure is the second epoch's images/s for the whole trial; rows are interleaved over rounds and
the median is shown. Scaling efficiency = (images/s at N ranks) / (N x images/s at 1 rank) on
GPUs, where each rank adds a device; on a CPU the cores stay the same, so the ratio to 1 rank is
the figure.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from search_spaces.load import parse_spec  # noqa: E402
from sweeps import isolated  # noqa: E402


def spec(ranks: int, device: str):
    base = {"data.dataset": "fashion_mnist", "data.subset": 6400, "data.eval_subset": 512,
            "model.name": "resnet_preact", "model.depth": 20, "train.epochs": 2, "train.batch_size": 128,
            "train.precision": "bf16" if device == "cpu" else "fp32", "train.channels_last": True,
            "train.device": device, "train.devices": ranks}
    return parse_spec(yaml.safe_dump({"name": "scaling", "budget": {"trials": 1}, "base": base,
                                      "space": {"optim.lr": {"fixed": 0.1}}}))


def rate(ranks: int, device: str) -> float:
    epochs = []
    isolated.run(spec(ranks, device), {}, lambda epoch, per_seed: epochs.append(per_seed[0]), lambda rows: None)
    return epochs[-1]["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    counts = [int(r) for r in args.ranks.split(",")]
    torch.set_num_threads(os.cpu_count() or 1)  # shared out among a trial's ranks (sweeps.isolated)
    runs: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            runs[n].append(rate(n, args.device))
            print(f"  {n} rank(s): {runs[n][-1]:.0f} images/s", flush=True)
    one = statistics.median(runs[counts[0]])
    print(f"\nResNet-preact-20, Fashion-MNIST, global batch 128, on {args.device}, {os.cpu_count()} cores "
          f"({platform.processor() or platform.machine()}), torch {torch.__version__}, {date.today()}, "
          f"median of {args.rounds} interleaved rounds")
    print(f"| ranks | images/s (whole trial) | vs {counts[0]} rank(s) | efficiency (per added device) |")
    print("|---|---|---|---|")
    for n in counts:
        r = statistics.median(runs[n])
        print(f"| {n} | {r:.0f} | {r / one:.2f}x | {r / (n / counts[0] * one):.0%} |")


if __name__ == "__main__":
    main()
