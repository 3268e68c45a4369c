"""Export a run's model to ONNX (fp32, or int8 by ONNX Runtime's static quantization), torch.export's
.pt2 or TorchScript, with its preprocessing, and check it against PyTorch.

The exported graph takes what any image library gives: (N, C, H, W) float32 pixels on [0, 1] (the
image after the run's resize and crop, as in the sidecar JSON), and returns (N, K) class
probabilities. The normalisation (the run's mean and std), the flip TTA where the run was tested with
it, and the softmax/sigmoid are inside the graph, so a deployer cannot get them wrong. The sidecar
JSON (FILE.json) says the rest: class names, input size and mode, preprocess steps, mean/std for
reference. The ONNX file carries the same JSON in its metadata ("cnnlab"), the .pt2 and TorchScript
files as an extra file ("cnnlab.json").

TorchScript is kept for the files and code that already use it, but torch 2.14 deprecates torch.jit
(its FutureWarnings are left for the user to see): .pt2 (torch.export) is its replacement.
"""

from __future__ import annotations

import inspect
import io
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cnnlab.data.normalize import affine
from cnnlab.engine.loop import eval_outputs
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import probabilities
from cnnlab.serve.predictor import Classifier

SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".torchscript.pt"}
INT8_SUFFIX = ".int8.onnx"
EXPORT_FORMAT = "cnnlab-export"
ONNX_OPSET = 18
# int8: how many training images set the activations' ranges. Measured on the default run: 512 gave
# 92.25% against fp32's 92.23% on the 10,000 test images; a few hundred is what ONNX Runtime's examples use.
CALIBRATION_IMAGES = 512
# Only the weighted operators are quantized: they hold the weights (the default run's file: 567 -> 125 kB) and the
# arithmetic int8 speeds up. Quantizing every operator (the quantizer's default) also quantizes the
# softmax, whose probabilities then come in steps of 1/256 (ties in the top class), for 5% at most in speed.
INT8_OPS = ["Conv", "Gemm", "MatMul"]


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


def default_out(clf: Classifier, fmt: str, int8: bool = False) -> Path:
    """RUN_DIR/model.onnx (model.int8.onnx, model.pt2, model.torchscript.pt); beside the checkpoint where there is
    no run folder."""
    base = clf.run.run_dir / "model" if clf.run.run_dir is not None else clf.run.checkpoint.with_suffix("")
    return base.with_name(base.name + (INT8_SUFFIX if int8 else SUFFIXES[fmt]))


def export_model(
    clf: Classifier,
    fmt: str,
    out: Path,
    int8: bool = False,
    calibration_images: int = CALIBRATION_IMAGES,
    data: str | None = None,
) -> dict[str, Any]:
    """Write the graph to `out` and the sidecar JSON to `out`.json, each atomically; returns the sidecar's content.

    int8 (ONNX only): ONNX Runtime's static quantization, its activation ranges measured on
    `calibration_images` images of the run's training part (or of `data`, another copy of it)."""
    from cnnlab.run_folder import atomic_write, write_json

    if fmt not in SUFFIXES:
        raise CnnlabError(f"unknown export format {fmt!r}; choose {', '.join(SUFFIXES)}")
    if int8 and fmt != "onnx":
        raise CnnlabError(f"int8 is for the onnx format (ONNX Runtime's quantization), not {fmt}; use --format onnx")
    module = Deployed(clf).eval()
    info = sidecar(clf, fmt)
    example = torch.rand(2, *clf.input_shape)  # batch 2: the batch dimension stays dynamic
    if fmt == "onnx":
        blob = _onnx_bytes(module, example, info)
        if int8:
            batches = calibration_batches(clf, calibration_images, data)
            info["quantization"] = _quantization_info(sum(len(b) for b in batches))
            blob = _int8_bytes(blob, batches, info)
    elif fmt == "pt2":
        blob = _pt2_bytes(module, example, info)
    else:
        blob = _torchscript_bytes(module, example, info)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda f: f.write(blob), mode="wb")
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
    with torch.no_grad():  # torch.jit's FutureWarnings stay: the user should know this format is on its way out
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, buf, _extra_files={"cnnlab.json": json.dumps(info)})
    return buf.getvalue()


def _pt2_bytes(module: nn.Module, example: torch.Tensor, info: dict[str, Any]) -> bytes:
    """torch.export's program (the graph and its weights; torch.export.load reads it, no Python code of cnnlab)."""
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:  # noqa: BLE001  an operator or a shape torch.export cannot capture: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CnnlabError(
            f"torch.export failed on this model ({type(e).__name__}: {first}); try --format onnx"
        ) from None
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={"cnnlab.json": json.dumps(info)})
    return buf.getvalue()


