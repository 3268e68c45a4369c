"""Defaults that follow the dataset: the default recipe's batch, learning rate, warm-up, epochs and
augmentation, adapted to the training part a run actually has (`train.adapt: true`).

The default recipe was tuned on Fashion-MNIST (55,000 training images, 214 steps an epoch at batch
256). Applied unchanged to a folder of 480 images it takes one step an epoch, its warm-up is one step
and the peak rate hits a network whose BatchNorm has seen 256 images: it diverges. So the recipe's
figures are read as rules, stated in steps and images seen rather than in one dataset's epochs:

- batch: the recipe's, halved until an epoch has at least MIN_STEPS_PER_EPOCH steps and the run
  MIN_TOTAL_STEPS (never below MIN_BATCH);
- learning rate: scaled linearly with the batch (the recipe's lr is per batch of the recipe's size);
- warm-up: the recipe's share of an epoch, but at least MIN_WARMUP_STEPS steps (and at most a fifth of the run);
- epochs: the recipe's for `train.reference_images` images; n < that trains epochs x sqrt(reference / n)
  (at most MAX_AUTO_EPOCHS): more epochs, but fewer images seen in all, as small data saturates sooner;
- augmentation (where `data.augment` is auto): mirror images only where a mirrored image still looks
  like its class (measured below), and shifts of about a pixel per 28 on data smaller than LARGE_DATA.

Each decision is one line of the run's log, and the resolved values replace the rules in
config.yaml (with `train.adapt: false`), so rerunning that file repeats the run exactly.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from cnnlab.config import ADAPT_PARTS, RunConfig
from cnnlab.data.augment import parse_augment
from cnnlab.data.base import ArraySplit, Dataset

MIN_STEPS_PER_EPOCH = 16
MIN_TOTAL_STEPS = 400
MIN_BATCH = 32
MIN_WARMUP_STEPS = 50
MAX_WARMUP_SHARE = 0.2
MAX_AUTO_EPOCHS = 100  # min_steps adds epochs up to this: a 20-image folder gets 100 epochs, not 1,200
LARGE_DATA = 20_000  # training images from which the recipe's own (light) augmentation is kept
FLIP_KEEPS_CLASS = 0.7  # share of a nearest-class-mean classifier's skill (above chance) that mirrored images keep


def parts_of(adapt: bool | list[str]) -> list[str]:
    return list(ADAPT_PARTS) if adapt is True else [p for p in ADAPT_PARTS if p in (adapt or [])]


def adapted_batch(n_train: int, batch: int, epochs: int = 1) -> int:
    """The recipe's batch, halved until an epoch of `n_train` images has MIN_STEPS_PER_EPOCH steps and
    the `epochs` of the run MIN_TOTAL_STEPS (never below MIN_BATCH): a short run on small data learns
    more from its few images in more, smaller steps (5,000 CIFAR-format images, 3 epochs: 68% at batch
    256, 51 steps)."""
    while batch > MIN_BATCH and (n_train // batch < MIN_STEPS_PER_EPOCH or n_train // batch * epochs < MIN_TOTAL_STEPS):
        batch //= 2
    return max(1, batch)


def epochs_for(n_train: int, batch: int, epochs: int, min_steps: int | None) -> int:
    """`epochs`, or more where min_steps optimizer steps need them (the loader drops the last partial batch)."""
    if min_steps is None:
        return epochs
    steps_per_epoch = max(1, n_train // batch)
    return max(epochs, min(MAX_AUTO_EPOCHS, math.ceil(min_steps / steps_per_epoch)))


def warmup_epochs_for(warmup_epochs: float, steps_per_epoch: int, epochs: int) -> float:
    """The warm-up in epochs: the recipe's, and at least MIN_WARMUP_STEPS steps unless that is more
    than a fifth of the run (then a fifth)."""
    recipe = warmup_epochs * steps_per_epoch
    steps = max(recipe, min(MIN_WARMUP_STEPS, MAX_WARMUP_SHARE * steps_per_epoch * epochs))
    return warmup_epochs if steps == recipe else round(steps / steps_per_epoch, 4)


def flip_skill(split: ArraySplit, num_classes: int, limit: int = 10_000) -> tuple[float, float] | None:
    """(accuracy, accuracy on mirrored images) of a nearest-class-mean classifier fitted on half of
    the training part and scored on the other half; None where it cannot tell (too few images).

    Mirroring a shirt leaves a shirt, and the class means still recognise it; mirroring a 3 leaves no
    digit, and the means' accuracy falls towards chance. Cheap (0.2 s on 10,000 images) and it
    needs no labels of the kind "this is text".
    """
    x, y = split.images, split.labels
    if y.ndim != 1 or len(y) < 4 * num_classes:
        return None
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:limit]
    stride = math.ceil(max(x.shape[-2:]) / 32)  # at most about 32x32 pixels each, picked before the float copy
    x, y = x[order][..., ::stride, ::stride].float(), y[order]

    def features(images: torch.Tensor) -> torch.Tensor:
        f = images.flatten(1)
        f = f - f.mean(1, keepdim=True)
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-6)

    half = len(y) // 2
    fit, score = features(x[:half]), y[half:]
    present = [c for c in range(num_classes) if (y[:half] == c).any()]
    means = torch.stack([fit[y[:half] == c].mean(0) for c in present])
    names = torch.tensor(present)
    plain = (names[(features(x[half:]) @ means.T).argmax(1)] == score).float().mean().item()
    mirrored = (names[(features(torch.flip(x[half:], dims=[3])) @ means.T).argmax(1)] == score).float().mean().item()
    return plain, mirrored


def flips_keep_class(split, num_classes: int) -> tuple[bool | None, str]:
    """Whether mirrored images keep their class, and the measurement that says so (None: cannot tell)."""
    if not isinstance(split, ArraySplit):
        return None, "images on disk: not measured"
    skill = flip_skill(split, num_classes)
    if skill is None:
        return None, "too few images to measure"
    plain, mirrored = skill
    chance = 1.0 / num_classes
    if plain - chance < 0.05:
        return None, f"class means are near chance ({plain:.0%}): not measured"
    kept = (mirrored - chance) / (plain - chance)
    return (
        kept >= FLIP_KEEPS_CLASS,
        (
            f"class means recognise {plain:.0%} of images and {mirrored:.0%} of their mirror images "
            f"({kept:.0%} of the skill above chance kept)"
        ),
    )


def _batch_note(n: int, batch: int, steps: int, lr: float, recipe_batch: int, recipe_lr: float) -> str:
    """The log line for the batch (and the lr that goes with it) adapt() chose for `n` training images."""
    if batch != recipe_batch:
        scaled = (
            f"; lr {lr:.4g}, the recipe's {recipe_lr:g} per {recipe_batch} images scaled with the batch"
            if lr != recipe_lr
            else f"; lr {lr:g} as given"
        )
        return (
            f"batch {batch} for {n:,} training images: {steps} steps an epoch "
            f"(the recipe's {recipe_batch} would give {n // recipe_batch}){scaled}"
        )
    return f"batch {batch} for {n:,} training images: {steps} steps an epoch; lr {lr:.4g}"


def _adapted_augment(ds: Dataset, augment: str, translate: int, notes: list[str]) -> tuple[str, int]:
    """data.augment and data.translate fitted to `ds` (for data.augment auto); appends the log lines to `notes`."""
    n = len(ds.train)
    ops = parse_augment(augment)
    flips, why = flips_keep_class(ds.train, len(ds.classes))
    if "flip" in ops and flips is False:
        augment = "+".join(op for op in ops if op != "flip") or "none"
        notes.append(f"augment: no mirror images ({why})")
    elif "flip" in ops:
        notes.append(f"augment: mirror images ({why})")
    side = min(ds.input_shape[1:])
    if n < LARGE_DATA and side >= 16:
        translate = max(translate, round(side / 28))
        notes.append(
            f"augment: shifts of up to {translate} pixel(s) "
            f"({n:,} training images, fewer than {LARGE_DATA:,}: more augmentation)"
        )
    return augment, translate


def adapt(cfg: RunConfig, ds: Dataset, augment_auto: bool) -> tuple[RunConfig, list[str]]:
    """`cfg` with its batch, lr, warm-up, epochs and augmentation fitted to `ds` (where train.adapt),
    and the log lines that say each decision; `augment_auto` is whether data.augment was `auto`."""
    tc, oc, sc, dc = cfg.train, cfg.optim, cfg.schedule, cfg.data
    parts = parts_of(tc.adapt)
    if not parts:
        return cfg, []
    n = len(ds.train)
    notes = []
    epochs = tc.epochs
    if "epochs" in parts and tc.reference_images and n < tc.reference_images:
        # fewer images: more epochs, but fewer images seen (each epoch is cheap, and small data saturates sooner)
        epochs = min(MAX_AUTO_EPOCHS, max(epochs, math.ceil(tc.epochs * math.sqrt(tc.reference_images / max(n, 1)))))
    batch = adapted_batch(n, tc.batch_size, epochs) if "batch" in parts else tc.batch_size
    lr = oc.lr * batch / tc.batch_size if "lr" in parts else oc.lr
    steps = max(1, n // batch)  # the train loader drops the last partial batch, unless it is the only one
    notes.append(_batch_note(n, batch, steps, lr, tc.batch_size, oc.lr))
    if "epochs" in parts:
        epochs = epochs_for(n, batch, epochs, tc.min_steps)
        if epochs != tc.epochs:
            why = (
                f"{tc.epochs} x sqrt({tc.reference_images:,} / {n:,})"
                if tc.reference_images
                else f"train.min_steps={tc.min_steps} optimizer steps"
            )
            notes.append(
                f"{epochs} epochs ({epochs * steps} steps), for {why}; at most {MAX_AUTO_EPOCHS} epochs, "
                "and --epochs N trains exactly N"
            )
    warmup = sc.warmup_epochs
    if "warmup" in parts and sc.name == "warmup-linear":
        warmup = warmup_epochs_for(sc.warmup_epochs, steps, epochs)
        notes.append(f"warm-up {round(warmup * steps)} steps ({warmup:g} epochs) of {steps * epochs}")
    augment, translate = dc.augment, dc.translate
    if "augment" in parts and augment_auto and not ds.multilabel:
        augment, translate = _adapted_augment(ds, augment, translate, notes)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(dc, augment=augment, translate=translate),
        # a scaled lr to 12 significant digits, for a readable config.yaml (0.025, not 0.025000000000000001);
        # a given one exactly as given (a search trial's 0.2213691468878238 stays that)
        optim=dataclasses.replace(oc, lr=oc.lr if lr == oc.lr else float(f"{lr:.12g}")),
        schedule=dataclasses.replace(sc, warmup_epochs=warmup),
        train=dataclasses.replace(
            tc,
            batch_size=batch,
            epochs=epochs,
            adapt=False,
            **({"min_steps": None, "reference_images": None} if "epochs" in parts else {}),
        ),
    )
    return cfg, notes
