"""Batched augmentation of whole tensors: one call per batch, a different random draw per image.

An op is `fn(x, generator, params) -> x` for x of shape (B, C, H, W) with pixel values on
[0, params.value_max] (uint8 from memory or from the decoding workers, before normalisation, so a
zero fill is black), or float data on its own scale (value_max None: jitter does not clamp). flip,
translate and the policies keep the dtype; rotate, resized-crop and jitter return float32 on the same
scale. Random draws come from the CPU `generator`, so a batch's augmentation depends only on the
loader's seed and epoch, whatever the device.

The simple ops are written with plain tensor ops rather than torchvision.transforms.v2: v2 draws one
set of random parameters per call, so a batch would get one flip and one angle for all its images, and
per-image draws through v2 mean a Python loop over the batch. The policies (trivialaugment, randaugment,
autoaugment, random-erasing) are torchvision's own, whose fourteen ops and tuned magnitude tables are
not worth writing again: they pay that loop (`per_image`), one seeded call per image; README
"Datasets" gives what it costs. kornia batches its policies but picks one op for the whole batch.

A recipe names a preset (`cifar`) or joins ops with '+' (`flip+rotate`, `flip+trivialaugment+random-erasing`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError
from cnnlab.registry import Registry

if TYPE_CHECKING:
    from torchvision.transforms import v2

AUGMENTATIONS: Registry = Registry("augmentation")  # single ops
PRESETS: dict[str, list[str]] = {
    "none": [],
    "flip-translate": ["flip", "translate"],
    # the comprehensive CIFAR-10 report: flip, RandomCrop(32, padding=4), rotation, ColorJitter
    "cifar": ["flip", "translate", "rotate", "jitter"],
    # the usual ImageNet-style training: RandomResizedCrop, flip, a little colour
    "imagenet": ["resized-crop", "flip", "jitter"],
}


@dataclass(frozen=True)
class AugmentParams:
    translate: int = 2  # max shift in pixels
    rotate: float = 15.0  # max rotation in degrees
    jitter: float = 0.2  # brightness/contrast/saturation factors drawn from [1 - j, 1 + j]
    crop_scale: float = 0.35  # smallest area fraction resized-crop keeps
    cutout: int = 8  # side in pixels of cutout's square
    value_max: float | None = 255.0  # the pixel range [0, value_max] of x; None: float data on its own scale
    randaugment_n: int = 2  # ops applied one after the other to each image (RandAugment's N)
    randaugment_m: int = 9  # the magnitude of every op, 0..30 (RandAugment's M on torchvision's 31 steps)
    autoaugment_policy: str = "imagenet"  # AutoAugment's learned policy: imagenet | cifar10 | svhn
    erasing_p: float = 0.5  # the share of images random-erasing blanks a rectangle of


AUTOAUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")  # torchvision's AutoAugmentPolicy values


@AUGMENTATIONS.register("flip")
def random_hflip(x: torch.Tensor, generator: torch.Generator, params: AugmentParams | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def random_translate(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Shift each image by its own (dy, dx), each uniform in [-max_shift, max_shift]; zeros fill in."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    s = max_shift
    shifts = torch.randint(-s, s + 1, (2, b), generator=generator).to(x.device)  # (2, B): dy, dx
    padded = F.pad(x, (s, s, s, s))  # (B, C, H + 2s, W + 2s)
    rows = torch.arange(h, device=x.device) + s - shifts[0].view(b, 1)  # (B, H): source row of each output row
    cols = torch.arange(w, device=x.device) + s - shifts[1].view(b, 1)  # (B, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


@AUGMENTATIONS.register("translate")
def _translate(x: torch.Tensor, generator: torch.Generator, params: AugmentParams) -> torch.Tensor:
    return random_translate(x, generator, params.translate)


def _warp(x: torch.Tensor, theta: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Resample each image through its own affine map theta (B, 2, 3), output coords -> input coords."""
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode=padding, align_corners=False)


