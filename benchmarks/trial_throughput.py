"""Training images/s of `trainable.train` against a conventional PyTorch loop, in one run.

The reference loop (benchmarks/conventional.py) is the way most training
scripts are written: a dataset that yields PIL images, per-image torchvision
transforms, a DataLoader (the best of 0, 1, 2, 4, ... workers up to the cores), the same model,
batch size, optimizer and augmentation, fp32, trained in a process of its
own as a user's script would be. Ratios, not absolute numbers, are what
compare across machines.

Besides whole training it measures the two halves apart:
- the data pipeline alone, an epoch of batches and no model: our resident
  tensors cut into augmented batches (TrainBatches) against the DataLoader +
  PIL pipeline (best worker count);
- the compute floor: forward + backward + optimizer step of the same model on
  one resident batch, so our loop can be stated as a share of it;
and packing: `--packing N` trials side by side in N processes, the CPU threads
divided as `sweep run --workers N` divides them, their images/s summed.

    python benchmarks/trial_throughput.py [--images 6400] [--depth 20] [--device cpu|cuda|cpu,cuda]
                                          [--dataset fashion_mnist|synthetic] [--shape 3,32,32] [--packing 2]

`--device cuda` on a machine without CUDA prints a note and skips those rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # measure the checkout this script is in, not an installed copy

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import conventional  # noqa: E402
from sweeps.workers import threads_per_worker  # noqa: E402
from trainable import from_flat, train, with_key  # noqa: E402
from trainable import data as tdata  # noqa: E402
from trainable import optim  # noqa: E402
from trainable.augment import Normalize, TrainBatches  # noqa: E402
from trainable.config import TrialConfig  # noqa: E402
from trainable.models import build_model  # noqa: E402
from trainable.run import resolve_device  # noqa: E402

PRECISIONS = {"fp32": {"train.precision": "fp32", "train.channels_last": False},
              "bf16 + channels_last": {"train.precision": "bf16", "train.channels_last": True}}
# DataLoader worker counts the conventional loop is tried with (its best is the reference): up to this
# machine's cores, doubling (0, 1, 2, 4, ... ; a 2-core machine tries 0, 1, 2).
WORKERS = tuple(sorted({0, 1, *(2 ** k for k in range(1, 8) if 2 ** k <= (os.cpu_count() or 1))}))
MIN_PIPELINE_S = 1.0  # the resident pipeline runs an epoch in milliseconds: repeat epochs for this long


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(cfg: TrialConfig) -> float:
    return train(cfg)["images_per_s"]


def batches_of(cfg: TrialConfig, splits: tdata.Splits, device: torch.device) -> TrainBatches:
    norm = Normalize(splits.mean, splits.std, cfg.augment.normalize, device, cfg.train.channels_last)
    return TrainBatches(splits.train_x.to(device), splits.train_y.to(device), cfg.train.batch_size, cfg.augment,
                        norm, torch.Generator(device).manual_seed(0), splits.train_x.shape[-1])


def pipeline_ours(cfg: TrialConfig, splits: tdata.Splits) -> float:
    """Images/s of iterating TrainBatches (crop, flip, normalize, layout) with no model."""
    device = resolve_device(cfg.train.device)
    batches = batches_of(cfg, splits, device)
    for _ in batches:  # warm-up epoch
        pass
    seen, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < MIN_PIPELINE_S:
        for _, y in batches:
            seen += len(y)
        sync(device)
    return seen / (time.perf_counter() - t0)


def pipeline_conventional(splits: tdata.Splits, batch_size: int, workers: int, device: torch.device) -> float:
    """Images/s of an epoch of the DataLoader + PIL pipeline, onto the device, after a warm-up epoch."""
    batches = conventional.loader(splits, batch_size, workers, device)
    for _ in batches:  # starts the (persistent) workers
        pass
    seen, t0 = 0, time.perf_counter()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        seen += len(y)
    sync(device)
    return seen / (time.perf_counter() - t0)


def compute_floor(cfg: TrialConfig, splits: tdata.Splits, iters: int, warmup: int = 3) -> float:
    """Images/s of forward + backward + optimizer step of the trial's model on one resident batch."""
    device = resolve_device(cfg.train.device)
    tc = cfg.train
    torch.manual_seed(tc.seed)
    fmt = torch.channels_last if tc.channels_last else torch.preserve_format
    model = build_model(cfg.model, splits.num_classes, splits.in_channels).to(device, memory_format=fmt).train()
    opt = optim.build(model, cfg.optim, tc.batch_size)
    x, y = next(iter(batches_of(cfg, splits, device)))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.precision)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return iters * len(y) / (time.perf_counter() - t0)


