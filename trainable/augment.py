"""Augmentation of whole uint8 batches on the training device.

One gather per batch replaces a per-image PIL pipeline: the padded dataset is
kept resident and each batch is cut out of it at random offsets. Every random
draw comes from the trial's generator, so a seed fixes the whole stream.

Order within a batch: crop/flip (uint8) -> policy (uint8) -> colour jitter
and lighting (float, 0-255) -> normalize -> cutout -> random erasing. A policy's stage runs on the host, a batch ahead
(TrainBatches).
"""
from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .config import Augment
from .ranks import Place
from .policies import POLICIES
from . import registries


def pad_images(x: torch.Tensor, pad: int, mode: str, fill: int = 0) -> torch.Tensor:
    """Pad all four sides once, so a crop is one gather: constant (fill), reflect or replicate."""
    return F.pad(x, [pad] * 4, mode=mode, **({"value": fill} if mode == "constant" else {}))


def random_crop(padded: torch.Tensor, idx: torch.Tensor, size: tuple[int, int], pad: int,
                gen: torch.Generator) -> torch.Tensor:
    """Crop images idx of a pre-padded N x C x (H+2p) x (W+2p) tensor at random offsets.

    unfold views every crop window of every image without copying, so the
    crop is one index over (image, offset y, offset x) that copies whole
    rows instead of indexing each pixel (BENCHMARKS.md has the speed-up).
    """
    b, dev = len(idx), padded.device
    h, w = size
    oy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=gen)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # N x C x (2p+1) x (2p+1) x H x W
    return windows[idx, :, oy, ox]