class _Batches:
    """ONNX Runtime's CalibrationDataReader (it needs only get_next): {"pixels": batch}, then None."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"pixels": batch}


def evenly_spaced(split, n: int):
    """`n` images of `split` (all, where it has fewer), evenly spaced over it: a folder's files come sorted
    by class, so its first n would hold a few classes only."""
    return split.subset(torch.linspace(0, len(split) - 1, min(n, len(split))).round().long().unique())


def calibration_batches(clf: Classifier, images: int, data: str | None = None, batch_size: int = 32) -> list:
    """`images` images of the run's training part (never its test part), evenly spaced over it, as the
    exported graph takes them: (B, C, H, W) float32 pixels on [0, 1] after the run's preprocess steps."""
    from cnnlab.evaluation import load_split, split_loader

    ds, _ = load_split(clf.run, "auto", data)
    train = ds.train
    if len(train) == 0:
        raise CnnlabError("the data has no training images to calibrate int8 with; give --data with a training part")
    loader = split_loader(clf.run, evenly_spaced(train, images), batch_size, normalise=False)
    return [x.contiguous().numpy() for x, _ in loader]


def _quantization_info(images: int) -> dict[str, Any]:
    import onnxruntime

    return {
        "dtype": "int8",
        "by": f"onnxruntime {onnxruntime.__version__} quantize_static",
        "format": "QOperator",
        "operators": INT8_OPS,
        "weights": "int8, one scale per output channel",
        "activations": "uint8, one scale per tensor",
        "calibration": {"images": images, "part": "train", "method": "MinMax"},
        "note": "input and output stay float32; the check compares it with the fp32 model",
    }


def _int8_bytes(fp32: bytes, batches: list[np.ndarray], info: dict[str, Any]) -> bytes:
    """The fp32 ONNX graph, pre-processed (shape inference, constant folding) and quantized with the
    activation ranges of `batches`.

    QOperator (QLinearConv, QGemm) with uint8 activations and per-channel int8 weights, of the variants
    tried on the default run (2-core Xeon model 207, AVX-512 VNNI; 10,000 test images): QDQ and
    QOperator, per-tensor and per-channel, all operators or the weighted ones, MinMax, entropy and
    percentile ranges were all within 0.1 points of fp32's accuracy; QOperator was as fast as QDQ or
    faster (1.4x at batch 256 on this graph), and per-channel weights as fast as per-tensor and 0.06
    points more accurate."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise CnnlabError(f"--int8 needs onnxruntime's quantization ({e}): pip install onnxruntime onnx") from None
    with tempfile.TemporaryDirectory(prefix="cnnlab-int8-") as tmp:
        src, prepared, dst = (str(Path(tmp) / name) for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        Path(src).write_bytes(fp32)
        quant_pre_process(src, prepared)  # what ONNX Runtime asks for before quantizing: shapes known, graph folded
        quantize_static(
            prepared,
            dst,
            _Batches(batches),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=INT8_OPS,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # MinMax keeps each batch's min and max per tensor (ReduceMin/ReduceMax in the graph it
            # calibrates with), not the activations: memory does not grow with the number of images
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = onnx.load(dst)
    kept = [p for p in model.metadata_props if p.key != "cnnlab"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = "cnnlab", json.dumps(info)
    return model.SerializeToString()


# --- the parity check -----------------------------------------------------------------------------

INT8_POINTS = 0.005  # int8 passes where its accuracy is within 0.5 points of the fp32 model's on the same images
LATENCY_BATCHES = (1, 256)
LATENCY_SECONDS = 1.0  # per batch size, over both models and 3 rounds: at batch 256 the default model's
# 50-100 ms calls give 6 to 12 timed calls each, and --check takes 1 to 2 s longer than without them


@dataclass
class Parity:
    images: int
    agreement: float  # share of images whose top class is the same in the exported graph and in PyTorch
    max_prob_diff: float  # the largest |p_exported - p_pytorch| over every image and class
    seconds_exported: float
    seconds_torch: float
    accuracy_exported: float | None = None  # on those images' labels (multi-label: of every (image, attribute))
    accuracy_torch: float | None = None
    int8: bool = False  # a quantized graph: judged by its accuracy, not by equal probabilities
    bytes_exported: int = 0  # the exported file
    bytes_torch: int = 0  # the fp32 model's parameters and buffers
    latency: dict[int, tuple[float, float]] = field(default_factory=dict)  # batch -> median s (exported, PyTorch)

    def passed(self, tol: float = 1e-3) -> bool:
        if not self.int8:
            return self.agreement == 1.0 and self.max_prob_diff <= tol
        # 1e-9: exactly 0.5 points below passes (at 200 images one image is 0.5 points), whatever the rounding
        return self.accuracy_exported is not None and self.accuracy_exported >= self.accuracy_torch - INT8_POINTS - 1e-9

    def criterion(self) -> str:
        if self.int8:
            return f"needs accuracy within {100 * INT8_POINTS:g} points of PyTorch's"
        return "needs 100% and <= 1e-03"


def runner(fmt: str, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """pixels -> probabilities with the exported file alone (onnxruntime, torch.export.load or torch.jit.load)."""
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
    if fmt == "pt2":
        module = torch.export.load(str(path)).module()
    else:  # torch.jit's FutureWarning is torch's to give
        module = torch.jit.load(str(path), map_location="cpu")
        module.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def median_latencies(
    forwards: list[Callable[[torch.Tensor], Any]], x: torch.Tensor, budget: float = 1.0, rounds: int = 3
) -> list[float]:
    """The median seconds of forward(x) for each of `forwards`, measured in `rounds` rounds that time
    each in turn, so that a load on the machine that comes and goes meets all of them alike. Each
    forward runs in a block of its own (one uncounted call, then 1 to 20 timed ones, as many as fit in
    budget / (rounds * len(forwards)) seconds): calls interleaved one by one would time PyTorch's
    threads against onnxruntime's, which spin for a while after each run."""
    times: list[list[float]] = [[] for _ in forwards]
    block = budget / (rounds * len(forwards))
    for _ in range(rounds):
        for forward, seconds in zip(forwards, times, strict=True):
            forward(x)
            end, n = time.perf_counter() + block, 0
            while n < 1 or (n < 20 and time.perf_counter() < end):
                t0 = time.perf_counter()
                forward(x)
                seconds.append(time.perf_counter() - t0)
                n += 1
    return [statistics.median(seconds) for seconds in times]


