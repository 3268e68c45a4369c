"""Deploying a run: cnnlab.load(...).predict, cnnlab predict, cnnlab export (with its parity check, over
every registered model) and the refusal of checkpoints that hold pickled code. The web demo is in
tests/test_serve.py."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, write_corrupt_files, write_image
from PIL import Image

import cnnlab
from cnnlab.cli import main
from cnnlab.config import RunConfig
from cnnlab.data.images import BadImage, TooManyPixels
from cnnlab.engine.checkpoint import save_checkpoint
from cnnlab.errors import CnnlabError
from cnnlab.evaluation import load_split, predict, split_loader
from cnnlab.models import MODELS, create_model, default_input
from cnnlab.serve.export import check_parity, export_model, runner, sidecar_path
from cnnlab.serve.predictor import Classifier, image_files


def cli(capsys, *args: str):
    """`cnnlab ARGS` in this process (a subprocess would import torch again: 2 s a call): (exit code, stdout,
    stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def run(deploy_run):
    return deploy_run


@pytest.fixture(scope="module")
def clf(run):
    return cnnlab.load(run)


@pytest.fixture(scope="module")
def test_images(clf):
    _, split = load_split(clf.run, "test")
    return split.subset(slice(0, 40))


def probs_of(preds, classes):
    return torch.tensor([[dict(p.top)[c] for c in classes] for p in preds])


# --- the Python API ------------------------------------------------------------------------------


def test_predict_gives_evaluates_probabilities_for_every_kind_of_input(clf, test_images, tmp_path):
    """A path, a file's bytes, a PIL image, a uint8 tensor and a [0, 1] float tensor of the same test
    image all give cnnlab evaluate's probabilities."""
    want = predict(clf.model, split_loader(clf.run, test_images), clf.run.objective, tta=clf.tta).probs
    tensors = [test_images.images[i] for i in range(len(test_images))]  # (1, 28, 28) uint8
    paths = []
    for i, t in enumerate(tensors):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(t[0].numpy()).save(paths[-1])
    kinds = {
        "tensor": tensors,
        "float tensor": [t.float() / 255 for t in tensors],
        "path": paths,
        "bytes": [p.read_bytes() for p in paths],
        "PIL": [Image.open(p) for p in paths],
    }
    for kind, images in kinds.items():
        preds, bad = clf.predict_many(images, topk=None, batch_size=16)
        assert bad == [] and len(preds) == len(tensors), kind
        assert torch.allclose(probs_of(preds, clf.classes), want, atol=1e-6), kind
        assert not any(p.resized for p in preds)
    one = clf.predict(paths[3], topk=2)
    assert [c for c, _ in one.top] == [clf.classes[i] for i in want[3].topk(2).indices]
    assert (
        one.label == one.top[0][0]
        and one.source == str(paths[3])
        and one.probability == pytest.approx(float(want[3].max()), abs=1e-6)
    )


def test_any_mode_and_size_is_fitted_to_the_input(clf, tmp_path):
    """RGB, RGBA, palette, 16-bit and large images become 1x28x28 and are marked 'resized' when their
    size differed; a wide image is cropped in its middle, as the preprocess steps crop."""
    files = [
        write_image(tmp_path / "rgb.jpg", (300, 200), "RGB"),
        write_image(tmp_path / "rgba.png", (28, 28), "RGBA"),
        write_image(tmp_path / "p.png", (28, 28), "P"),
        write_image(tmp_path / "gray.png", (28, 28), "L"),
    ]
    Image.fromarray(np.full((40, 56), 40000, dtype=np.uint16)).save(tmp_path / "i16.png")
    f = np.random.default_rng(0).random((28, 28), dtype=np.float32) * 1000
    f[0, 0] = np.nan
    Image.fromarray(f, mode="F").save(tmp_path / "float.tif")
    files += [tmp_path / "i16.png", tmp_path / "float.tif"]
    preds, bad = clf.predict_many(files)
    assert bad == []
    assert [p.resized for p in preds] == [True, False, False, False, True, False]
    x, _ = clf.pixels(tmp_path / "float.tif")
    assert x[0, 0, 0] == 0 and float(x.max()) == 255  # NaN as 0, scaled by the image's own maximum
    x, resized = clf.pixels(tmp_path / "rgb.jpg")
    assert (
        resized
        and tuple(x.shape) == (1, 28, 28)
        and x.dtype == torch.float32
        and 0 <= float(x.min())
        and float(x.max()) <= 255
    )
    # a (C, H, W) tensor through the same fit: a 3x60x90 tensor whose middle 60x60 is 200, sides 0
    t = torch.zeros(3, 60, 90, dtype=torch.uint8)
    t[:, :, 15:75] = 200
    x, resized = clf.pixels(t)
    assert resized and float(x.min()) > 150  # only the middle square is left


@pytest.mark.parametrize(
    "image, error",
    [
        (b"not an image", BadImage),
        (b"", BadImage),
        (torch.zeros(2, 3, 8, 8), BadImage),  # a batch, not an image
        (torch.zeros(5, 8, 8), BadImage),  # 5 channels
        (torch.full((1, 8, 8), 3.0), BadImage),  # float outside [0, 1]
        (torch.zeros(1, 8, 8, dtype=torch.int32), BadImage),
        (12345, BadImage),
        (torch.zeros(1, 2, 400, dtype=torch.uint8), BadImage),  # sides 200 times apart
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", BadImage),  # EPS: a format cnnlab does not open
    ],
)
def test_what_is_not_an_image_is_refused(clf, image, error):
    with pytest.raises(error):
        clf.predict(image)


def test_a_very_long_thin_image_is_refused_before_it_is_resized(clf, tmp_path):
    """40,000 x 1 pixels, resized to a 28-pixel short side, would be 1.1 G pixels: refused from its header."""
    Image.new("L", (40_000, 1)).save(tmp_path / "line.png")
    with pytest.raises(BadImage, match="over 100 times"):
        clf.predict(tmp_path / "line.png")
    x, resized = clf.pixels(Image.new("RGB", (2_800, 28)))  # 100:1 is taken: the middle square, resized
    assert resized and tuple(x.shape) == (1, 28, 28)
    # the limit is for new images only: a dataset's 1000 x 8 spectrograms still decode for training
    from cnnlab.data.images import header_info, open_image

    Image.new("L", (1000, 8)).save(tmp_path / "spectrogram.png")
    assert open_image(tmp_path / "spectrogram.png", 1, 10**8).size == (1000, 8)
    # and reading a header never refuses what only Pillow's default limit (89 M pixels) warns about
    Image.new("1", (10_000, 9_500)).save(tmp_path / "big.png")
    assert header_info(tmp_path / "big.png") == ((10_000, 9_500), "1")


def test_pixel_limit(run, tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(big)
    small = Classifier.load(run, max_pixels=50_000)
    for image in (big, big.read_bytes(), Image.open(big), torch.zeros(1, 200, 300, dtype=torch.uint8)):
        with pytest.raises(TooManyPixels, match="60,000 pixels"):
            small.predict(image)


def test_explain_gives_a_heat_map_for_the_top_class(clf, test_images):
    pred, heat, image = clf.explain(test_images.images[0])
    assert pred.label == clf.predict(test_images.images[0]).label
    assert tuple(heat.shape) == (28, 28) and float(heat.max()) == pytest.approx(1.0) and float(heat.min()) >= 0
    assert tuple(image.shape) == (28, 28, 1)
    assert all(p.grad is None for p in clf.model.parameters())  # no gradients left behind


def test_image_files_walks_folders_and_names_what_is_missing(tmp_path):
    write_image(tmp_path / "a" / "1.png")
    write_image(tmp_path / "a" / "sub" / "2.jpg")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / "._1.png").write_bytes(b"\0\5\26\7 a Mac's AppleDouble file")
    write_image(tmp_path / "a" / ".thumbs" / "3.png")
    (tmp_path / "empty").mkdir()
    files, missing = image_files([tmp_path / "a", tmp_path / "nope.png", tmp_path / "empty"])
    assert [f.name for f in files] == ["1.png", "2.jpg"]
    assert [Path(m).name for m, _ in missing] == ["nope.png", "empty"]


# --- cnnlab predict ------------------------------------------------------------------------------


def test_predict_cli_on_a_folder_with_a_corrupt_file(run, clf, test_images, tmp_path, capsys):
    """Acceptance: the good files are predicted, the corrupt one is named, the exit code says so."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(test_images.images[i, 0].numpy()).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "readme.txt").write_text("not an image suffix: not tried")
    r = run_cli("predict", str(run), str(folder), "--format", "json", "--topk", "2")  # once as a user runs it
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert [Path(p["file"]).name for p in doc["predictions"]] == [f"{i}.png" for i in range(5)]
    assert [Path(s["file"]).name for s in doc["skipped"]] == ["broken.png"]
    assert "broken.png" in r.stderr and all(len(p["top"]) == 2 for p in doc["predictions"])
    want = [clf.predict(folder / f"{i}.png").label for i in range(5)]
    assert [p["label"] for p in doc["predictions"]] == want

    code, stdout, stderr = cli(capsys, "predict", run, folder)
    assert code == 1 and "broken.png" in stderr
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["file", "class", "probability"] and len(lines) == 6
    assert all(want[i] in lines[i + 1] for i in range(5))

    out = tmp_path / "p.csv"
    code, _, stderr = cli(
        capsys, "predict", run, folder / "0.png", folder / "1.png", "--format", "csv", "--topk", "3", "--out", out
    )
    assert code == 0, stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [row["label"] for row in rows] == want[:2] and float(rows[0]["probability_1"]) >= float(
        rows[0]["probability_3"]
    )


def test_predict_cli_errors_are_one_line(run, tmp_path, capsys):
    corrupt = write_corrupt_files(tmp_path / "bad")
    cases = [
        (["predict", str(run), *corrupt], "no image to predict"),
        (["predict", str(tmp_path / "nope"), corrupt[0]], "does not exist"),
        (["predict", str(run), str(tmp_path / "missing.png")], "no such file"),
        (["predict", str(run), corrupt[0], "--topk", "0"], "must be at least 1"),
    ]
    for args, words in cases:
        code, _, stderr = cli(capsys, *args)
        assert code == 2 and words in stderr and len(stderr.strip().splitlines()) == 1, (args, stderr)


# --- cnnlab export -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_check_passes_on_1000_test_images(run, fmt, tmp_path, capsys):
    """Acceptance (on the fixture): --check prints 100% top-1 agreement and a difference <= 1e-3."""
    out = tmp_path / f"m.{fmt}"
    code, stdout, stderr = cli(capsys, "export", run, "--format", fmt, "--check", "--out", out)
    assert code == 0, stderr
    line = next(x for x in stdout.splitlines() if x.startswith("parity check"))
    assert "on 1000 test images" in line and "top-1 agreement 100.00% (1000/1000)" in line and "passed" in line
    diff = float(line.split("largest probability difference ")[1].split()[0])
    assert 0 <= diff <= 1e-3
    info = json.loads(sidecar_path(out).read_text())
    assert info["classes"] == cnnlab.load(run).classes and info["input"]["shape"] == ["N", 1, 28, 28]
    assert info["normalization"]["in_graph"] and len(info["normalization"]["mean"]) == 1
    if fmt == "onnx":  # the same JSON travels inside the file
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(meta["cnnlab"]) == info
        code, _, stderr = cli(capsys, "predict", out, sidecar_path(out))  # the export given where a checkpoint goes
        assert code == 2 and "not a checkpoint" in stderr and len(stderr.strip().splitlines()) == 1
    else:
        code, _, stderr = cli(capsys, "predict", out, sidecar_path(out))
        assert (
            code == 2
            and "exported TorchScript model, not a training checkpoint" in stderr
            and len(stderr.strip().splitlines()) == 1
        ), stderr
        extra = {"cnnlab.json": ""}
        with pytest.warns(FutureWarning):  # torch.jit is deprecated; its files still load
            torch.jit.load(str(out), _extra_files=extra)
        assert json.loads(extra["cnnlab.json"]) == info


def test_export_check_on_1000_real_fashion_mnist_test_images(tmp_path, capsys):
    """Acceptance 1 on the real data: a short default run on Fashion-MNIST, exported to fp32 ONNX;
    --check on 1,000 of its test images prints 100% agreement and a difference <= 1e-3."""
    from cnnlab.config import DataConfig
    from cnnlab.data import DATASETS

    if DATASETS.get("fashion-mnist").find(DataConfig(download=False)) is None:
        pytest.skip("the real Fashion-MNIST is not installed (make bootstrap installs it)")
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                "fashion-mnist",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--set",
                "data.train_limit=6000",
                "--set",
                "train.report=false",
            ]
        )
        == 0
    )
    code, stdout, stderr = cli(capsys, "export", out, "--format", "onnx", "--check")
    assert code == 0, stderr
    line = next(x for x in stdout.splitlines() if x.startswith("parity check"))
    print(line)
    assert "on 1000 test images" in line and "top-1 agreement 100.00% (1000/1000)" in line
    assert float(line.split("largest probability difference ")[1].split()[0]) <= 1e-3


def test_exported_file_alone_classifies_an_image_as_predict_does(run, clf, tmp_path):
    """A deployer with only the .onnx and its JSON: decode, fit, /255, run. Same classes, same probabilities."""
    out = tmp_path / "m.onnx"
    export_model(clf, "onnx", out)
    info = json.loads(sidecar_path(out).read_text())
    photo = write_image(tmp_path / "photo.png", (28, 28), "RGB", seed=5)
    im = Image.open(photo).convert(info["input"]["mode"])
    pixels = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None, None]
    got = runner("onnx", out)(pixels)[0]
    want = clf.predict(photo, topk=None)
    assert info["classes"][int(got.argmax())] == want.label
    assert np.allclose([float(got[info["classes"].index(c)]) for c, _ in want.top], [p for _, p in want.top], atol=1e-5)


def test_export_errors(run, tmp_path, capsys):
    (tmp_path / "x.pt").write_bytes(b"hello")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder would go")
    cases = [
        (["export", tmp_path / "x.pt", "--format", "onnx"], "not a checkpoint"),
        (["export", run, "--format", "tflite"], "invalid choice"),
        (["export", run, "--format", "torchscript", "--out", blocker / "m.pt"], "cannot write"),
        (["export", run, "--format", "onnx", "--check", "--data", tmp_path / "nowhere"], "nowhere"),
    ]
    for args, words in cases:
        code, _, stderr = cli(capsys, *args)
        assert code == 2 and words in stderr and len(stderr.strip().splitlines()) == 1, (args, stderr)


def test_export_failure_of_the_onnx_exporter_is_one_line(clf, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::something\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(
        CnnlabError,
        match=(
            "ONNX exporter failed on this model .RuntimeError: Unsupported operator aten::something.; "
            "try --format torchscript"
        ),
    ):
        export_model(clf, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def _resave(path: Path, ckpt: dict) -> None:
    """A loaded checkpoint, edited, saved again (save_checkpoint adds its own format tags and RNG states)."""
    save_checkpoint(path, **{k: v for k, v in ckpt.items() if k not in ("format", "version", "rng")})


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("input_shape", "28x28", "input_shape"),
        ("input_shape", [1, 3, 3], "does not take its input_shape"),
        ("normalization", {"mean": [0.5, 0.5, 0.5], "std": [1, 1, 1]}, "does not fit 1 channel"),
        ("normalization", {"mean": [0.5], "std": [0.0]}, "std > 0"),
        ("preprocess", [{"blur": 3}], "preprocess is not valid"),
        ("classes", [1, 2, 3], "classes are not a list of names"),
        ("classes", ["a", "b"], "size mismatch for head.weight"),
        ("model", "x", "not a state_dict of tensors"),
        ("normalization", {"mean": [0.5], "std": [0.25], "value_max": "abc"}, "no numeric mean, std and value_max"),
        ("normalization", {"mean": [0.5], "std": [float("inf")]}, "finite"),
    ],
)
def test_an_edited_checkpoint_gets_one_line(run, tmp_path, capsys, field, value, words):
    ckpt = torch.load(Path(run) / "checkpoints" / "best.pt", weights_only=True)
    _resave(tmp_path / "c.pt", {**ckpt, field: value})
    code, _, stderr = cli(capsys, "predict", tmp_path / "c.pt", write_image(tmp_path / "x.png"))
    assert code == 2 and words in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_a_multilabel_models_label_holds_every_attribute_over_half(tmp_path):
    """topk 1 shows one attribute, and the label still names both that are present."""
    path = _checkpoint(tmp_path / "c.pt", "fastnet")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["train"]["loss"] = "bce"
    ckpt.update(multilabel=True, objective="bce")
    _resave(path, ckpt)
    clf = Classifier.load(path)
    assert clf.multilabel
    clf.model.forward = lambda x: torch.tensor([[5.0, 4.0, -5.0]]).expand(len(x), -1)  # attributes a and b present
    pred = clf.predict(torch.zeros(1, 28, 28, dtype=torch.uint8), topk=1)
    assert [c for c, _ in pred.top] == ["a"] and pred.present == ["a", "b"] and pred.label == "a+b"
    assert pred.to_dict()["present"] == ["a", "b"]


def test_a_run_on_float_arrays_says_how_images_are_fed(tmp_path):
    path = _checkpoint(tmp_path / "c.pt", "fastnet")
    ckpt = torch.load(path, weights_only=True)
    ckpt["normalization"]["value_max"] = 1.0
    _resave(path, ckpt)
    clf = Classifier.load(path)
    assert len(clf.notes) == 1 and "float arrays" in clf.notes[0]
    assert Classifier.load(_checkpoint(tmp_path / "d.pt", "fastnet")).notes == []


def _checkpoint(path: Path, name: str) -> Path:
    """A checkpoint as cnnlab train writes one, for `name` with fresh weights at a small input: three
    classes and cross-entropy, or for a model that ends in a Sigmoid two classes and its one output."""
    from cnnlab.engine.losses import ends_in_sigmoid

    (c, h, w), _ = default_input(name)
    h = w = min(h, 64)  # the torchvision backbones take 64x64; it keeps the export quick
    model = create_model(name, num_classes=3, in_channels=c, input_size=(h, w))
    sigmoid = ends_in_sigmoid(model)
    if sigmoid:
        model = create_model(name, num_classes=1, in_channels=c, input_size=(h, w))
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so the export must carry them
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    loss = "sigmoid-bce" if sigmoid else "cross-entropy"
    cfg = RunConfig()
    cfg.model.name = name
    cfg.train.loss = loss
    save_checkpoint(
        path,
        model=model.state_dict(),
        config=cfg.to_dict(),
        classes=["a", "b"] if sigmoid else ["a", "b", "c"],
        input_shape=[c, h, w],
        preprocess=[],
        normalization={"mean": [0.5] * c, "std": [0.25] * c},
        objective=loss,
    )
    return path


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_exports_with_parity(name, tmp_path):
    """ONNX (onnxruntime) and TorchScript give PyTorch's probabilities at a batch size other than the
    one exported with (the batch dimension is dynamic); a one-output model gives both classes'."""
    path = _checkpoint(tmp_path / "c.pt", name)
    clf = Classifier.load(path)
    state = torch.load(path, weights_only=True)["model"]
    loaded = clf.model.state_dict()
    assert sorted(loaded) == sorted(state) and all(
        torch.equal(loaded[k], state[k]) and not loaded[k].is_meta for k in state
    )
    x = torch.rand(3, *clf.input_shape, generator=torch.Generator().manual_seed(0))
    want = clf.probabilities(x * 255)
    assert want.shape == (3, len(clf.classes)) and torch.allclose(want.sum(1), torch.ones(3), atol=1e-5)
    for fmt in ("onnx", "torchscript"):
        out = tmp_path / f"m.{fmt}"
        export_model(clf, fmt, out)
        got = runner(fmt, out)(x)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4, fmt


def test_a_checkpoint_is_loaded_without_initialising_the_model_first(tmp_path, monkeypatch):
    """The model is built on the meta device and takes the checkpoint's tensors; a builder that cannot
    be built there gets the ordinary build and load, with the same weights."""
    import cnnlab.evaluation as evaluation

    path = _checkpoint(tmp_path / "c.pt", "fastnet")
    state = {k: v.contiguous() for k, v in torch.load(path, weights_only=True)["model"].items()}
    model, outputs = evaluation._model_with_weights("fastnet", state, 3, (1, 28, 28), {})
    assert outputs == 3 and not model.training
    assert all(
        t.data_ptr() == state[k].data_ptr() for k, t in model.state_dict().items()
    )  # the checkpoint's own tensors
    built = []

    def no_meta(name, **kw):
        built.append(torch.empty(0).is_meta)
        if built[-1]:
            raise RuntimeError("this builder computes on real tensors")
        return create_model(name, **kw)

    monkeypatch.setattr(evaluation, "create_model", no_meta)
    model, outputs = evaluation._model_with_weights("fastnet", state, 3, (1, 28, 28), {})
    assert built == [True, False] and outputs is None
    assert all(torch.equal(t, state[k]) and t.data_ptr() != state[k].data_ptr() for k, t in model.state_dict().items())
    with pytest.raises(RuntimeError, match="size mismatch"):  # a state that does not fit: load_state_dict's own error
        evaluation._model_with_weights("fastnet", state, 5, (1, 28, 28), {})


def test_check_parity_reports_a_mismatch(run, clf, tmp_path):
    """The check is not a formality: a file exported from other weights fails it."""
    other = cnnlab.load(run)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    export_model(other, "torchscript", tmp_path / "wrong.pt")
    p = check_parity(clf, "torchscript", tmp_path / "wrong.pt", images=200)
    assert p.images == 200 and not p.passed() and p.max_prob_diff > 1e-3


# --- checkpoints that hold pickled code ----------------------------------------------------------


class _RunsCode:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("zipfile", [True, False])
def test_a_checkpoint_that_runs_code_is_refused_everywhere(run, tmp_path, zipfile, capsys):
    """Acceptance: predict, export, serve and cnnlab.load refuse it with one line; the code never runs."""
    import torch as t

    marker = tmp_path / "code-ran"
    good = t.load(Path(run) / "checkpoints" / "best.pt", weights_only=True)
    evil = tmp_path / "evil.pt"
    t.save({**good, "extra": _RunsCode(marker)}, evil, _use_new_zipfile_serialization=zipfile)
    image = write_image(tmp_path / "x.png")
    r = run_cli("predict", str(evil), str(image))  # once as a user runs it
    assert r.returncode == 2 and "refusing" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not marker.exists()
    for args in (["export", evil, "--format", "onnx"], ["serve", evil, "--port", "0"]):
        code, _, stderr = cli(capsys, *args)
        assert (
            code == 2
            and "refusing" in stderr
            and "holds more than weights" in stderr
            and len(stderr.strip().splitlines()) == 1
        ), stderr
        assert not marker.exists(), args
    with pytest.raises(CnnlabError, match="refusing"):
        cnnlab.load(evil)
    assert not marker.exists()