def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float], gen: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-image crops of random area share and aspect ratio, resized to size x size.

    One roi_align call crops and bilinearly resizes the whole batch; a crop
    that would not fit is clamped to the image.
    """
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(scale[0], scale[1], generator=gen) * h * w
    log_r = torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect).clamp(1, w)
    ch = torch.sqrt(area / aspect).clamp(1, h)
    x0 = torch.rand(b, device=dev, generator=gen) * (w - cw)
    y0 = torch.rand(b, device=dev, generator=gen) * (h - ch)
    boxes = torch.stack([torch.arange(b, device=dev, dtype=torch.float), x0, y0, x0 + cw, y0 + ch], 1)
    return roi_align(x.float(), boxes, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def cutout(x: torch.Tensor, size: int, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): zero a size x size square centred at a uniform point.

    The square is clipped at the border, so patches near an edge are smaller,
    as in the paper. Works on any batch (uint8 or normalized float).
    """
    b, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (b, 1, 1), device=dev, generator=gen)
    cx = torch.randint(0, w, (b, 1, 1), device=dev, generator=gen)
    rows = torch.arange(h, device=dev)[None, :, None]
    cols = torch.arange(w, device=dev)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    patch = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    patch &= (torch.rand(b, 1, 1, device=dev, generator=gen) < prob)
    return x.masked_fill(patch[:, None], 0)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), device=x.device, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class Normalize:
    """uint8 -> float, (x/255 - mean) / std, in place on the converted copy.

    Scale and shift are laid out per image in the batch's memory format, so the multiply and
    add broadcast over the batch only: with channels_last, a (1, C, 1, 1) operand would put a
    3-element broadcast innermost, which runs several times slower (BENCHMARKS.md).
    """

    def __init__(self, mean, std, enabled: bool, device, channels_last: bool):
        mean = torch.tensor(mean if enabled else [0.0] * len(mean), device=device)
        std = torch.tensor(std if enabled else [1.0] * len(std), device=device)
        self.scale = (1.0 / (255.0 * std))[None, :, None, None]
        self.shift = (-mean / std)[None, :, None, None]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._per_image: tuple[torch.Size, torch.Tensor, torch.Tensor] | None = None

    def _operands(self, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        if self._per_image is None or self._per_image[0] != shape:
            one = (1, *shape[1:])
            scale, shift = (t.expand(one).contiguous(memory_format=self.memory_format) for t in (self.scale, self.shift))
            self._per_image = (shape, scale, shift)
        return self._per_image[1], self._per_image[2]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        scale, shift = self._operands(x.shape)
        out = torch.empty_like(x, dtype=torch.float32, memory_format=self.memory_format).copy_(x)
        return out.mul_(scale).add_(shift)


ERASE_VALUES = registries.ERASE_VALUES


@ERASE_VALUES.register("random")
def _erase_random(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # One standard normal per pixel and channel: noise at the scale of a normalized batch.
    return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=gen)


@ERASE_VALUES.register("zero")
def _erase_zero(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.zeros((), device=x.device, dtype=x.dtype)


def erasing_boxes(b: int, h: int, w: int, area, ratio, gen: torch.Generator, device=None,
                  tries: int = 10) -> tuple[torch.Tensor, ...]:
    """Per image, the first of `tries` candidate rectangles that fits inside h x w.

    A candidate has area share ~ U(area) and log aspect (height/width) ~
    U(log ratio); the one kept is placed uniformly among the offsets where it
    fits. Returns (top, left, height, width, found); found is False where no
    candidate fits, and that image is left alone.
    """
    share = torch.empty(b, tries, device=device).uniform_(area[0], area[1], generator=gen)
    log_r = torch.empty(b, tries, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    target = share * (h * w)
    eh = torch.sqrt(target * torch.exp(log_r)).round().long()
    ew = torch.sqrt(target / torch.exp(log_r)).round().long()
    fits = (eh >= 1) & (eh <= h) & (ew >= 1) & (ew <= w)
    first = fits.int().argmax(1, keepdim=True)  # argmax returns the first maximum
    found = fits.any(1)
    eh = torch.where(found, eh.gather(1, first)[:, 0], 0)
    ew = torch.where(found, ew.gather(1, first)[:, 0], 0)
    # min(): a float32 rand just below 1 times n can round up to n
    top = torch.minimum((torch.rand(b, device=device, generator=gen) * (h - eh + 1)).long(), h - eh)
    left = torch.minimum((torch.rand(b, device=device, generator=gen) * (w - ew + 1)).long(), w - ew)
    return top, left, eh, ew, found


def random_erasing(x: torch.Tensor, prob: float, area, ratio, value: str,
                   gen: torch.Generator) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): per image with probability prob, fill one rectangle.

    Meant for normalized float batches: "random" fills with N(0, 1) per pixel,
    "zero" with 0 (the dataset mean after normalization).
    """
    b, _, h, w = x.shape
    dev = x.device
    top, left, eh, ew, found = erasing_boxes(b, h, w, area, ratio, gen, dev)
    apply = found & (torch.rand(b, device=dev, generator=gen) < prob)
    rows = torch.arange(h, device=dev)[None, :, None]
    cols = torch.arange(w, device=dev)[None, None, :]
    top, left, eh, ew = (t[:, None, None] for t in (top, left, eh, ew))
    box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew) & apply[:, None, None]
    return torch.where(box[:, None], ERASE_VALUES.get(value)(x, gen), x)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """random_resized_crop gives float in 0..255; the policies take uint8."""
    return x if x.dtype == torch.uint8 else x.round().clamp(0, 255).to(torch.uint8)


_END = object()


def prefetched(batches: Callable[[], Iterator], depth: int = 2) -> Iterator:
    """The items of `batches()`, made ahead in a thread of their own (an error there is raised here)."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in batches():
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_END)
        except BaseException as e:  # handed to the consumer, which raises it
            items.put(e)

    thread = threading.Thread(target=work, name="sweep-augment", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class TrainBatches:
    """Shuffled, augmented training batches from a resident uint8 tensor.

    With augment.repeated = r > 1 (Hoffer et al. 2020; DeiT), a batch holds
    ceil(batch_size / r) images, each up to r times with independent
    augmentation (the tiled copies are cut at the batch size), and
    an epoch keeps its batch count, so it sees about len(y) / r images. The
    copies are tiled ([a, b, a, b]), not interleaved, so each 1/r slice of the
    batch (a ghost batch, a micro-batch) holds distinct images, as DeiT's
    sampler puts copies on different devices.

    Without a policy every step runs on x's device. A policy works image by
    image in Python, so with one the uint8 stage (crop, flip, policy) runs on
    the host in a thread of its own, from host-resident x and y with generators
    of its own, a batch or two ahead of the training step on `device`.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, cfg: Augment,
                 normalize: Normalize, gen: torch.Generator, out_size: int | None = None, padded: bool = False,
                 device: torch.device | str | None = None, order_gen: torch.Generator | None = None,
                 place: Place = Place()):
        """`padded`: x is already padded by augment.crop_padding (the caller shares one padded copy).
        `device`: where the batches go (default: x's). With several ranks (`place`), every rank draws
        the epoch's order from `order_gen`, seeded alike, and takes its share of each batch."""
        self.pad, self.flip = cfg.crop_padding, cfg.flip
        self.rrc = (out_size, tuple(cfg.crop_scale)) if cfg.random_resized_crop else None
        self.size = tuple(d - (2 * self.pad if padded else 0) for d in x.shape[2:])
        self.x = pad_images(x, self.pad, cfg.pad_mode, cfg.pad_fill) if self.pad and not padded else x
        self.y, self.batch_size, self.normalize, self.gen = y, batch_size, normalize, gen
        self.device = torch.device(device) if device is not None else x.device
        self.repeated, self.place = cfg.repeated, place
        self.order_gen = order_gen if order_gen is not None else gen
        self.policy = POLICIES.get(cfg.policy.name)(cfg.policy) if cfg.policy.name != "none" else None
        if self.policy is not None:
            seed = int(torch.randint(2 ** 62, (1,), device=gen.device, generator=gen))
            self.host_gen = torch.Generator().manual_seed(seed)
            self.host_order_gen = self.host_gen
            if order_gen is not None and order_gen is not gen:
                shared = int(torch.randint(2 ** 62, (1,), device=order_gen.device, generator=order_gen))
                self.host_order_gen = torch.Generator().manual_seed(shared)
            self.rng = np.random.default_rng(seed)
            self.x, self.y = self.x.cpu(), self.y.cpu()
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.y) // self.batch_size  # the ragged tail would give BN a tiny batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.policy is None:
            for xb, idx in self._crops(self.gen, self.order_gen):
                yield self._finish(xb, self.y[idx])
            return
        for xb, yb in prefetched(self._host_batches):
            yield self._finish(xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True))

    def _crops(self, gen: torch.Generator, order_gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(cropped, flipped share of a batch, its indices) for each step of an epoch, on x's device."""
        order = torch.randperm(len(self.y), device=self.x.device, generator=order_gen)
        distinct = -(-self.batch_size // self.repeated)  # ceil: the tiled copies are cut at the batch size
        share = self.place.share(self.batch_size)  # contiguous: a rank gets one tile of each image's copies
        for i in range(len(self)):
            idx = order[i * distinct:(i + 1) * distinct].repeat(self.repeated)[:self.batch_size][share]
            xb = random_crop(self.x, idx, self.size, self.pad, gen) if self.pad else self.x[idx]
            if self.rrc:
                xb = random_resized_crop(xb, *self.rrc, gen)
            if self.flip:
                xb = random_flip(xb, gen)
            yield xb, idx

    def _host_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pin = self.device.type == "cuda"
        for xb, idx in self._crops(self.host_gen, self.host_order_gen):
            xb, yb = self.policy(to_uint8(xb), self.rng), self.y[idx]
            yield (xb.pin_memory(), yb.pin_memory()) if pin else (xb, yb)

    def _finish(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return float_stage(xb, self.cfg, self.normalize, self.gen), yb


# ImageNet's RGB principal components (eigenvalues on the 0-1 scale, eigenvectors as columns),
# as AlexNet's and Bag of Tricks' lighting noise use them.
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
GREY = (0.2989, 0.587, 0.114)  # luma weights as torchvision's rgb_to_grayscale takes them


def _factors(x: torch.Tensor, spread: float, gen: torch.Generator) -> torch.Tensor:
    """A factor per image in [1 - spread, 1 + spread], shaped to scale N x C x H x W."""
    return (1 - spread + 2 * spread * torch.rand(len(x), device=x.device, generator=gen)).view(-1, 1, 1, 1)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float,
                 gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation, each with its own factor per image (in this order, each
    clamped to 0-255 as torchvision's adjust_* are), on a float RGB batch on the 0-255 scale."""
    grey = torch.tensor(GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    if brightness > 0:
        x = (x * _factors(x, brightness, gen)).clamp_(0, 255)
    if contrast > 0:
        mean = (x * grey).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = torch.lerp(mean.expand_as(x), x, _factors(x, contrast, gen)).clamp_(0, 255)
    if saturation > 0:
        luma = (x * grey).sum(1, keepdim=True)
        x = torch.lerp(luma.expand_as(x), x, _factors(x, saturation, gen)).clamp_(0, 255)
    return x


def lighting(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """AlexNet's PCA noise: add eigvec @ (alpha * eigval), alpha ~ N(0, std) per image and component,
    to every pixel of a float RGB batch on the 0-255 scale."""
    eigval = torch.tensor(LIGHTING_EIGVAL, device=x.device, dtype=x.dtype)
    eigvec = torch.tensor(LIGHTING_EIGVEC, device=x.device, dtype=x.dtype)
    alpha = torch.randn(len(x), 3, device=x.device, generator=gen, dtype=x.dtype) * std
    return x + (255 * (alpha * eigval) @ eigvec.T).view(-1, 3, 1, 1)


def float_stage(xb: torch.Tensor, cfg: Augment, normalize: Normalize, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter and lighting, normalization of the uint8 batch, then the float-stage regularizers
    (cutout, random erasing), on its device."""
    cj = cfg.color_jitter
    if cj.brightness > 0 or cj.contrast > 0 or cj.saturation > 0 or cfg.lighting > 0:
        xb = color_jitter(xb.float(), cj.brightness, cj.contrast, cj.saturation, gen)
        if cfg.lighting > 0:
            xb = lighting(xb, cfg.lighting, gen)
    xb = normalize(xb)
    if cfg.cutout.size > 0:
        xb = cutout(xb, cfg.cutout.size, cfg.cutout.prob, gen)
    if cfg.random_erasing.prob > 0:
        er = cfg.random_erasing
        xb = random_erasing(xb, er.prob, er.area, er.ratio, er.value, gen)
    return xb.contiguous(memory_format=normalize.memory_format)


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, normalize: Normalize):
    for i in range(0, len(y), batch_size):
        yield normalize(x[i:i + batch_size]), y[i:i + batch_size]
