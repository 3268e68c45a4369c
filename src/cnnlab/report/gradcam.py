"""Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class lies.

Written here rather than taken from pytorch-grad-cam, which pulls in OpenCV (tens of MB) for what is
a forward hook, one backward pass and a weighted sum: the last conv block's activations A (C, h, w)
are weighted by the mean gradient of the class score over each channel, summed, passed through a
ReLU and upsampled to the image.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def target_layer(model: nn.Module) -> nn.Module:
    """The block holding the last Conv2d (its output is that block's activated features, what the head
    reads: fastnet's last block, a ResNet's last BasicBlock), or the conv itself at the top level."""
    from cnnlab.engine.optim import head_module

    head = head_module(model)
    in_head = {id(m) for m in head.modules()} if head is not None else set()
    # convs of the head (SqueezeNet's classifier conv gives 1x1 maps) explain nothing spatial
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in in_head]
    if not names:
        raise ValueError("the model has no Conv2d layer for Grad-CAM")
    parent = names[-1].rpartition(".")[0]
    # a ModuleList or ModuleDict is never called itself (its owner calls its members): go up past it
    while parent and isinstance(model.get_submodule(parent), (nn.ModuleList, nn.ModuleDict)):
        parent = parent.rpartition(".")[0]
    return model.get_submodule(parent) if parent else model.get_submodule(names[-1])


def grad_cam(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None, layer: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(heat (B, H, W) in [0, 1], the classes explained (B,)) for the normalised batch `x`.

    `classes` defaults to the predicted ones. For a one-output model the score is that output; its
    evidence for the negative class is the negated score.
    """
    layer = layer or target_layer(model)
    saved: dict[str, torch.Tensor] = {}

    def keep(_m, _inp, out):
        out.retain_grad()
        saved["a"] = out

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = x.detach().float().requires_grad_(True)
            out = model(x).float()
            if out.shape[1] == 1:  # one sigmoid/logit output: class 1 is the output, class 0 its opposite
                from cnnlab.engine.losses import ends_in_sigmoid

                pred = (out[:, 0] > (0.5 if ends_in_sigmoid(model) else 0.0)).long()
                classes = pred if classes is None else classes
                score = torch.where(classes == 1, out[:, 0], -out[:, 0])
            else:
                classes = out.argmax(1) if classes is None else classes
                score = out.gather(1, classes.view(-1, 1)).squeeze(1)
            model.zero_grad(set_to_none=True)
            score.sum().backward()
        if "a" not in saved or saved["a"].grad is None:
            raise ValueError(f"Grad-CAM's layer {type(layer).__name__} gave no activations or gradients for this model")
        a, g = saved["a"].detach(), saved["a"].grad.detach()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)  # no gradients left on the weights
        model.train(was_training)
    weights = g.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    cam = F.relu((weights * a).sum(1, keepdim=True))  # (B, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    top = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    return cam / top, classes.detach()
