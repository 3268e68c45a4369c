"""A trained run read back from its checkpoint, its predictions on a split, and their metrics.

`cnnlab evaluate`, `report` and `compare` (and later `predict`) share this: the model is rebuilt from
the checkpoint's own config, classes and objective, and fed exactly as in training (the saved
normalisation and preprocessing, batched by the same loaders).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnlab.config import RunConfig, config_from_dict
from cnnlab.data.base import ArraySplit, Dataset, Split
from cnnlab.data.images import open_image, preprocess_transform, to_uint8_tensor
from cnnlab.data.loader import BatchLoader, make_loader
from cnnlab.engine.checkpoint import load_checkpoint, validate_checkpoint
from cnnlab.engine.loop import eval_outputs
from cnnlab.engine.losses import Objective, Target, create_objective, model_outputs
from cnnlab.errors import CnnlabError
from cnnlab.metrics import multilabel_confusion, multilabel_metrics, prediction_metrics
from cnnlab.models import create_model
from cnnlab.run_folder import read_metrics


@dataclass
class LoadedRun:
    checkpoint: Path
    run_dir: Path | None  # the run folder, where the checkpoint is inside one
    ckpt: dict[str, Any]
    cfg: RunConfig
    model: nn.Module  # eval mode, on the CPU, with the checkpoint's weights (the EMA's, where there was one)
    objective: Objective
    classes: list[str]
    mean: list
    std: list
    input_shape: tuple[int, int, int]
    preprocess: list
    value_max: float = 255.0  # what one input unit is worth: 255 for images, 1 for float arrays

    def tta(self, override: bool | None = None) -> bool:
        """Flip TTA as the run was tested (its train.tta), unless `override` says otherwise."""
        return bool(self.cfg.train.tta) if override is None else override


def tested_weights(run_dir: Path) -> str:
    """best or last: the checkpoint whose weights the run's metrics.json scored (train.test_weights;
    best for a run without metrics.json yet, or from before the key)."""
    try:
        return "last" if read_metrics(run_dir).get("test_weights") == "last" else "best"
    except CnnlabError:
        return "best"


def find_checkpoint(source: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None) for a run folder or a checkpoint path."""
    path = Path(source)
    if path.is_dir():
        best = path / "checkpoints" / f"{tested_weights(path)}.pt"
        if not best.is_file():
            has_config = (path / "config.yaml").is_file()
            why = (
                "its training was interrupted before the first epoch ended"
                if has_config
                else "it is not a run folder (no config.yaml)"
            )
            raise CnnlabError(
                f"{path} has no checkpoints/{best.name}: {why}; give a run folder that cnnlab train finished, or a "
                f"checkpoint file"
            )
        return best, path
    if not path.exists():
        raise CnnlabError(f"{path} does not exist; give a run folder (runs/<name>) or a checkpoint (.pt)")
    run_dir = (
        path.parent.parent
        if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file()
        else None
    )
    return path, run_dir


def _model_with_weights(
    name: str, state: dict[str, torch.Tensor], outputs: int, shape: tuple[int, ...], kwargs: dict[str, Any]
) -> tuple[nn.Module, int | None]:
    """(model `name` holding the checkpoint's weights `state`, in eval mode; its number of outputs
    for one zero image of `shape` where that was already run, else None).

    It is built on the meta device and takes the checkpoint's tensors as its own
    (load_state_dict(assign=True)), which skips the random initialisation a fresh model runs only to
    have it overwritten: 3.4 s of vgg16's 138M parameters on 2 cores, at every predict, export and
    serve. Where that cannot give the same model (a builder that computes on real tensors, a tensor
    the checkpoint does not hold, another dtype, a forward pass that fails), the model is built and
    loaded the ordinary way. A state that does not fit raises load_state_dict's own error."""

    def build() -> nn.Module:
        return create_model(name, num_classes=outputs, in_channels=shape[0], input_size=shape[1:], **kwargs)

    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception:  # noqa: BLE001  any builder failure: the ordinary way below says what it is
        skeleton = None
    if skeleton is not None:
        want = skeleton.state_dict()
        if set(want) == set(state) and all(state[k].dtype == t.dtype for k, t in want.items()):
            skeleton.load_state_dict(
                {k: v.contiguous() for k, v in state.items()}, assign=True
            )  # as a fresh model's (a channels_last run saves strided ones)
            tensors = [*skeleton.parameters(), *skeleton.buffers()]
            if not any(t.is_meta for t in tensors):
                skeleton.eval()
                try:
                    with torch.no_grad():
                        return skeleton, int(
                            skeleton(torch.zeros(1, *shape)).shape[-1]
                        )  # load_run's dry run, done here
                except Exception:  # noqa: BLE001  e.g. a constant made at build time, left on the meta device
                    pass
    model = build()
    model.load_state_dict(state)
    return model.eval(), None


