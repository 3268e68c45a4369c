"""Batched augmentation of whole tensors: one call per batch, no per-sample Python.

Each registered preset is `fn(x, generator, translate) -> x` for x of shape (B, C, H, W), any
dtype (the loader passes uint8, before normalisation, so a zero fill is black). Random draws come
from the CPU `generator`, so a batch's augmentation depends only on the loader's seed and epoch,
whatever the device.

Written with plain tensor ops rather than torchvision.transforms.v2: v2 draws one set of random
parameters per call, so a batch would get one flip and one shift for all its images; per-image
draws through v2 mean a Python loop over the batch, which is the cost this module avoids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnlab.registry import Registry

AUGMENTATIONS: Registry = Registry("augmentation")


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
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


@AUGMENTATIONS.register("none")
def _none(x: torch.Tensor, generator: torch.Generator, translate: int) -> torch.Tensor:
    return x


@AUGMENTATIONS.register("flip")
def _flip(x: torch.Tensor, generator: torch.Generator, translate: int) -> torch.Tensor:
    return random_hflip(x, generator)


@AUGMENTATIONS.register("translate")
def _translate(x: torch.Tensor, generator: torch.Generator, translate: int) -> torch.Tensor:
    return random_translate(x, generator, translate)


@AUGMENTATIONS.register("flip-translate")
def _flip_translate(x: torch.Tensor, generator: torch.Generator, translate: int) -> torch.Tensor:
    return random_translate(random_hflip(x, generator), generator, translate)
