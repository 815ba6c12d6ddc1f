"""Images/s of the streamed image-folder pipeline alone (no model), against the conventional one.

    python benchmarks/image_pipeline.py [--size 224] [--images 1200] [--source 500x375] [--workers 1,2]
                                        [--device cuda --decode workers,device]

Both read the same folder of RGB JPEGs (Fashion-MNIST written out at --source size, about an
ImageNet photo's) and give normalized training batches of 64 at --size: ours is
`trainable.stream.StreamBatches` (random resized crop in the loader's workers, JPEGs decoded
at a fraction of their size where the crop allows, uint8 batches, flip and normalization
batched); the conventional one is torchvision's ImageFolder with RandomResizedCrop,
RandomHorizontalFlip, ToTensor and Normalize per image in a DataLoader. Each worker count runs
both, interleaved, median of 3 passes; the ratio at equal workers is the per-core comparison.
With --device cuda, batches end on the GPU, and `--decode device` adds rows where the workers only
read the files and draw the crops and the GPU decodes (nvJPEG) and cuts them (data.decode: device).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from jpeg_folder import write_jpeg_folder  # noqa: E402
from trainable import from_flat, stream  # noqa: E402
from trainable.augment import Normalize  # noqa: E402

BATCH = 64


def ours(folder: Path, size: int, workers: int, batches: int, device: torch.device, decode: str) -> float:
    cfg = from_flat({"data.dataset": "image_folder", "data.root": str(folder), "data.image_size": size,
                     "data.storage": "stream", "data.workers": workers, "data.val_fraction": 0.0,
                     "data.decode": decode, "augment.random_resized_crop": True, "augment.crop_padding": 0})
    src = stream.source(cfg.data)
    normalize = Normalize(src.mean, src.std, True, device, True)
    loader = stream.StreamBatches(src, cfg.data, cfg.augment, BATCH, normalize,
                                  torch.Generator(device).manual_seed(0), device)
    return _rate(loader, batches, device)


def conventional(folder: Path, size: int, workers: int, batches: int, device: torch.device) -> float:
    from torchvision import datasets, transforms
    tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.25,) * 3)])
    data = datasets.ImageFolder(str(folder / "train"), tf)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    return _rate(_Moved(loader, device), batches, device)


class _Moved:
    """The conventional loader's batches moved to the device, as a training loop would."""

    def __init__(self, loader, device: torch.device):
        self.loader, self.device = loader, device

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _rate(loader, batches: int, device: torch.device) -> float:
    """Images/s over `batches` batches after a first pass that starts the workers."""
    for i, _ in enumerate(loader):
        if i >= 2:
            break
    t0, seen = time.perf_counter(), 0
    while seen < batches * BATCH:
        for x, _ in loader:
            seen += len(x)
            if seen >= batches * BATCH:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--source", default="500x375", help="width x height of the JPEGs")
    ap.add_argument("--workers", default=",".join(str(w) for w in (1, 2, 4, 8) if w <= (os.cpu_count() or 1)))
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--device", default="cpu", help="where batches end: cpu or cuda")
    ap.add_argument("--decode", default="workers", help="ours with data.decode: workers, device or both (comma)")
    args = ap.parse_args()
    device, decodes = torch.device(args.device), args.decode.split(",")
    w, h = (int(v) for v in args.source.split("x"))
    torch.set_num_threads(1)
    folder = write_jpeg_folder(Path(tempfile.gettempdir()) / f"recipe-sweep-jpegs-{w}x{h}-{args.images}",
                               train=args.images, test=10, size=(w, h))
    rows = []
    for workers in (int(v) for v in args.workers.split(",")):
        runs: dict[str, list[float]] = {name: [] for name in [*decodes, "conventional"]}
        for _ in range(3):
            for decode in decodes:
                runs[decode].append(ours(folder, args.size, workers, args.batches, device, decode))
            runs["conventional"].append(conventional(folder, args.size, workers, args.batches, device))
        rate = {name: statistics.median(r) for name, r in runs.items()}
        rows.append((workers, rate))
        print(f"  {workers} workers: " + ", ".join(f"{k} {v:.0f}" for k, v in rate.items()) + " images/s", flush=True)
    print(f"\n{w}x{h} JPEGs to {args.size} px on {device}, batches of {BATCH}, {os.cpu_count()} cores "
          f"({platform.processor() or platform.machine()}), torch {torch.__version__}, {date.today()}")
    print("| loader workers | decode | streamed (ours) images/s | ImageFolder + PIL + DataLoader images/s | ratio |")
    print("|---|---|---|---|---|")
    for workers, rate in rows:
        for decode in decodes:
            print(f"| {workers} | {decode} | {rate[decode]:.0f} | {rate['conventional']:.0f} | "
                  f"{rate[decode] / rate['conventional']:.2f}x |")
    for decode in decodes:
        best_a, best_b = max(r[decode] for _, r in rows), max(r["conventional"] for _, r in rows)
        print(f"| best of each | {decode} | {best_a:.0f} | {best_b:.0f} | {best_a / best_b:.2f}x |")


if __name__ == "__main__":
    main()