def _latencies(clf: Classifier, forward: Callable, pixels: torch.Tensor) -> dict[int, tuple[float, float]]:
    """batch -> (exported, PyTorch) median seconds, both on the same [0, 1] pixels; PyTorch is the
    exported module itself (normalisation, TTA, softmax), in fp32 with torch's threads."""
    module = Deployed(clf).eval()

    def torch_forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    out = {}
    for batch in LATENCY_BATCHES:
        x = pixels.repeat(-(-batch // len(pixels)), 1, 1, 1)[:batch].contiguous()  # repeated where fewer images
        exported, pytorch = median_latencies([forward, torch_forward], x, LATENCY_SECONDS)
        out[batch] = (exported, pytorch)
    return out


def check_parity(
    clf: Classifier,
    fmt: str,
    path: Path,
    images: int = 1000,
    data: str | None = None,
    batch_size: int = 250,
    progress=None,
    int8: bool = False,
    latency: bool = False,
) -> Parity:
    """Run the exported file and the PyTorch model on `images` test images of the run's data (or
    `data`: another copy with the same classes), evenly spaced over it, and compare their probabilities;
    with `latency`, also time both at batch 1 and 256.

    PyTorch's side is cnnlab evaluate's own path (the run's loaders, normalisation and TTA). The
    exported side is fed the same images as [0, 1] pixels from the same loaders, unnormalised.
    """
    from cnnlab.evaluation import load_split, predict, split_loader

    run = clf.run
    _, split = load_split(run, "auto", data)
    # evenly spaced over the split: a folder's files come sorted by class, so its first N hold a few classes only
    split = evenly_spaced(split, images)
    t0 = time.perf_counter()
    reference = predict(clf.model, split_loader(run, split, batch_size), run.objective, tta=clf.tta)
    t_torch = time.perf_counter() - t0
    forward = runner(fmt, path)
    pixels, outs = [], []
    t0 = time.perf_counter()
    for x, _ in split_loader(run, split, batch_size, normalise=False):
        outs.append(forward(x.contiguous()).float())
        pixels.append(x[: max(LATENCY_BATCHES) - sum(len(p) for p in pixels)])  # the first images, for the latencies
        if progress is not None:
            progress(len(x))
    t_exp = time.perf_counter() - t0
    p = _compare(clf, torch.cat(outs), reference, t_exp, t_torch)
    p.int8, p.bytes_exported = int8, path.stat().st_size
    p.bytes_torch = sum(t.numel() * t.element_size() for t in clf.model.state_dict().values())
    if latency:
        p.latency = _latencies(clf, forward, torch.cat(pixels))
    return p


def _compare(clf: Classifier, got: torch.Tensor, reference, t_exp: float, t_torch: float) -> Parity:
    ref = reference.probs
    if got.shape != ref.shape:
        raise CnnlabError(
            f"the exported model gave {tuple(got.shape)} probabilities for {tuple(ref.shape)} from PyTorch"
        )
    diff = float((got - ref).abs().max())
    if clf.multilabel:  # an image agrees where every attribute's decision does; accuracy is per (image, attribute)
        agree = float(((got > 0.5) == (ref > 0.5)).all(1).float().mean())
        accuracy = [float(((p > 0.5) == reference.targets.bool()).float().mean()) for p in (got, ref)]
    else:
        agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
        accuracy = [float((p.argmax(1) == reference.targets).float().mean()) for p in (got, ref)]
    return Parity(len(ref), agree, diff, t_exp, t_torch, *accuracy)
