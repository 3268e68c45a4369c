"""Every optimizer, schedule and loss reachable from a recipe file and from --set (two steps each);
the loss math against torch's own modules; multi-label metrics against scikit-learn; mixup, CutMix,
EMA, TTA, fp16 with its scaler, --deterministic and --compile, each through a real run."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import run_cli, write_celeba_fixture

from cnnlab.cli import main
from cnnlab.engine.losses import LOSSES, Target, create_objective
from cnnlab.engine.mix import BatchMix
from cnnlab.engine.optim import OPTIMIZERS, SCHEDULES
from cnnlab.metrics import multilabel_confusion, multilabel_metrics

# CelebA in its own layout: 32 train, 8 valid, 8 test images of 64x64.
PARTITION = [0] * 32 + [1] * 8 + [2] * 8


@pytest.fixture(scope="module")
def celeba_dir(tmp_path_factory):
    root, _ = write_celeba_fixture(tmp_path_factory.mktemp("celeba"), PARTITION, size=(64, 64))
    return root


def _data(kind: str, fashion_dir, celeba_dir) -> dict:
    """Recipe keys giving exactly two optimizer steps of 16 or 128 images."""
    if kind == "classes":
        return {"data": {"root": str(fashion_dir), "val_size": 64, "train_limit": 320}, "train": {"batch_size": 128}}
    data = {
        "root": str(celeba_dir),
        "preprocess": [{"resize": 64}],
        "attributes": "Smiling" if kind == "binary" else ["Smiling", "Young"],
    }
    return {"data": data, "train": {"batch_size": 16}}


# what each loss trains on, and with which model; a new loss is tested by adding its line here
LOSS_SETUP = {
    "cross-entropy": ("classes", "fastnet"),
    "bce": ("multilabel", "fastnet"),
    "sigmoid-bce": ("binary", "textbook-celeba-smile"),
}
KNOBS = (
    [("optim.name", n) for n in OPTIMIZERS.names()]
    + [("schedule.name", n) for n in SCHEDULES.names()]
    + [("train.loss", n) for n in LOSSES.names()]
)


def test_every_loss_has_a_setup():
    assert set(LOSS_SETUP) == set(LOSSES.names())


@pytest.mark.parametrize("how", ["yaml", "set"])
@pytest.mark.parametrize("key, name", KNOBS, ids=[f"{k}={n}" for k, n in KNOBS])
def test_every_component_runs_two_steps(key, name, how, fashion_dir, celeba_dir, tmp_path):
    kind, model = LOSS_SETUP[name] if key == "train.loss" else ("classes", "fastnet")
    values = _data(kind, fashion_dir, celeba_dir)
    values.update(name="knob", model={"name": model})
    values["train"].update(epochs=1, min_steps=None, report=False)
    values["optim"] = {"lr": 0.01}
    values["schedule"] = {"patience": 0}
    section, field = key.split(".")
    sets = []
    if how == "yaml":
        values.setdefault(section, {})[field] = name
    else:
        sets = ["--set", f"{key}={name}"]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values))
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out), *sets]) == 0
    steps = (out / "steps.csv").read_text().strip().splitlines()
    assert len(steps) == 3  # the header and two steps
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved[section][field] == name


def test_auto_keeps_the_textbooks_sigmoid_and_bceloss(celeba_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(celeba_dir),
                "--model",
                "textbook-celeba-smile",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--set",
                "data.preprocess=[{resize: 64}]",
                "--set",
                "train.batch_size=16",
            ]
        )
        == 0
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["loss"] == "sigmoid-bce"
    m = json.loads((out / "metrics.json").read_text())
    assert m["loss"] == "sigmoid-bce" and m["test"]["num_samples"] == 8 and len(m["test"]["confusion_matrix"]) == 2
    assert (
        m["test"]["roc_auc"] is not None
        and (out / "plots" / "gradcam.png").is_file()
        and "warning" not in (out / "log.txt").read_text()
    )


def test_multilabel_run_reports_per_attribute_metrics(celeba_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(celeba_dir),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--set",
                "data.preprocess=[{resize: 64}]",
                "--set",
                "train.batch_size=16",
                "--set",
                "data.attributes=[Smiling, Young]",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["loss"] == "bce" and m["test"]["multilabel"] and set(m["test"]["per_class"]) == {"Smiling", "Young"}
    assert np.array(m["test"]["confusion_matrix"]).shape == (2, 2, 2)
    assert (out / "report.html").is_file() and "warning" not in (out / "log.txt").read_text()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "train.loss=bce"], "10 classes"),  # BCE on a 10-class target
        (["--set", "train.loss=hinge"], "cross-entropy"),  # an unknown name lists the known ones
        (["--set", "train.ema=1.5"], "train.ema"),
        (["--set", "train.tta=true", "--set", "data.name=mnist"], "mirror"),
    ],
)
def test_incompatible_options_are_refused_before_training(args, needle, fashion_dir, tmp_path):
    r = run_cli("train", "--data", str(fashion_dir), "--out", str(tmp_path / "r"), "--epochs", "1", *args)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "r").exists()


def test_cross_entropy_refuses_a_multilabel_target_and_bce_a_sigmoid_model(celeba_dir, tmp_path, capsys):
    # in-process: main() is what the console script runs, exit code and stderr included
    base = ["train", "--data", str(celeba_dir), "--epochs", "1", "--set", "data.preprocess=[{resize: 64}]"]
    for out, extra, needle in (
        ("a", ["--set", "data.attributes=[Smiling, Young]", "--set", "train.loss=cross-entropy"], "multi-label"),
        ("b", ["--model", "textbook-celeba-smile", "--set", "train.loss=bce"], "sigmoid-bce"),
        ("c", ["--set", "train.loss=sigmoid-bce"], "not a Sigmoid"),
    ):  # fastnet has no Sigmoid
        code = main([*base, "--out", str(tmp_path / out), *extra])
        assert code == 2 and needle in capsys.readouterr().err


# --- the loss math ---------------------------------------------------------------------------------


def _target(num_classes, multilabel, labels):
    from cnnlab.data.base import ArraySplit

    return Target(num_classes, multilabel, ArraySplit(torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels))


def test_sigmoid_bce_is_the_textbooks_bceloss_exactly():
    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Sigmoid())
    obj = create_objective("auto", model, _target(2, False, torch.tensor([0, 1, 1, 0])), 1)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    p = model(x)
    assert obj.name == "sigmoid-bce"
    assert torch.equal(obj.loss(p, y), torch.nn.BCELoss()(p.reshape(-1), y.float()))
    assert obj.predict(p).tolist() == (p.reshape(-1) > 0.5).long().tolist()


def test_bce_with_logits_binary_and_multilabel():
    z, y = torch.randn(5, 1), torch.tensor([0, 1, 1, 0, 1])
    obj = create_objective("bce", torch.nn.Linear(2, 1), _target(2, False, y), 1)
    assert torch.allclose(obj.loss(z, y), F.binary_cross_entropy_with_logits(z.reshape(-1), y.float()))
    ym = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    zm = torch.randn(2, 3)
    objm = create_objective("auto", torch.nn.Linear(2, 3), _target(3, True, ym), 3)
    assert objm.name == "bce" and objm.multilabel
    assert torch.allclose(objm.loss(zm, ym), F.binary_cross_entropy_with_logits(zm, ym))
    # class weights: BCE's pos_weight = negatives / positives per attribute
    weighted = create_objective("bce", torch.nn.Linear(2, 3), _target(3, True, ym), 3, weighted=True)
    assert torch.allclose(
        weighted.loss(zm, ym), F.binary_cross_entropy_with_logits(zm, ym, pos_weight=torch.tensor([1.0, 2.0, 0.0]))
    )


def test_multilabel_metrics_match_scikit_learn():
    from sklearn.metrics import multilabel_confusion_matrix, precision_recall_fscore_support

    g = torch.Generator().manual_seed(0)
    y = (torch.rand(97, 5, generator=g) > 0.6).float()
    pred = (torch.rand(97, 5, generator=g) > 0.5).long()
    cm = multilabel_confusion(pred, y)
    assert cm.tolist() == multilabel_confusion_matrix(y.numpy().astype(int), pred.numpy()).tolist()
    m = multilabel_metrics(cm, list("abcde"))
    p, r, f, s = precision_recall_fscore_support(y.numpy().astype(int), pred.numpy(), zero_division=0)
    for i, name in enumerate("abcde"):
        assert m["per_class"][name]["precision"] == pytest.approx(p[i], abs=1e-12)
        assert m["per_class"][name]["recall"] == pytest.approx(r[i], abs=1e-12)
        assert m["per_class"][name]["f1"] == pytest.approx(f[i], abs=1e-12)
        assert m["per_class"][name]["support"] == s[i]
    assert m["accuracy"] == pytest.approx(float((pred == y.long()).double().mean()), abs=1e-12)


# --- regularisers and devices, each through a real run ------------------------------------------


def test_mixup_is_a_convex_mix_and_cutmix_weighs_the_pasted_area():
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 10, 10), torch.arange(8)
    mixed, y2, lam = BatchMix(mixup=0.4)(x, y)
    perm = y2  # labels are the indices here
    assert 0 <= lam <= 1 and torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
    cut, y2, lam = BatchMix(cutmix=1.0)(x, y)
    moved = y2 != y  # images paired with another one (randperm may leave some in place)
    assert moved.any()
    from_partner = (cut[moved] != x[moved]).double().mean().item()  # random images: every pasted pixel differs
    assert lam == pytest.approx(1 - from_partner, abs=1e-9) and lam < 1
    assert torch.equal(cut[~moved], x[~moved])


@pytest.mark.parametrize(
    "sets",
    [
        ["train.mixup=0.2"],
        ["train.cutmix=1.0"],
        ["train.mixup=0.2", "train.cutmix=1.0"],
        ["train.ema=0.9"],
        ["train.tta=true"],
        ["train.precision=fp16"],
        ["train.deterministic=true"],
    ],
)
def test_regularisers_and_precisions_run(sets, fashion_dir, tmp_path):
    out = tmp_path / "run"
    args = [x for s in sets for x in ("--set", s)]
    # a small fastnet: the knobs are the point, not the model (fp16 is emulated, and slow, on most CPUs)
    assert (
        main(
            [
                "train",
                "--data",
                str(fashion_dir),
                "--out",
                str(out),
                "--epochs",
                "2",
                "--set",
                "data.val_size=64",
                "--set",
                "train.batch_size=64",
                "--set",
                "train.report=false",
                "--set",
                "model.kwargs={widths: [8, 16]}",
                *args,
            ]
        )
        == 0
    )
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["test"]["accuracy"] <= 1 and m["epochs_run"] == 2
    if "train.ema=0.9" in sets:  # the EMA is what gets evaluated and saved; the raw weights are kept for resume
        assert ckpt["raw_model"] is not None and int(ckpt["ema_n_averaged"]) == 8
        assert any(not torch.equal(ckpt["model"][k], ckpt["raw_model"][k]) for k in ckpt["model"])
    if "train.precision=fp16" in sets:
        assert m["precision"] == "float16" and ckpt["scaler"]["scale"] > 0


def test_compile_runs(fashion_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(fashion_dir),
                "--out",
                str(out),
                "--compile",
                "--epochs",
                "1",
                "--set",
                "data.val_size=64",
                "--set",
                "train.batch_size=128",
                "--set",
                "data.train_limit=320",
                "--set",
                "train.report=false",
                "--set",
                "model.kwargs={widths: [8]}",
            ]
        )
        == 0
    )  # one block: fewer kernels for inductor to compile
    ckpt = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])  # saved as the plain model
