"""Training images/s of `trainable.train` against a conventional PyTorch loop, in one run.

The reference loop is the way most training scripts are written: a dataset
that yields PIL images, per-image torchvision transforms, a DataLoader (best
worker count of 0, 1, 2), the same model, batch size, optimizer and
augmentation. Ratios, not absolute numbers, are what compare across machines.

    python benchmarks/trial_throughput.py [--images 6400] [--depth 20]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from trainable import from_flat, train
from trainable import data as tdata
from trainable.models import build_model


class PilDataset(torch.utils.data.Dataset):
    """What torchvision's MNIST-style datasets do per item: uint8 array -> PIL -> transforms."""

    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x.squeeze(1).numpy(), y.tolist(), transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i], mode="L")), self.y[i]


def conventional(cfg, workers: int) -> float:
    splits = tdata.load(cfg.data)
    tf = T.Compose([T.RandomCrop(28, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(splits.mean, splits.std)])
    loader = torch.utils.data.DataLoader(PilDataset(splits.train_x, splits.train_y, tf), cfg.train.batch_size,
                                         shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, 10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    seen, t0 = 0, time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def ours(cfg) -> float:
    return train(cfg)["images_per_s"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6400)
    ap.add_argument("--depth", type=int, default=20)
    args = ap.parse_args()
    base = {"data.subset": args.images, "data.eval_subset": 1, "model.depth": args.depth, "train.epochs": 1,
            "train.batch_size": 128, "train.channels_last": False}
    rows = {}
    ours(from_flat(base))  # warm-up: data load, allocator, kernels
    rows["recipe-sweep fp32"] = ours(from_flat(base))
    rows["recipe-sweep bf16 + channels_last"] = ours(
        from_flat({**base, "train.precision": "bf16", "train.channels_last": True}))
    conv = {w: conventional(from_flat(base), w) for w in (0, 1, 2)}
    best = max(conv, key=conv.get)
    rows[f"conventional fp32 (DataLoader, {best} workers)"] = conv[best]
    ref = conv[best]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    print(f"# trial throughput, ResNet-preact-{args.depth}, Fashion-MNIST, batch 128, {args.images} images")
    print(f"# {date.today()} {cpu_name()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, commit {commit}")
    print("| loop | images/s | vs conventional |\n| --- | ---: | ---: |")
    for name, ips in rows.items():
        print(f"| {name} | {ips:,.0f} | {ips / ref:.2f}x |")
    print(json.dumps({k: round(v, 1) for k, v in rows.items()}))


if __name__ == "__main__":
    main()