def spawned(target, args: tuple, n: int = 1) -> list[float]:
    """What `target(*args, barrier, results)` puts on `results`, run in n fresh spawned processes at once
    (fresh interpreters, as sweep workers and users' scripts are); the barrier starts the measured parts together."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    return rates


def _conventional_trial(cfg: TrialConfig, workers: int, barrier, results) -> None:
    splits = tdata.load(cfg.data)
    few = dataclasses.replace(splits, train_x=splits.train_x[:4 * cfg.train.batch_size],
                              train_y=splits.train_y[:4 * cfg.train.batch_size])
    conventional.train(cfg, few, workers)  # warm-up: kernels, allocator
    barrier.wait()
    results.put(conventional.train(cfg, splits, workers)[0])


def conventional_in_fresh_process(cfg: TrialConfig, workers: int) -> float:
    """Images/s of the conventional loop run as a user's script runs: in a process of its own, so
    nothing this package sets for its trials (threads, malloc thresholds) carries over to it."""
    return spawned(_conventional_trial, (cfg, workers))[0]


def _packed_trial(cfg: TrialConfig, threads: int, barrier, results) -> None:
    torch.set_num_threads(threads)
    cfg = with_key(cfg, "train.threads", threads)
    train(cfg)  # warm-up: data load, allocator, kernels
    barrier.wait()  # the measured epochs run side by side
    results.put(ours(cfg))


def packed(cfg: TrialConfig, n: int) -> float:
    """Summed images/s of n trials of cfg in n processes at once, the threads divided as sweep workers'."""
    return sum(spawned(_packed_trial, (cfg, threads_per_worker(n)), n))


def base_config(args, device: str) -> dict:
    flat = {"data.dataset": args.dataset, "data.subset": args.images, "data.eval_subset": 1,
            "model.depth": args.depth, "train.epochs": 1, "train.batch_size": 128, "train.device": device}
    if args.dataset == "synthetic":  # enough images for the subset after the validation split
        flat.update({"data.synthetic_shape": list(args.shape), "data.synthetic_size": 2 * args.images})
    return flat


