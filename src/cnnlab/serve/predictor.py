"""Predicting on new images exactly as the run was evaluated: `cnnlab.load(CHECKPOINT).predict(image)`.

An image goes through the same steps as a test image of the run: decoded by data/images.open_image
(EXIF orientation, mode conversion, transparency on white), the preprocess steps stored in the
checkpoint (torchvision's resize and crop), then normalised by the loader's formula with the saved
mean and std, and the fp32 model (with flip TTA where the run was tested with it). Only one step is
added: an image that does not come out at the model's input size (a photo given to a Fashion-MNIST
model, whose run had no resize step) is center-cropped to that size's aspect ratio and resized to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cnnlab.data.folder import visible
from cnnlab.data.images import (
    IMAGE_SUFFIXES,
    MAX_ASPECT,
    BadImage,
    ImageSource,
    check_pixels,
    decoding,
    open_image,
    preprocess_transform,
    to_uint8_tensor,
    upright,
)
from cnnlab.data.normalize import affine
from cnnlab.engine.loop import eval_outputs
from cnnlab.evaluation import LoadedRun, load_run, probabilities

ImageLike = str | Path | bytes | Image.Image | torch.Tensor


@dataclass
class Prediction:
    """The classes of one image, most probable first, with their probabilities."""

    top: list[tuple[str, float]]  # (class name, probability), the top k, most probable first
    source: str = ""  # the file, where the image came from one
    resized: bool = (
        False  # True: not the model's input size after the run's preprocessing; center-cropped to its shape and resized
    )
    present: list[str] | None = (
        None  # a multi-label model's attributes over 0.5 (all of them, not only the top k); None otherwise
    )

    @property
    def label(self) -> str:
        """The most probable class (for a multi-label model: the attributes over 0.5, joined by '+')."""
        if self.present is not None:
            return "+".join(self.present) or "(none)"
        return self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "probability": self.probability,
            "top": [{"class": c, "probability": p} for c, p in self.top],
        }
        if self.present is not None:
            out["present"] = self.present
        if self.source:
            out = {"file": self.source, **out}
        return {**out, "resized": self.resized}


def image_files(sources: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files, [(source, reason)] for sources that do not exist). A folder gives its image
    files (by suffix, sub-folders included, in sorted order); a file named by the user is always tried."""
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            # as the folder datasets: hidden files and folders (a Mac's ._shoe.png) are not images
            found = sorted(
                q
                for q in p.rglob("*")
                if q.suffix.lower() in IMAGE_SUFFIXES
                and all(visible(Path(part)) for part in q.relative_to(p).parts)
                and q.is_file()
            )
            if not found:
                missing.append((str(p), f"a folder with no image files ({', '.join(sorted(IMAGE_SUFFIXES)[:4])}, ...)"))
            files += found
        elif p.is_file():
            files.append(p)
        else:
            missing.append((str(p), "no such file or folder"))
    return files, missing