def load_run(source: str | Path) -> LoadedRun:
    """Rebuild the model of a run folder (the checkpoint its test scored: best.pt, or last.pt for
    train.test_weights last) or of a checkpoint file."""
    path, run_dir = find_checkpoint(source)
    ckpt = load_checkpoint(path)
    validate_checkpoint(ckpt, path)
    cfg = config_from_dict(ckpt["config"])
    classes = list(ckpt["classes"])
    multilabel = bool(ckpt.get("multilabel", isinstance(cfg.data.attributes, list) and len(cfg.data.attributes) > 1))
    target = Target(len(classes), multilabel)
    name = ckpt.get("objective", cfg.train.loss)
    kwargs = {k: v for k, v in cfg.model.kwargs.items() if k != "pretrained"}  # the weights come from the checkpoint
    shape = tuple(ckpt["input_shape"])
    try:
        model, outputs = _model_with_weights(cfg.model.name, ckpt["model"], model_outputs(name, target), shape, kwargs)
    except (RuntimeError, TypeError, AttributeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[
            :160
        ]  # the first mismatch, not the heading
        raise CnnlabError(f"{path}: the weights do not fit model {cfg.model.name} ({why})") from None
    try:
        if outputs is None:
            with torch.no_grad():
                outputs = model(torch.zeros(1, *shape)).shape[-1]
    except RuntimeError as e:
        raise CnnlabError(
            f"{path}: model {cfg.model.name} does not take its input_shape {shape} ({str(e).splitlines()[0][:120]})"
        ) from None
    objective = create_objective(name, model, target, outputs)
    norm = ckpt["normalization"]
    return LoadedRun(
        path,
        run_dir,
        ckpt,
        cfg,
        model,
        objective,
        classes,
        norm["mean"],
        norm["std"],
        shape,
        list(ckpt.get("preprocess", [])),
        float(norm.get("value_max", 255.0)),
    )


def split_loader(run: LoadedRun, split: Split, batch_size: int = 512, normalise: bool = True) -> BatchLoader:
    """Batches of `split` fed as the run was validated: its normalisation and preprocessing, no
    augmentation. normalise=False: the same images as pixels / value_max (on [0, 1] for images)."""
    c = run.input_shape[0]
    mean, std = (run.mean, run.std) if normalise else ([0.0] * c, [1.0] * c)
    return make_loader(
        split,
        batch_size,
        input_shape=run.input_shape,
        preprocess=run.preprocess,
        max_pixels=run.cfg.data.max_pixels,
        workers=run.cfg.data.workers,
        mean=mean,
        std=std,
    )


def load_split(run: LoadedRun, name: str = "test", data: str | None = None) -> tuple[Dataset, Split]:
    """The run's dataset (or `data`: a dataset name or folder in its place) and its `name` split
    (test | val | auto: test where there is one, else val)."""
    from cnnlab.data import DATASETS, load_dataset, resolve_data

    dc = run.cfg.data
    if data is not None:
        dc = dataclasses.replace(dc, name=data, root=None) if data in DATASETS else dataclasses.replace(dc, root=data)
        dc = resolve_data(dc)
    dc = dataclasses.replace(dc, download=False)
    ds = load_dataset(dc, run.cfg.train.seed)
    if list(ds.classes) != run.classes:
        raise CnnlabError(
            f"the data has classes {', '.join(ds.classes[:4])}, ...; the model was trained on "
            f"{', '.join(run.classes[:4])}, ...; give data with the same classes"
        )
    if tuple(ds.input_shape) != run.input_shape:
        raise CnnlabError(
            f"the data gives {'x'.join(map(str, ds.input_shape))} images; the model takes "
            f"{'x'.join(map(str, run.input_shape))}"
        )
    if name == "auto":
        name = "test" if ds.test is not None else "val"
    split = getattr(ds, name)
    if split is None:
        raise CnnlabError(f"this dataset has no {name} part; use --split {'test' if name == 'val' else 'val'}")
    return ds, split


@dataclass
class Predictions:
    probs: torch.Tensor  # (N, K) class probabilities; (N, A) per attribute for multi-label
    targets: torch.Tensor  # (N,) class ids; (N, A) 0/1 for multi-label
    losses: torch.Tensor  # (N,) plain loss per sample (no smoothing; summed over attributes for multi-label)
    scores: torch.Tensor  # the raw outputs (logits; probabilities for sigmoid-bce): rankings without saturation
    index: torch.Tensor  # (N,) the split's index of each row (files that did not decode have no row)


def probabilities(out: torch.Tensor, objective: Objective) -> torch.Tensor:
    """Model outputs -> probabilities: softmax (cross-entropy), sigmoid (bce), as is (sigmoid-bce).
    A one-output binary model gives (N, 2): [1 - p, p]."""
    out = out.float()
    if objective.name == "cross-entropy":
        return out.softmax(1)
    p = out if objective.name == "sigmoid-bce" else out.sigmoid()
    return p if objective.multilabel else torch.cat([1 - p.reshape(-1, 1), p.reshape(-1, 1)], 1)


@torch.no_grad()
def predict(model: nn.Module, loader: BatchLoader, objective: Objective, tta: bool = False) -> Predictions:
    """Probabilities, targets and per-sample losses over `loader` (in its order), in fp32 eval mode."""
    was_training = model.training
    model.eval()
    probs, targets, losses, scores = [], [], [], []
    for x, y in loader:
        out = eval_outputs(model, x, tta)
        probs.append(probabilities(out, objective).cpu())
        scores.append(out.cpu())
        targets.append(y.cpu())
        losses.append(objective.sample_loss(out, y).detach().cpu().double())
    model.train(was_training)
    if not probs:
        raise CnnlabError("the split has no images to evaluate")
    split = loader.split
    n = sum(len(t) for t in targets)
    if n == len(split):
        index = torch.arange(n)
    else:  # the loader left out files that did not decode; the rest keep their order
        index = torch.tensor([i for i, p in enumerate(split.paths) if p not in loader.skipped])  # type: ignore[union-attr]
    return Predictions(torch.cat(probs), torch.cat(targets), torch.cat(losses), torch.cat(scores), index)


def metrics_of(preds: Predictions, classes: list[str], objective: Objective) -> dict[str, Any]:
    """metrics.json's block for a split: every figure derived from the predictions."""
    loss = float(preds.losses.mean())
    if objective.multilabel:
        return multilabel_metrics(multilabel_confusion((preds.probs > 0.5).long(), preds.targets), classes, loss)
    scores = preds.scores if objective.name != "sigmoid-bce" else None
    if scores is not None and scores.shape[1] == 1:  # one logit: [-z, z] ranks like [1 - p, p]
        scores = torch.cat([-scores, scores], 1)
    return prediction_metrics(preds.probs, preds.targets, classes, loss, scores=scores)


def display_image(split: Split, i: int, preprocess: list, channels: int, max_pixels: int = 40_000_000) -> torch.Tensor:
    """Image i of `split` as the model saw it before normalisation: (H, W, C) float in [0, 1]."""
    if isinstance(split, ArraySplit):
        x = split.images[i].float()
        lo, hi = float(x.min()), float(x.max())
        x = x / 255.0 if split.images.dtype == torch.uint8 else (x - lo) / max(hi - lo, 1e-12)
    else:
        x = (
            to_uint8_tensor(open_image(split.paths[i], channels, max_pixels), preprocess_transform(preprocess)).float()
            / 255.0
        )
    return x.permute(1, 2, 0).clamp(0, 1)
