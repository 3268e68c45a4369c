"""Explanations that are checked, not only drawn: integrated gradients, and the tests of a map.

Integrated gradients (Sundararajan et al., 2017; captum's implementation) gives each pixel its share of
the predicted class's score against a black image, at the input's own resolution. Two checks from the
literature say whether a map is worth looking at:
- the deletion test (Petsiuk et al., 2018): set the hottest 10/20/50% of the pixels by the map to black
  and see how far the predicted class's probability falls, against the same number of pixels in random
  order; a faithful map makes it fall much further;
- the model-randomisation check (Adebayo et al., 2018): the map of a model whose weights are drawn
  afresh must differ from the trained model's (rank_similarity well below 1), or the map shows the
  image rather than what the model learnt.

On the default run, deleting the hottest 20% of pixels by integrated gradients lowers the predicted
class's probability about three times as much as deleting a random 20%; by Grad-CAM on the last block
(3x3 cells at 28 px) about 1.6 times (README, "Evaluation and reports").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

FRACTIONS = (0.1, 0.2, 0.5)  # shares of the pixels the deletion test sets to black
RANDOM_ORDERS = 5  # random orders the deletion by a map is held against (their mean)


def _baseline(mean: Sequence[float], std: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A black image as the model is fed it: (0 - mean) / std, per channel or per pixel."""
    mean_t = torch.as_tensor(mean, dtype=like.dtype)
    std_t = torch.as_tensor(std, dtype=like.dtype)
    shape = (1, -1, 1, 1) if mean_t.ndim == 1 else (1, *mean_t.shape)
    return (-mean_t / std_t).view(shape).expand_as(like)


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    classes: torch.Tensor | None = None,
    steps: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(heat (B, H, W) on [0, 1], the classes explained (B,)) for the normalised batch `x`: each
    pixel's positive share of the class score (summed over channels), from a black image to `x`.
    `classes` defaults to the predicted ones."""
    from captum.attr import IntegratedGradients

    was_training = model.training
    model.eval()
    try:
        x = x.detach().float()
        if classes is None:
            with torch.no_grad():
                classes = model(x).float().argmax(1)
        ig = IntegratedGradients(lambda inp: model(inp).float())
        attr = ig.attribute(x, baselines=_baseline(mean, std, x), target=classes, n_steps=steps)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    heat = attr.detach().sum(1).clamp_min(0)
    return heat / heat.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1), classes.detach()


def _probability(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).float().softmax(1).gather(1, classes.view(-1, 1)).squeeze(1)


def _delete(x: torch.Tensor, black: torch.Tensor, order: torch.Tensor, fraction: float) -> torch.Tensor:
    """`x` with the first `fraction` of its pixels by `order` (B, H, W: higher first) set to black."""
    flat = order.flatten(1)
    k = int(round(fraction * flat.shape[1]))
    top = flat.argsort(1, descending=True)[:, :k]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, top, True).view_as(order).unsqueeze(1)
    return torch.where(mask, black, x)


def deletion_drops(
    model: nn.Module,
    x: torch.Tensor,
    heat: torch.Tensor,
    classes: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The deletion test of `heat` on the normalised batch `x`: for each share of FRACTIONS, the mean
    fall of the probability of `classes` when that share of the pixels is set to black, hottest
    first ("map") and in random order ("random", the mean of RANDOM_ORDERS orders)."""
    model.eval()
    black = _baseline(mean, std, x)
    before = _probability(model, x, classes)
    gen = torch.Generator().manual_seed(seed)
    # ties (a flat map) are broken at random, not by pixel position
    noise = [torch.rand(heat.shape, generator=gen) for _ in range(RANDOM_ORDERS + 1)]
    out: dict[str, dict[str, float]] = {"map": {}, "random": {}}
    for f in FRACTIONS:
        by_map = _probability(model, _delete(x, black, heat + 1e-6 * noise[0], f), classes)
        out["map"][f"{f:g}"] = float((before - by_map).mean())
        falls = [float((before - _probability(model, _delete(x, black, r, f), classes)).mean()) for r in noise[1:]]
        out["random"][f"{f:g}"] = sum(falls) / len(falls)
    return out


def rank_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """The mean over images of the Spearman rank correlation between maps `a` and `b` (B, H, W)."""
    ra = a.flatten(1).argsort(1).argsort(1).double()
    rb = b.flatten(1).argsort(1).argsort(1).double()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return float(((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)).mean())


def randomised_similarity(
    model: nn.Module,
    x: torch.Tensor,
    explain: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    seed: int = 0,
) -> float:
    """The model-randomisation check: rank_similarity between `explain(model, x, classes)` and the
    same map of a copy of `model` with every layer's weights drawn afresh (reset_parameters), both for
    the classes the trained model predicts. Near 1: the map does not depend on what the model learnt."""
    import copy

    model.eval()
    with torch.no_grad():
        classes = model(x.float()).float().argmax(1)
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in fresh.modules():
        if m is not fresh and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    # ties (pixels both maps leave at 0: the black background, for integrated gradients) are broken
    # at random, independently in the two maps: a shared order would count them as agreeing
    gen = torch.Generator().manual_seed(seed)
    ties = [1e-6 * torch.rand(x.shape[0], *x.shape[-2:], generator=gen) for _ in range(2)]
    return rank_similarity(explain(model, x, classes) + ties[0], explain(fresh, x, classes) + ties[1])
