"""An exponential moving average of the weights, on torch.optim.swa_utils.AveragedModel."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA(AveragedModel):
    """AveragedModel averaging the parameters with `decay`; the buffers (BatchNorm statistics) are
    copied from the trained model at each update, since AveragedModel's own buffer averaging would
    also lerp the integer batch counters."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        super().update_parameters(model)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)
