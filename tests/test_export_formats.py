"""cnnlab export's int8 ONNX (ONNX Runtime's static quantization) and torch.export .pt2 formats, the
figures of --check, and the flag combinations it refuses. The fp32 ONNX and TorchScript exports, over
every registered model, are in tests/test_deploy.py."""

import json

import numpy as np
import pytest
import torch
from conftest import run_main

import cnnlab
import cnnlab.serve.export as export
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import load_split
from cnnlab.serve.export import Parity, calibration_batches, export_model, runner, sidecar_path


@pytest.fixture(scope="module")
def clf(deploy_run):
    return cnnlab.load(deploy_run)


@pytest.fixture(scope="module")
def int8_export(deploy_run, tmp_path_factory):
    """`cnnlab export RUN --format onnx --int8 --calibration-images 128 --check --check-images 200`:
    (its result, the file). One int8 export for the tests below: each costs about 3 s of CPU."""
    out = tmp_path_factory.mktemp("int8") / "m.int8.onnx"
    with pytest.MonkeyPatch.context() as mp:
        _quick_latency(mp)
        r = run_main(
            "export", str(deploy_run), "--format", "onnx", "--int8", "--calibration-images", "128",
            "--check", "--check-images", "200", "--out", str(out),
        )  # fmt: skip
    return r, out


def _quick_latency(mp: pytest.MonkeyPatch) -> None:
    """--check's latencies at batch 1 and 4, in about 0.1 s: the figures are informational, and at batch
    1 and 256 for 1 s each they would cost the suite 2 s a call."""
    mp.setattr(export, "LATENCY_BATCHES", (1, 4))
    mp.setattr(export, "LATENCY_SECONDS", 0.05)


@pytest.fixture
def quick_latency(monkeypatch):
    _quick_latency(monkeypatch)


def test_calibration_images_come_from_the_training_part_as_the_graph_takes_them(clf):
    """Evenly spaced training images, as [0, 1] float32 pixels (the fixture has no resize step)."""
    batches = calibration_batches(clf, 50, batch_size=16)
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    got = np.concatenate(batches)
    ds, _ = load_split(clf.run, "test")
    index = torch.linspace(0, len(ds.train) - 1, 50).round().long()
    want = ds.train.images[index].float().numpy() / 255
    assert got.dtype == np.float32 and got.shape == (50, 1, 28, 28)
    assert np.allclose(got, want, atol=1e-6)


def test_int8_export_is_a_valid_quantized_model_whose_top1_mostly_agrees(clf, int8_export):
    import onnx

    r, out = int8_export
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QLinearConv", "QGemm"} <= ops and "Conv" not in ops  # every weighted operator is int8
    assert "Softmax" in ops and "QLinearSoftmax" not in ops  # the probabilities themselves stay float32
    info = json.loads(sidecar_path(out).read_text())
    assert json.loads({p.key: p.value for p in model.metadata_props}["cnnlab"]) == info
    assert info["quantization"]["calibration"] == {"images": 128, "part": "train", "method": "MinMax"}
    fp32_bytes = sum(t.numel() * t.element_size() for t in clf.model.state_dict().values())
    assert out.stat().st_size < 0.5 * fp32_bytes  # int8 weights: about a quarter of the bytes (fp32 ONNX: 1.03x)

    check = next(x for x in r.stdout.splitlines() if x.startswith("parity check"))
    agreement = float(check.split("top-1 agreement ")[1].split("%")[0])
    assert "on 200 test images" in check and agreement >= 90, check
    x = torch.rand(3, *clf.input_shape, generator=torch.Generator().manual_seed(0))
    probs = runner("onnx", out)(x)
    assert probs.dtype == torch.float32 and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
    assert torch.equal(probs.argmax(1), runner("onnx", out)(x).argmax(1))


