"""The explanation maps tried for the report, checked as report/attribution.py checks them.

    python benchmarks/explanations.py RUN_DIR [--images 200] [--out results/explanations.json]

For each map, on the first N test images of a run (a default `cnnlab train` run for the README's
figures): the deletion test (the mean fall of the predicted class's probability when the hottest
10/20/50% of the pixels are set to black, and the same for random order), its ratio to random at 20%,
and the model-randomisation check (the rank correlation between the trained model's map and the map of
the same model with its weights drawn afresh: near 1 means the map ignores what the model learnt).
Grad-CAM++ and LayerCAM are written here, as candidates: the report ships Grad-CAM and integrated
gradients (captum).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab.evaluation import load_run, load_split, split_loader  # noqa: E402
from cnnlab.report.attribution import deletion_drops, integrated_gradients, randomised_similarity  # noqa: E402
from cnnlab.report.gradcam import grad_cam  # noqa: E402


def cam(layer_of, kind: str):
    """A class-activation map on the block `layer_of(model)`: Grad-CAM, Grad-CAM++ or LayerCAM."""

    def explain(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        if kind == "gradcam":
            return grad_cam(model, x, classes, layer_of(model))[0]
        saved = {}

        def keep(_m, _i, out):
            out.retain_grad()
            saved["a"] = out

        handle = layer_of(model).register_forward_hook(keep)
        try:
            out = model(x.detach().float().requires_grad_(True)).float()
            model.zero_grad(set_to_none=True)
            out.gather(1, classes.view(-1, 1)).sum().backward()
        finally:
            handle.remove()
        a, g = saved["a"].detach(), saved["a"].grad.detach()
        if kind == "layercam":  # Jiang et al., 2021: each position weighted by its own positive gradient
            heat = (F.relu(g) * a).sum(1, keepdim=True).clamp_min(0)
        else:  # Grad-CAM++ (Chattopadhay et al., 2018)
            alpha = g**2 / (2 * g**2 + a.sum((2, 3), keepdim=True) * g**3 + 1e-7)
            heat = F.relu(((alpha * F.relu(g)).sum((2, 3), keepdim=True) * a).sum(1, keepdim=True))
        heat = F.interpolate(heat, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
        return heat / heat.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)

    return explain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder of a single-label model with a features block list (fastnet)")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--out", default=None, help="write the figures as JSON here too")
    args = p.parse_args()
    torch.manual_seed(0)
    run = load_run(args.run)
    _, split = load_split(run, "test")
    x = torch.cat([b for b, _ in split_loader(run, split.subset(torch.arange(args.images)), 100)]).float()
    model = run.model.eval()
    with torch.no_grad():
        classes = model(x).argmax(1)
    blocks = len(model.features)
    methods = {
        "Grad-CAM, last block (the report's)": cam(lambda m: m.features[blocks - 1], "gradcam"),
        "Grad-CAM, the block before": cam(lambda m: m.features[blocks - 2], "gradcam"),
        "Grad-CAM++, the block before": cam(lambda m: m.features[blocks - 2], "gradcam++"),
        "LayerCAM, last block": cam(lambda m: m.features[blocks - 1], "layercam"),
        "LayerCAM, the block before": cam(lambda m: m.features[blocks - 2], "layercam"),
        "integrated gradients, 16 steps (the report's)": lambda m, xs, c: integrated_gradients(
            m, xs, run.mean, run.std, c, steps=16
        )[0],
    }
    found = {"run": str(args.run), "images": len(x), "methods": {}}
    print(f"{len(x)} test images of {args.run}; drop of the predicted class's probability, pixels set to black")
    print(f"{'map':48s} {'10%':>7} {'20%':>7} {'50%':>7} {'x random@20%':>13} {'randomised':>11}")
    for name, explain in methods.items():
        heat = explain(model, x, classes)
        drops = deletion_drops(model, x, heat, classes, run.mean, run.std)
        similarity = randomised_similarity(model, x, explain)
        ratio = drops["map"]["0.2"] / drops["random"]["0.2"]
        found["methods"][name] = {"drops": drops, "ratio_at_20": ratio, "randomised_similarity": similarity}
        print(
            f"{name:48s} "
            + " ".join(f"{drops['map'][f]:7.3f}" for f in drops["map"])
            + f" {ratio:13.2f} {similarity:11.3f}"
        )
    random = next(iter(found["methods"].values()))["drops"]["random"]
    print(f"{'random order (mean of 5)':48s} " + " ".join(f"{random[f]:7.3f}" for f in random))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
