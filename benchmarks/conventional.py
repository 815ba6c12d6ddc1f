"""The conventional training loop the benchmarks compare against; tests check our fast path against it.

It is the way most training scripts are written: a dataset that yields PIL
images, per-image torchvision transforms (RandomCrop with zero padding,
RandomHorizontalFlip, ToTensor, Normalize), a DataLoader, and a plain fp32
loop over it. Model, optimizer hyperparameters and the per-iteration lr
schedule come from the same trial config as `trainable.train`, and
torch.manual_seed(train.seed) before the model is built gives both loops the
same initial weights.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from trainable import schedules
from trainable.config import TrialConfig
from trainable.data import Splits
from trainable.models import build_model
from trainable.run import resolve_device

PADDING = 4


class PilDataset(torch.utils.data.Dataset):
    """What torchvision's MNIST- and CIFAR-style datasets do per item: uint8 array -> PIL -> transforms."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        if x.shape[1] not in (1, 3):
            raise ValueError(f"PIL images need 1 or 3 channels, not {x.shape[1]}")
        # H x W (grey, PIL mode L) or H x W x 3 (RGB), as PIL takes them
        self.x = x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).contiguous().numpy()
        self.y, self.transform = y.tolist(), transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def train_transform(splits: Splits) -> T.Compose:
    return T.Compose([T.RandomCrop(tuple(splits.train_x.shape[-2:]), padding=PADDING), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(splits.mean, splits.std)])


def loader(splits: Splits, batch_size: int, workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    """The shuffled, augmented training loader (the ragged tail dropped, as TrainBatches does)."""
    return torch.utils.data.DataLoader(
        PilDataset(splits.train_x, splits.train_y, train_transform(splits)), batch_size, shuffle=True,
        drop_last=True, num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")


def train(cfg: TrialConfig, splits: Splits, workers: int) -> tuple[float, torch.nn.Module]:
    """Train cfg.train.epochs epochs; (training images/s, the trained model)."""
    device = resolve_device(cfg.train.device)
    batches = loader(splits, cfg.train.batch_size, workers, device)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, splits.num_classes, splits.in_channels).to(device)
    o = cfg.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay)
    sched = schedules.build(opt, cfg.schedule, len(batches), cfg.train.epochs)
    model.train()
    seen, t0 = 0, time.perf_counter()
    for _ in range(cfg.train.epochs):
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - t0), model


def error_on_test_split(model: torch.nn.Module, splits: Splits, batch_size: int = 512) -> float:
    """Error on the test split through the same PIL path without augmentation."""
    device = next(model.parameters()).device
    tf = T.Compose([T.ToTensor(), T.Normalize(splits.mean, splits.std)])
    batches = torch.utils.data.DataLoader(PilDataset(splits.test_x, splits.test_y, tf), batch_size)
    model.eval()
    wrong = 0
    with torch.inference_mode():
        for x, y in batches:
            wrong += int((model(x.to(device)).argmax(1).cpu() != y).sum())
    return wrong / len(splits.test_y)