def measure(args, device: str) -> list[tuple[str, list[tuple[str, float, str]]]]:
    """The tables for one device: (title, rows of (name, images/s, comparison))."""
    flat = base_config(args, device)
    cfgs = {name: from_flat({**flat, **changes}) for name, changes in PRECISIONS.items()}
    dev = resolve_device(device)
    splits = tdata.load(cfgs["fp32"].data)
    ours(cfgs["fp32"])  # warm-up: data load, allocator, kernels
    iters = max(2, args.images // 128)
    bf16 = "bf16 + channels_last"

    def one_round() -> dict:
        """Every row measured once: rounds interleave, so the machine's drift hits all rows alike."""
        row = {("trial", name): ours(cfg) for name, cfg in cfgs.items()}
        row |= {("floor", name): compute_floor(cfg, splits, iters) for name, cfg in cfgs.items()}
        row |= {("pipe", f"channels_last={c}"): pipeline_ours(with_key(cfgs["fp32"], "train.channels_last", c), splits)
                for c in (False, True)}
        row |= {("pipe_conv", w): pipeline_conventional(splits, 128, w, dev) for w in WORKERS}
        row |= {("conv", w): conventional_in_fresh_process(cfgs["fp32"], w) for w in WORKERS}
        if args.packing > 1:
            row[("packed", bf16)] = packed(cfgs[bf16], args.packing)
        return row

    rounds = [one_round() for _ in range(args.repeats)]  # this machine is noisy: each row's median is shown
    medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}

    def part(kind: str) -> dict:
        return {name: v for (k, name), v in medians.items() if k == kind}

    trial, floor, pipe, pipe_conv, conv = (part(k) for k in ("trial", "floor", "pipe", "pipe_conv", "conv"))
    best, best_pipe = max(conv, key=conv.get), max(pipe_conv, key=pipe_conv.get)
    ref, ref_pipe = conv[best], pipe_conv[best_pipe]

    loops = [(f"recipe-sweep {name}", ips, f"{ips / ref:.2f}x") for name, ips in trial.items()]
    loops.append((f"conventional fp32 (DataLoader, {best} workers)", ref, "1.00x"))
    if args.packing > 1:
        ips, threads = medians[("packed", bf16)], threads_per_worker(args.packing)
        each = f"{threads} thread{'s' * (threads > 1)}"
        loops.append((f"recipe-sweep {bf16}, {args.packing} processes x {each} (sum)", ips, f"{ips / ref:.2f}x"))
    floors = [(f"model step alone, {name}", floor[name], f"{100 * trial[name] / floor[name]:.0f}%")
              for name in PRECISIONS]
    pipes = [(f"recipe-sweep TrainBatches, {name}", ips, f"{ips / ref_pipe:.1f}x") for name, ips in pipe.items()]
    pipes.append((f"conventional DataLoader + PIL ({best_pipe} workers)", ref_pipe, "1.0x"))
    return [("| loop | images/s | vs conventional |", loops),
            ("| compute floor: one resident batch | images/s | recipe-sweep as % of it |", floors),
            ("| data pipeline alone, no model | images/s | vs conventional |", pipes)]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def shape(text: str) -> tuple[int, ...]:
    dims = tuple(int(v) for v in text.split(","))
    if len(dims) != 3 or min(dims) < 1 or dims[0] not in (1, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: give channels,height,width with 1 or 3 channels "
                                         "(the conventional loop makes PIL images)")
    return dims


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=6400, help="training images per epoch")
    ap.add_argument("--depth", type=int, default=20, help="ResNet-preact depth")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, or both as cpu,cuda")
    ap.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "synthetic"))
    ap.add_argument("--shape", type=shape, default=(3, 32, 32), help="synthetic images: C,H,W (CIFAR-10: 3,32,32)")
    ap.add_argument("--packing", type=int, default=2, help="trials side by side in as many processes (1: off)")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per row; the median is shown")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    data = "Fashion-MNIST" if args.dataset == "fashion_mnist" else f"synthetic {'x'.join(map(str, args.shape))}"
    print(f"# trial throughput, ResNet-preact-{args.depth}, {data}, batch 128, {args.images} images")
    print(f"# {date.today()} {cpu_name()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, commit {commit}")
    found = {}
    for device in args.device.split(","):
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"\n# {device}: CUDA is not available on this machine; its rows are skipped")
            continue
        label = torch.cuda.get_device_name(resolve_device(device)) if device.startswith("cuda") else "cpu"
        prefix = "" if device == "cpu" else f"{device}: "
        for i, (title, rows) in enumerate(measure(args, device)):
            if i == 0 and device != "cpu":
                print(f"\n# {device} ({label})")
            elif i > 0:
                print()
            print(f"{title}\n| --- | ---: | ---: |")
            for name, ips, vs in rows:
                print(f"| {name} | {ips:,.0f} | {vs} |")
                found[prefix + name] = round(ips, 1)
    print(json.dumps(found))


if __name__ == "__main__":
    main()
