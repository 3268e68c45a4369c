"""Export a run's model to ONNX or TorchScript, with its preprocessing, and check it against PyTorch.

The exported graph takes what any image library gives: (N, C, H, W) float32 pixels on [0, 1] (the
image after the run's resize and crop, as in the sidecar JSON), and returns (N, K) class
probabilities. The normalisation (the run's mean and std), the flip TTA where the run was tested with
it, and the softmax/sigmoid are inside the graph, so a deployer cannot get them wrong. The sidecar
JSON (FILE.json) says the rest: class names, input size and mode, preprocess steps, mean/std for
reference. The ONNX file carries the same JSON in its metadata ("cnnlab"), the TorchScript file as
an extra file ("cnnlab.json").
"""

from __future__ import annotations

import inspect
import io
import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnlab.data.normalize import affine
from cnnlab.engine.loop import eval_outputs
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import probabilities
from cnnlab.serve.predictor import Classifier

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
EXPORT_FORMAT = "cnnlab-export"
ONNX_OPSET = 18


class Deployed(nn.Module):
    """pixels (N, C, H, W) on [0, 1] -> probabilities (N, K): the run's model with its normalisation,
    TTA and output activation, as cnnlab evaluate computes them."""

    def __init__(self, clf: Classifier) -> None:
        super().__init__()
        self.model = clf.model
        self.tta = clf.tta
        self.objective = clf.run.objective
        scale, shift = affine(clf.run.mean, clf.run.std, 1.0)  # x_norm = (pixels - mean) / std
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return probabilities(eval_outputs(self.model, pixels * self.scale + self.shift, self.tta), self.objective)


def sidecar(clf: Classifier, fmt: str) -> dict[str, Any]:
    """What a deployer needs beside the graph."""
    c, h, w = clf.input_shape
    info = clf.describe()
    return {
        "format": EXPORT_FORMAT,
        "version": 1,
        "exported_as": fmt,
        "model": info["model"],
        "classes": clf.classes,
        "multilabel": clf.multilabel,
        "input": {
            "name": "pixels",
            "shape": ["N", c, h, w],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "mode": info["input"]["mode"],
            "how": (
                "decode, turn upright per EXIF, convert to the mode (transparency on white), "
                "apply the preprocess steps, then (where the image is not HxW) resize to cover HxW keeping the aspect "
                "and center-crop; divide by 255"
            ),
        },
        "preprocess": clf.run.preprocess,
        "normalization": {"mean": clf.run.mean, "std": clf.run.std, "in_graph": True},
        "tta": {"flip": clf.tta, "in_graph": True},
        "output": {"name": "probabilities", "shape": ["N", len(clf.classes)], "activation": _activation(clf)},
        "notes": clf.notes,
        "checkpoint": str(clf.run.checkpoint),
        "cnnlab_version": _version(),
    }


def _activation(clf: Classifier) -> str:
    name = clf.run.objective.name
    if name == "cross-entropy":
        return "softmax"
    return "sigmoid per attribute" if clf.multilabel else "sigmoid: [1 - p, p]"


def _version() -> str:
    from cnnlab import __version__

    return __version__


def default_out(clf: Classifier, fmt: str) -> Path:
    """RUN_DIR/model.onnx (model.torchscript.pt); beside the checkpoint where there is no run folder."""
    base = clf.run.run_dir / "model" if clf.run.run_dir is not None else clf.run.checkpoint.with_suffix("")
    return base.with_name(base.name + SUFFIXES[fmt])