class Classifier:
    """A trained run's model with its preprocessing, ready for new images.

    Get one with `cnnlab.load(CHECKPOINT)` (a run folder or a checkpoint file). Not thread-safe:
    share one between threads only under a lock (cnnlab serve does).
    """

    def __init__(
        self, run: LoadedRun, tta: bool | None = None, max_pixels: int | None = None, limit_name: str = "max_pixels"
    ) -> None:
        self.run = run
        self.model = run.model  # eval mode, fp32, CPU
        self.classes = list(run.classes)
        self.input_shape = tuple(run.input_shape)  # (C, H, W)
        self.tta = run.tta(tta)
        self.max_pixels = int(max_pixels or run.cfg.data.max_pixels)  # default: the run's data.max_pixels
        self.limit_name = limit_name  # how a user raises it, named in the refusal of a larger image
        self.multilabel = run.objective.multilabel
        self._transform = preprocess_transform(run.preprocess)
        # the loaders' formula for 0..255 pixels: x_norm = (x / 255 - mean) / std = x * scale + shift
        self.scale, self.shift = affine(run.mean, run.std, 255.0)
        self.notes: list[str] = []  # what a user should know about feeding this model images
        if run.value_max != 255.0:
            self.notes.append(
                f"this run was trained on float arrays (x / {run.value_max:g}), not 8-bit images; images are fed as "
                "pixel / 255, right only where those arrays held values on [0, 1]"
            )

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        tta: bool | None = None,
        max_pixels: int | None = None,
        limit_name: str = "max_pixels",
    ) -> Classifier:
        """The model of a run folder (its best.pt) or of a checkpoint, read with weights_only=True."""
        return cls(load_run(checkpoint), tta=tta, max_pixels=max_pixels, limit_name=limit_name)

    @property
    def name(self) -> str:
        return self.run.cfg.model.name

    # --- images in ------------------------------------------------------------------------------

    def pixels(self, image: ImageLike) -> tuple[torch.Tensor, bool]:
        """(the image as the model takes it before normalisation: (C, H, W) float32 on the 0..255
        scale, whether it had to be resized to fit). Raises BadImage for what is not an image."""
        c, h, w = self.input_shape
        if isinstance(image, torch.Tensor):
            x = self._tensor_pixels(image)
        else:
            if isinstance(image, Image.Image):
                with decoding():  # a lazily opened image decodes here
                    check_pixels(image.size, self.max_pixels, self.limit_name, MAX_ASPECT)
                    im = upright(image, c)
            else:
                im = open_image(_source(image), c, self.max_pixels, self.limit_name, MAX_ASPECT)
            x = to_uint8_tensor(im, self._transform)  # (C, H', W') uint8, the run's resize and crop
        resized = tuple(x.shape[-2:]) != (h, w)
        if resized:
            from torchvision.transforms.v2 import functional as TF

            # the middle of the image at the input's aspect ratio, resized to (h, w): the region that
            # resizing to cover and cropping gives (the aspect is kept, as the run's own steps keep
            # it), without first making a larger image
            H, W = x.shape[-2:]
            x = TF.center_crop(x, [max(1, min(H, round(W * h / w))), max(1, min(W, round(H * w / h)))])
            x = TF.resize(x, [h, w], antialias=True)
        return x.float(), resized

    def _tensor_pixels(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor image: (C, H, W) or (H, W), uint8 on 0..255 or float on [0, 1] (torchvision's
        ToTensor convention), through the run's preprocess steps; (C, H', W') uint8 or 0..255 float."""
        from torchvision.transforms.v2 import functional as TF

        c = self.input_shape[0]
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise BadImage(f"a tensor image is (C, H, W) with C 1, 3 or 4, or (H, W); got {tuple(t.shape)}")
        check_pixels((t.shape[2], t.shape[1]), self.max_pixels, self.limit_name, MAX_ASPECT)
        if t.dtype == torch.uint8:  # exactly as a decoded file: through PIL's mode conversion
            return to_uint8_tensor(upright(TF.to_pil_image(t.cpu()), c), self._transform)
        if not t.is_floating_point():
            raise BadImage(f"a tensor image is uint8 (0..255) or float ([0, 1]); got {t.dtype}")
        t = t.detach().cpu().float()
        if not bool(torch.isfinite(t).all()) or float(t.min()) < -1e-3 or float(t.max()) > 1 + 1e-3:
            raise BadImage(
                "a float tensor image takes values in [0, 1] (torchvision's ToTensor); give uint8 for 0..255"
            )
        if t.shape[0] == 4:
            t = t[:3] * t[3:] + (1 - t[3:])  # transparency on white, as for files
        if t.shape[0] != c:
            t = TF.rgb_to_grayscale(t) if c == 1 else t.expand(3, -1, -1)
        return self._transform(t.clamp(0, 1)) * 255.0

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) 0..255 pixels -> the model's input, by the loaders' own formula."""
        return torch.addcmul(self.shift, x.float(), self.scale)

    # --- predictions out ------------------------------------------------------------------------

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, tta: bool | None = None) -> torch.Tensor:
        """(N, K) class probabilities for a (N, C, H, W) batch of 0..255 pixels (see pixels())."""
        out = eval_outputs(self.model, self.normalise(x), self.tta if tta is None else tta)
        return probabilities(out, self.run.objective)

    def _prediction(self, probs: torch.Tensor, topk: int | None, source: str = "", resized: bool = False) -> Prediction:
        k = len(self.classes) if topk is None else max(1, min(topk, len(self.classes)))
        p, idx = probs.topk(k)
        present = [c for c, v in zip(self.classes, probs.tolist()) if v > 0.5] if self.multilabel else None
        return Prediction(
            [(self.classes[i], float(v)) for v, i in zip(p.tolist(), idx.tolist())], source, resized, present
        )

    def predict(self, image: ImageLike, topk: int | None = 5, tta: bool | None = None) -> Prediction:
        """The top `topk` classes (None: all) of one image: a path, the bytes of an image file, a
        PIL image, or a tensor ((C, H, W) uint8 0..255 or float [0, 1]). Raises BadImage."""
        x, resized = self.pixels(image)
        return self.predict_pixels(x, resized, topk, tta, _name(image))

    def predict_pixels(
        self, x: torch.Tensor, resized: bool = False, topk: int | None = 5, tta: bool | None = None, source: str = ""
    ) -> Prediction:
        """predict() for what pixels() gave: the model's part alone (cnnlab serve decodes outside its lock)."""
        return self._prediction(self.probabilities(x.unsqueeze(0), tta)[0], topk, source, resized)

    def predict_many(
        self,
        images: Iterable[ImageLike],
        topk: int | None = 5,
        tta: bool | None = None,
        batch_size: int = 256,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """(predictions, [(image, reason)] for those that are not images), in batches of `batch_size`.
        `progress(n)` is called after each n images are read."""
        preds: list[Prediction] = []
        bad: list[tuple[str, str]] = []
        batch: list[tuple[torch.Tensor, str, bool]] = []

        def flush() -> None:
            if batch:
                probs = self.probabilities(torch.stack([b[0] for b in batch]), tta)
                preds.extend(self._prediction(p, topk, src, rs) for p, (_, src, rs) in zip(probs, batch))
                batch.clear()

        for n, image in enumerate(images):
            try:
                x, resized = self.pixels(image)
                batch.append((x, _name(image) or f"#{n}", resized))
            except BadImage as e:
                bad.append((_name(image) or f"#{n}", str(e)))
            if len(batch) >= batch_size:
                flush()
            if progress is not None:
                progress(1)
        flush()
        return preds, bad

    def explain(self, image: ImageLike, topk: int | None = 5) -> tuple[Prediction, torch.Tensor, torch.Tensor]:
        """(prediction, Grad-CAM heat (H, W) in [0, 1] for the top class, the image (H, W, C) in [0, 1]).
        The heat explains the model's score on the image itself (not its mirror image, under TTA)."""
        x, resized = self.pixels(image)
        return self.explain_pixels(x, resized, topk, _name(image))

    def explain_pixels(
        self, x: torch.Tensor, resized: bool = False, topk: int | None = 5, source: str = ""
    ) -> tuple[Prediction, torch.Tensor, torch.Tensor]:
        """explain() for what pixels() gave."""
        from cnnlab.report.gradcam import grad_cam

        pred = self.predict_pixels(x, resized, topk, source=source)
        one_output = not self.multilabel and self.run.objective.name != "cross-entropy"
        # a one-output binary model: grad_cam explains the predicted side of its one score; otherwise
        # the top class (for a multi-label model, the most probable attribute)
        cls = None if one_output else torch.tensor([self.classes.index(pred.top[0][0])])
        heat, _ = grad_cam(self.model, self.normalise(x.unsqueeze(0)), cls)
        return pred, heat[0], (x / 255.0).permute(1, 2, 0).clamp(0, 1)

    def describe(self) -> dict[str, Any]:
        """What a client needs to know: the model, its classes, its input and preprocessing."""
        c, h, w = self.input_shape
        return {
            "model": self.name,
            "classes": self.classes,
            "multilabel": self.multilabel,
            "input": {"channels": c, "height": h, "width": w, "mode": "L" if c == 1 else "RGB"},
            "preprocess": self.run.preprocess,
            "tta": self.tta,
        }


def _source(image: str | Path | bytes) -> ImageSource:
    if isinstance(image, (str, os.PathLike)):
        return Path(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    raise BadImage(
        f"not an image: a {type(image).__name__}; give a path, the bytes of an image file, a PIL image or a tensor"
    )


def _name(image: Any) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else ""


def load(checkpoint: str | Path, tta: bool | None = None) -> Classifier:
    """A run's model with its preprocessing: `cnnlab.load("runs/x").predict("shoe.png")`."""
    return Classifier.load(checkpoint, tta=tta)


__all__ = ["Classifier", "Prediction", "image_files", "load"]