@AUGMENTATIONS.register("rotate")
def random_rotate(x: torch.Tensor, generator: torch.Generator, params: AugmentParams) -> torch.Tensor:
    """Rotate each image about its centre by an angle uniform in [-rotate, rotate] degrees."""
    b, _, h, w = x.shape
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(params.rotate)
    cos, sin = angle.cos(), angle.sin()
    # affine_grid works in [-1, 1] coordinates; the aspect terms keep a non-square image undistorted
    theta = torch.stack(
        [torch.stack([cos, -sin * h / w, torch.zeros(b)], 1), torch.stack([sin * w / h, cos, torch.zeros(b)], 1)], 1
    )
    return _warp(x, theta)


@AUGMENTATIONS.register("resized-crop")
def random_resized_crop(x: torch.Tensor, generator: torch.Generator, params: AugmentParams) -> torch.Tensor:
    """Crop a random area (a fraction in [crop_scale, 1], aspect 3/4..4/3) and resize it to the full size."""
    b = x.shape[0]
    area = params.crop_scale + (1 - params.crop_scale) * torch.rand(b, generator=generator)
    log_ratio = (torch.rand(b, generator=generator) * 2 - 1) * math.log(4 / 3)
    ratio = log_ratio.exp()
    cw = (area * ratio).sqrt().clamp(max=1.0)  # crop width as a fraction of the image width
    ch = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - cw)  # crop centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - ch)
    zeros = torch.zeros(b)
    theta = torch.stack([torch.stack([cw, zeros, cx], 1), torch.stack([zeros, ch, cy], 1)], 1)
    # border: the outermost sample points of a crop at the edge lie up to half a pixel outside
    return _warp(x, theta, padding="border")