def export_model(clf: Classifier, fmt: str, out: Path) -> dict[str, Any]:
    """Write the graph to `out` and the sidecar JSON to `out`.json, each atomically; returns the sidecar's content."""
    from cnnlab.run_folder import atomic_write, write_json

    if fmt not in SUFFIXES:
        raise CnnlabError(f"unknown export format {fmt!r}; choose onnx or torchscript")
    module = Deployed(clf).eval()
    info = sidecar(clf, fmt)
    example = torch.rand(2, *clf.input_shape)  # batch 2: the batch dimension stays dynamic
    data = _onnx_bytes(module, example, info) if fmt == "onnx" else _torchscript_bytes(module, example, info)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda f: f.write(data), mode="wb")
        write_json(sidecar_path(out), info)
    except OSError as e:
        raise CnnlabError(f"cannot write {out}: {e.strerror or e}; choose a writable --out") from None
    return info


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _onnx_bytes(module: nn.Module, example: torch.Tensor, info: dict[str, Any]) -> bytes:
    try:
        import onnx
        import onnxscript  # noqa: F401  torch's exporter needs it; missing, it would fail deep inside
    except ImportError as e:
        raise CnnlabError(
            f"ONNX export needs the onnx and onnxscript packages ({e}): pip install onnx onnxscript onnxruntime"
        ) from None
    new_exporter = "dynamo" in inspect.signature(torch.onnx.export).parameters  # torch >= 2.5
    with tempfile.TemporaryDirectory(prefix="cnnlab-export-") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' notes on deprecations and opsets, not the user's business
        path = str(Path(tmp) / "model.onnx")
        try:
            if new_exporter:  # torch.export-based (the default since torch 2.9); the batch dimension is dynamic
                program = torch.onnx.export(
                    module,
                    (example,),
                    dynamo=True,
                    input_names=["pixels"],
                    output_names=["probabilities"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    opset_version=ONNX_OPSET,
                    verbose=False,
                    external_data=False,
                )
            else:
                torch.onnx.export(
                    module,
                    (example,),
                    path,
                    input_names=["pixels"],
                    output_names=["probabilities"],
                    dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}},
                    opset_version=17,
                )
        except (
            Exception
        ) as e:  # the exporter's failure for an operator or shape it cannot express: one line, not its traceback
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CnnlabError(
                f"torch's ONNX exporter failed on this model ({type(e).__name__}: {first}); try --format torchscript"
            ) from None
        if new_exporter:
            try:  # the exported graph (an onnx_ir model) to bytes directly, not saved and parsed again:
                # for vgg16's 550 MB, that round trip through a file took 3 s of the export's 9
                import onnx_ir  # comes with onnxscript >= 0.3

                program.model.metadata_props["cnnlab"] = json.dumps(info)
                return onnx_ir.serde.serialize_model(program.model).SerializeToString()
            except (ImportError, AttributeError):  # an older onnxscript: through the file
                program.save(path)
        model = onnx.load(path)
    entry = model.metadata_props.add()
    entry.key, entry.value = "cnnlab", json.dumps(info)
    return model.SerializeToString()


def _torchscript_bytes(module: nn.Module, example: torch.Tensor, info: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation note
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, buf, _extra_files={"cnnlab.json": json.dumps(info)})
    return buf.getvalue()


# --- the parity check -----------------------------------------------------------------------------


@dataclass
class Parity:
    images: int
    agreement: float  # share of images whose top class is the same in the exported graph and in PyTorch
    max_prob_diff: float  # the largest |p_exported - p_pytorch| over every image and class
    seconds_exported: float
    seconds_torch: float
    accuracy_exported: float | None = None  # on those images' labels (single-label runs)
    accuracy_torch: float | None = None

    def passed(self, tol: float = 1e-3) -> bool:
        return self.agreement == 1.0 and self.max_prob_diff <= tol


def runner(fmt: str, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """pixels -> probabilities with the exported file alone (onnxruntime, or torch.jit.load)."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise CnnlabError("--check of an ONNX export needs onnxruntime: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation note
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def check_parity(
    clf: Classifier,
    fmt: str,
    path: Path,
    images: int = 1000,
    data: str | None = None,
    batch_size: int = 250,
    progress=None,
) -> Parity:
    """Run the exported file and the PyTorch model on `images` test images of the run's data (or
    `data`: another copy with the same classes), evenly spaced over it, and compare their probabilities.

    PyTorch's side is cnnlab evaluate's own path (the run's loaders, normalisation and TTA). The
    exported side is fed the same images as [0, 1] pixels from the same loaders, unnormalised.
    """
    import time

    from cnnlab.evaluation import load_split, predict, split_loader

    run = clf.run
    _, split = load_split(run, "auto", data)
    # evenly spaced over the split: a folder's files come sorted by class, so its first N hold a few classes only
    split = split.subset(torch.linspace(0, len(split) - 1, min(images, len(split))).round().long().unique())
    t0 = time.perf_counter()
    reference = predict(clf.model, split_loader(run, split, batch_size), run.objective, tta=clf.tta)
    ref = reference.probs
    t_torch = time.perf_counter() - t0
    raw = split_loader(run, split, batch_size, normalise=False)
    forward = runner(fmt, path)
    outs = []
    t0 = time.perf_counter()
    for x, _ in raw:
        outs.append(forward(x.contiguous()).float())
        if progress is not None:
            progress(len(x))
    t_exp = time.perf_counter() - t0
    got = torch.cat(outs)
    if got.shape != ref.shape:
        raise CnnlabError(
            f"the exported model gave {tuple(got.shape)} probabilities for {tuple(ref.shape)} from PyTorch"
        )
    if clf.multilabel:
        agree = float(((got > 0.5) == (ref > 0.5)).all(1).float().mean())
        return Parity(len(ref), agree, float((got - ref).abs().max()), t_exp, t_torch)
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
    accuracy = [float((p.argmax(1) == reference.targets).float().mean()) for p in (got, ref)]
    return Parity(len(ref), agree, float((got - ref).abs().max()), t_exp, t_torch, *accuracy)
