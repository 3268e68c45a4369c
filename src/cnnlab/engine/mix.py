"""Mixup and CutMix on whole training batches.

Written here rather than with torchvision.transforms.v2.MixUp/CutMix: those turn integer labels into
mixed one-hot targets, which neither a one-logit BCE nor a multi-label target can take. We mix the
images and return the partner labels and the weight; the step combines two losses,
lam * loss(out, y) + (1 - lam) * loss(out, y2), which works for every objective. The draws use
torch's global generator, whose state every checkpoint saves, so a resumed run mixes the same way.
"""

from __future__ import annotations

import math

import torch


class BatchMix:
    """Per batch, mixup (alpha > 0) or CutMix (cutmix > 0); with both, each batch picks one at even odds."""

    def __init__(self, mixup: float = 0.0, cutmix: float = 0.0) -> None:
        self.mixup, self.cutmix = mixup, cutmix

    @staticmethod
    def _beta(alpha: float) -> float:
        return float(torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample())

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(mixed images, partner labels, weight of the own labels)."""
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or bool(torch.rand(()) < 0.5))
        perm = torch.randperm(x.shape[0]).to(x.device)
        if not use_cutmix:
            lam = self._beta(self.mixup)
            return x * lam + x[perm] * (1 - lam), y[perm], lam
        lam = self._beta(self.cutmix)
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))  # the box covers 1 - lam of the image
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the share actually kept, after clipping at the edges
        return x, y[perm], lam