@AUGMENTATIONS.register("cutout")
def random_cutout(x: torch.Tensor, generator: torch.Generator, params: AugmentParams) -> torch.Tensor:
    """Blank a square of side `cutout` (zeros: black) centred at a random pixel of each image; near an
    edge part of the square falls outside (DeVries & Taylor's cutout)."""
    b, _, h, w = x.shape
    side = params.cutout
    top = (torch.randint(0, h, (b,), generator=generator) - side // 2).to(x.device).view(b, 1, 1, 1)
    left = (torch.randint(0, w, (b,), generator=generator) - side // 2).to(x.device).view(b, 1, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return x.masked_fill(inside, 0)


@AUGMENTATIONS.register("jitter")
def color_jitter(x: torch.Tensor, generator: torch.Generator, params: AugmentParams) -> torch.Tensor:
    """Brightness, contrast and (for RGB) saturation, each scaled by its own factor per image."""
    b, c = x.shape[:2]
    j = params.jitter

    def factor() -> torch.Tensor:
        return (1 + (torch.rand(b, generator=generator) * 2 - 1) * j).view(b, 1, 1, 1).to(x.device)

    x = x.float() * factor()  # brightness
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean  # contrast
    if c == 3:
        gray = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (x - gray) * factor() + gray  # saturation
    return x.clamp_(0, params.value_max) if params.value_max is not None else x


@lru_cache(maxsize=16)
def _policy(name: str, params: AugmentParams) -> v2.Transform:
    """torchvision's transform for policy `name` (fill 0: black where a shift or a rotation uncovers the image)."""
    from torchvision.transforms import v2  # here, not at import: torchvision takes a second to load

    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "randaugment":
        return v2.RandAugment(num_ops=params.randaugment_n, magnitude=params.randaugment_m)
    if name == "autoaugment":
        if params.autoaugment_policy not in AUTOAUGMENT_POLICIES:
            raise ConfigError(
                f"data.autoaugment_policy is {params.autoaugment_policy!r}; "
                f"use one of {', '.join(AUTOAUGMENT_POLICIES)}"
            )
        return v2.AutoAugment(v2.AutoAugmentPolicy(params.autoaugment_policy))
    # the paper's (and torchvision's) area 2-33% and aspect 0.3-3.3, on erasing_p of the images (their 0.5);
    # 0 is black before normalising
    return v2.RandomErasing(p=params.erasing_p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)


def per_image(
    transform: v2.Transform, x: torch.Tensor, generator: torch.Generator, value_max: float | None
) -> torch.Tensor:
    """`transform` applied to each image of x (B, C, H, W) on its own, each call seeded by a draw of `generator`.

    torchvision draws from torch's global stream: seeding it per image from the run's generator keeps
    a batch's augmentation a function of (seed, epoch), and fork_rng gives the global stream back as it
    was, so the model's initialisation, dropout and mixing do not depend on the augmentation. uint8
    goes in as it is; float data is read on [0, 1] as torchvision reads floats (value_max None: as it is).
    """
    if x.shape[0] == 0:
        return x
    seeds = torch.randint(0, 2**62, (x.shape[0],), generator=generator).tolist()
    scale = value_max if x.is_floating_point() and value_max not in (None, 1.0) else None
    src = x / scale if scale is not None else x
    threads = torch.get_num_threads()
    # one CPU thread: an op on one small image is microseconds of work, and waiting for a second thread can
    # cost more (on 28x28 images on the 2-core Xeon: as fast as two threads, and up to 6x faster when other
    # processes share the cores)
    torch.set_num_threads(1 if x.device.type == "cpu" else threads)
    try:
        with torch.random.fork_rng(devices=[]):
            out = []
            for image, seed in zip(src, seeds):
                torch.default_generator.manual_seed(seed)  # the CPU stream only: a GPU's stays as it was
                out.append(transform(image))
    finally:
        torch.set_num_threads(threads)
    y = torch.stack(out)
    return y * scale if scale is not None else y


@AUGMENTATIONS.register("trivialaugment")
def trivial_augment(x: torch.Tensor, generator: torch.Generator, params: AugmentParams) -> torch.Tensor:
    """TrivialAugment Wide (Muller & Hutter 2021): each image one op of 14 at a uniformly drawn magnitude."""
    return per_image(_policy("trivialaugment", params), x, generator, params.value_max)


@AUGMENTATIONS.register("randaugment")
def rand_augment(x: torch.Tensor, generator: torch.Generator, params: AugmentParams) -> torch.Tensor:
    """RandAugment (Cubuk et al. 2020): each image randaugment_n ops drawn from 14, all at magnitude randaugment_m."""
    return per_image(_policy("randaugment", params), x, generator, params.value_max)


@AUGMENTATIONS.register("autoaugment")
def auto_augment(x: torch.Tensor, generator: torch.Generator, params: AugmentParams) -> torch.Tensor:
    """AutoAugment (Cubuk et al. 2019): each image one sub-policy of the learned `autoaugment_policy`."""
    return per_image(_policy("autoaugment", params), x, generator, params.value_max)


@AUGMENTATIONS.register("random-erasing")
def random_erasing(x: torch.Tensor, generator: torch.Generator, params: AugmentParams) -> torch.Tensor:
    """Random Erasing (Zhong et al. 2020): data.erasing_p of the images (half by default) get a black
    rectangle of 2-33% of their area."""
    return per_image(_policy("random-erasing", params), x, generator, params.value_max)


def parse_augment(spec: str) -> list[str]:
    """The op names of a preset or of 'op+op+...'; a ConfigError names the valid ones."""
    if spec in PRESETS:
        return PRESETS[spec]
    ops = [op.strip() for op in spec.split("+") if op.strip()]
    for op in ops:
        if op not in AUGMENTATIONS:
            raise ConfigError(
                f"unknown augmentation {op!r} in data.augment={spec!r}; presets: {', '.join(PRESETS)}; "
                f"ops (join with +): {', '.join(AUGMENTATIONS.names())}"
            )
    return ops


def build_augment(spec: str, params: AugmentParams) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """One function applying the ops of `spec` in order to a batch."""
    fns = [AUGMENTATIONS.get(op) for op in parse_augment(spec)]

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for fn in fns:
            x = fn(x, generator, params)
        return x

    return apply
