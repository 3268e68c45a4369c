"""Transfer learning: pretrained weights from a local file, new heads, 1-channel input, freezing, --init-from."""

import json

import pytest
import torch
import torchvision
from conftest import QUICK, run_cli, write_image_folder

from cnnlab.cli import main
from cnnlab.config import OptimConfig
from cnnlab.engine.callbacks import FreezeBody
from cnnlab.engine.optim import create_optimizer, head_parameters
from cnnlab.engine.state import FitState
from cnnlab.errors import ConfigError
from cnnlab.models import create_model


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """The standard torchvision resnet18 state_dict (1000-class head), with a marked first filter."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"][0] = 0.125
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_local_state_dict_loads_and_the_head_is_replaced(resnet18_file):
    path, state = resnet18_file
    model = create_model("resnet18", num_classes=5, in_channels=3, pretrained=str(path))
    assert torch.equal(model.body[0].weight, state["conv1.weight"])
    assert torch.equal(model.body[7][1].conv2.weight, state["layer4.1.conv2.weight"])
    assert model.get_classifier().out_features == 5 and model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_one_channel_input_sums_the_rgb_filters(resnet18_file):
    path, state = resnet18_file
    model = create_model("resnet18", num_classes=5, in_channels=1, pretrained=str(path))
    assert model.body[0].weight.shape == (64, 1, 7, 7)
    assert torch.allclose(model.body[0].weight, state["conv1.weight"].sum(1, keepdim=True))
    gray = torch.rand(1, 1, 32, 32)  # a gray image gives what the RGB filters give on it in 3 channels
    rgb = create_model("resnet18", num_classes=5, in_channels=3, pretrained=str(path))
    assert torch.allclose(model.body[0](gray), rgb.body[0](gray.expand(-1, 3, -1, -1)), atol=1e-5)


def test_a_file_of_another_model_says_which_keys_differ(resnet18_file, tmp_path):
    path, _ = resnet18_file
    with pytest.raises(ConfigError, match="does not fit resnet34.*missing or of another shape"):
        create_model("resnet34", num_classes=5, in_channels=3, pretrained=str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        create_model("resnet18", num_classes=5, in_channels=3, pretrained=str(tmp_path / "nope.pth"))


def test_a_weights_name_that_torchvision_lacks():
    with pytest.raises(ConfigError, match="has no weights 'NOPE'"):
        create_model("resnet18", num_classes=5, in_channels=3, pretrained="NOPE")


def test_frozen_body_gets_no_gradient_then_does():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4, in_channels=1)
    opt = create_optimizer(model, OptimConfig(lr=0.1, body_lr_scale=0.1))
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == pytest.approx([0.01, 0.1])  # the body at a tenth of the head's rate
    freeze = FreezeBody(model, epochs=1)
    head = head_parameters(model)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    state = FitState(epochs=2, steps_per_epoch=1)
    grads = {}
    for epoch in (1, 2):
        state.epoch = epoch
        freeze.on_epoch_start(state)
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        body = [p for p in model.parameters() if id(p) not in head]
        grads[epoch] = (
            all(p.grad is None for p in body),
            all(p.grad is not None for p in model.parameters() if id(p) in head),
        )
    assert grads[1] == (True, True)  # epoch 1: only the head learns
    assert grads[2] == (False, True)  # epoch 2: everything


def test_finetuned_squeezenet_has_a_three_by_three_classifier():
    model = create_model("squeezenet-finetuned", num_classes=20, in_channels=3)
    assert model.get_classifier().kernel_size == (3, 3) and model.get_classifier().out_channels == 20
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 20)


def test_init_from_one_of_our_runs_with_another_class_count(fashion_dir, tmp_path):
    first = tmp_path / "fashion"
    assert main(["train", "--data", str(fashion_dir), "--out", str(first), *QUICK]) == 0
    folder = write_image_folder(tmp_path / "three", {"a": 12, "b": 12, "c": 12}, size=(28, 28), mode="L")
    second = tmp_path / "three-run"
    assert (
        main(
            [
                "train",
                "--data",
                str(folder),
                "--out",
                str(second),
                *QUICK,
                "--set",
                "data.val_size=6",
                "--set",
                "train.batch_size=8",
                "--init-from",
                str(first),
                "--set",
                "train.freeze_epochs=1",
            ]
        )
        == 0
    )
    log = (second / "log.txt").read_text()
    assert "initialised from" in log and "the head is new (that run had 10 other classes)" in log
    old = torch.load(first / "checkpoints/best.pt", weights_only=True)["model"]
    assert json.loads((second / "metrics.json").read_text())["test"]["num_samples"] == 7
    assert old["head.weight"].shape[0] == 10


def test_init_from_another_model_is_one_line(fashion_dir, tmp_path):
    first = tmp_path / "fashion"
    assert main(["train", "--data", str(fashion_dir), "--out", str(first), *QUICK]) == 0
    r = run_cli(
        "train",
        "--data",
        str(fashion_dir),
        "--model",
        "uw-lab",
        "--out",
        str(tmp_path / "b"),
        *QUICK,
        "--init-from",
        str(first),
    )
    assert r.returncode == 2 and "--init-from" in r.stderr and "differ" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()


def test_a_backbone_too_deep_for_the_images_is_one_line(fashion_dir, tmp_path):
    r = run_cli("train", "--data", str(fashion_dir), "--model", "alexnet", "--out", str(tmp_path / "run"), *QUICK)
    assert r.returncode == 2 and "cannot take a 1x28x28 input" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_backbone_trains_on_small_gray_images(fashion_dir, tmp_path):
    r = run_cli(
        "train",
        "--data",
        str(fashion_dir),
        "--model",
        "resnet18",
        "--out",
        str(tmp_path / "run"),
        *QUICK,
        "--set",
        "train.freeze_epochs=1",
    )
    assert r.returncode == 0, r.stderr


def _save_run(model, classes, folder):
    from cnnlab.engine.checkpoint import save_checkpoint

    (folder / "checkpoints").mkdir(parents=True)
    save_checkpoint(folder / "checkpoints" / "best.pt", model=model.state_dict(), classes=classes)
    return folder


def test_init_from_a_backbone_run_with_another_class_count(tmp_path):
    from cnnlab.engine.checkpoint import init_from

    torch.manual_seed(0)
    src = create_model("resnet18", num_classes=10, in_channels=1)
    run = _save_run(src, [str(i) for i in range(10)], tmp_path / "src")
    dst = create_model("resnet18", num_classes=5, in_channels=1)
    line = init_from(dst, run, list("abcde"))
    assert "the head is new" in line
    assert torch.equal(dst.body[0].weight, src.body[0].weight) and dst.get_classifier().out_features == 5


def test_init_from_same_shape_but_other_classes_keeps_a_fresh_head(tmp_path):
    from cnnlab.engine.checkpoint import init_from

    torch.manual_seed(0)
    src = create_model("uw-lab", num_classes=10, in_channels=1)
    run = _save_run(src, [f"digit {i}" for i in range(10)], tmp_path / "src")
    dst = create_model("uw-lab", num_classes=10, in_channels=1)
    fresh = dst.head.layers[-1].weight.clone()
    assert "the head is new" in init_from(dst, run, [f"garment {i}" for i in range(10)])
    assert torch.equal(dst.head.layers[-1].weight, fresh) and torch.equal(
        dst.features[0].layers[0].weight, src.features[0].layers[0].weight
    )
    same = create_model("uw-lab", num_classes=10, in_channels=1)
    assert "the head included" in init_from(same, run, [f"digit {i}" for i in range(10)])
    assert torch.equal(same.head.layers[-1].weight, src.head.layers[-1].weight)


def test_init_from_a_run_with_more_blocks_is_refused(tmp_path):
    from cnnlab.engine.checkpoint import init_from
    from cnnlab.errors import CnnlabError

    src = create_model("uw-lab", num_classes=10, in_channels=1, channels=[16, 32, 64])
    run = _save_run(src, list("0123456789"), tmp_path / "src")
    with pytest.raises(CnnlabError, match="only in that run"):
        init_from(create_model("uw-lab", num_classes=10, in_channels=1), run, list("0123456789"))


def test_pretrained_file_of_non_tensors_and_our_checkpoints_are_refused(tmp_path):
    torch.save({"conv1.weight": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(ConfigError, match="does not fit resnet18"):
        create_model("resnet18", num_classes=5, in_channels=3, pretrained=str(tmp_path / "odd.pth"))
    torch.save({"format": "cnnlab-checkpoint", "model": {}}, tmp_path / "ours.pth")
    with pytest.raises(ConfigError, match="--init-from"):
        create_model("resnet18", num_classes=5, in_channels=3, pretrained=str(tmp_path / "ours.pth"))