def test_pt2_round_trips_through_torch_export_load_with_exact_agreement(deploy_run, clf, tmp_path, quick_latency):
    out = tmp_path / "m.pt2"
    r = run_main("export", str(deploy_run), "--format", "pt2", "--check", "--check-images", "200", "--out", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    check = next(x for x in lines if x.startswith("parity check"))
    assert "torch.export" in check and "top-1 agreement 100.00% (200/200)" in check and "passed" in check
    assert any(x.startswith("accuracy on those images: exported") for x in lines)
    assert any(x.startswith("size: exported file") for x in lines)
    assert [x.split(" (median)")[0] for x in lines if x.startswith("latency")] == [
        "latency at batch 1",
        "latency at batch 4",
    ]

    extra = {"cnnlab.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    assert json.loads(extra["cnnlab.json"]) == json.loads(sidecar_path(out).read_text())
    module = program.module()
    for n in (1, 7):  # the batch dimension is dynamic
        x = torch.rand(n, *clf.input_shape, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            got = module(x)
        want = clf.probabilities(x * 255)
        assert torch.equal(got.argmax(1), want.argmax(1)) and (got - want).abs().max() < 1e-5

    r = run_main("predict", str(out), str(deploy_run / "config.yaml"))  # an exported file is not a checkpoint
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "exported torch.export (.pt2) model, not a training checkpoint" in r.stderr, r.stderr


def test_int8_check_prints_the_figures_and_judges_by_accuracy(int8_export):
    r, _ = int8_export
    lines = r.stdout.splitlines()
    assert "int8 calibrated on 128 training images" in lines[0]
    check = next(x for x in lines if x.startswith("parity check"))
    assert "onnxruntime (int8)" in check and "needs accuracy within 0.5 points of PyTorch's" in check
    accuracy = next(x for x in lines if x.startswith("accuracy on those images"))
    exported, pytorch = (float(accuracy.split(f"{who} ")[1].split("%")[0]) for who in ("exported", "PyTorch"))
    assert r.returncode == (0 if exported >= pytorch - 0.5 - 1e-6 else 1) and ("passed" in check) == (r.returncode == 0)
    assert any(x.startswith("size: exported file") for x in lines)
    assert len([x for x in lines if x.startswith("latency at batch")]) == 2


def test_the_int8_verdict_is_its_accuracy_and_fp32s_is_equal_probabilities():
    def parity(exported, pytorch, agreement=0.97, diff=0.05, int8=True):
        return Parity(1000, agreement, diff, 1.0, 1.0, exported, pytorch, int8=int8)

    assert parity(0.9180, 0.9223).passed()  # 0.43 points below
    assert parity(0.9240, 0.9223).passed()  # above
    assert not parity(0.9170, 0.9223).passed()  # 0.53 points below
    assert parity(183 / 200, 184 / 200).passed()  # exactly 0.5 points (one image in 200) below
    assert not parity(0.9223, 0.9223, int8=False).passed()  # fp32: 97% agreement fails, whatever the accuracy
    assert parity(0.9223, 0.9223, agreement=1.0, diff=1e-6, int8=False).passed()


def test_torchscript_still_exports_with_torchs_deprecation_warning(clf, tmp_path):
    with pytest.warns(FutureWarning, match="torch.jit"):
        export_model(clf, "torchscript", tmp_path / "m.pt")
    assert (tmp_path / "m.pt").stat().st_size > 0
    r = run_main("export", "--help")
    assert r.returncode == 0 and "torchscript is deprecated" in r.stdout and "pt2" in r.stdout


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--format", "torchscript", "--int8"], "--int8 is for --format onnx"),
        (["--format", "pt2", "--int8"], "--int8 is for --format onnx"),
        (["--format", "onnx", "--calibration-images", "100"], "--calibration-images is for --int8"),
        (["--format", "onnx", "--int8", "--calibration-images", "0"], "--calibration-images"),
    ],
)
def test_bad_flag_combinations_get_one_line(deploy_run, flags, words):
    r = run_main("export", str(deploy_run), *flags)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_library_refuses_int8_outside_onnx(clf, tmp_path):
    with pytest.raises(CnnlabError, match="int8 is for the onnx format"):
        export_model(clf, "pt2", tmp_path / "m.pt2", int8=True)
    assert not (tmp_path / "m.pt2").exists()
