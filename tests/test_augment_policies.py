"""torchvision's augmentation policies in data.augment: one draw per image, seeded by (seed, epoch), the
same on the in-memory and the file path, and each one trains the default model."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from conftest import QUICK, run_main, write_image_folder
from PIL import Image

from cnnlab.config import RunConfig, config_from_dict
from cnnlab.data.augment import AUTOAUGMENT_POLICIES, AugmentParams, build_augment
from cnnlab.data.base import ArraySplit, FileSplit
from cnnlab.data.loader import FileLoader, TensorLoader
from cnnlab.errors import ConfigError

POLICIES = ["trivialaugment", "randaugment", "autoaugment", "random-erasing"]


def _images(n: int = 48, channels: int = 1, size: int = 28) -> torch.Tensor:
    """Images with structure (a bright square on noise), so that every op of a policy changes something."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 80, (n, channels, size, size), generator=g, dtype=torch.uint8)
    x[:, :, 6:20, 8:18] = 220
    return x


@pytest.mark.parametrize("policy", POLICIES)
def test_each_image_gets_its_own_draw_and_the_global_stream_is_left_alone(policy):
    x = _images(1).expand(64, -1, -1, -1).contiguous()  # one image 64 times
    before = torch.get_rng_state()
    out = build_augment(policy, AugmentParams())(x, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), before)  # model init, dropout and mixing do not see the augmentation
    assert out.dtype == torch.uint8 and out.shape == x.shape
    distinct = len({img.numpy().tobytes() for img in out})
    # one draw for the whole batch would give 1; erasing leaves half the images as they are
    assert distinct > (20 if policy == "random-erasing" else 5), distinct


def test_same_seed_and_epoch_give_the_same_batch_and_a_resume_continues_exactly():
    split = ArraySplit(_images(96), torch.arange(96) % 10)

    def loader() -> TensorLoader:
        return TensorLoader(
            split, 32, shuffle=True, augment="flip+trivialaugment+random-erasing", seed=5, mean=[0.5], std=[0.25]
        )

    a, b = loader(), loader()
    a.set_epoch(2)
    b.set_epoch(2)
    first, again = [x for x, _ in a], [x for x, _ in b]
    assert len(first) == len(again) == 3 and all(torch.equal(p, q) for p, q in zip(first, again))
    b.set_epoch(3)
    assert not torch.equal(first[0], next(iter(b))[0])
    # a run stopped after one batch of epoch 2 picks up the augmentation stream where it was
    c = loader()
    c.set_epoch(2)
    it = iter(c)
    next(it)
    state = c.state_dict()
    d = loader()
    d.set_epoch(2, resume=state)
    rest = [x for x, _ in d]
    assert len(rest) == 2 and all(torch.equal(p, q) for p, q in zip(first[1:], rest))


def test_the_file_path_augments_as_the_in_memory_path_does(tmp_path):
    """Decoded by DataLoader workers or sliced from memory, the same images get the same augmentation."""
    x = _images(24, channels=3, size=20)
    paths = []
    for i, img in enumerate(x):
        paths.append(str(tmp_path / f"{i:02d}.png"))
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(paths[-1])
    labels = torch.arange(24) % 4
    kw = dict(shuffle=True, augment="randaugment+random-erasing", seed=1, mean=[0.0] * 3, std=[1.0] * 3)
    memory = TensorLoader(ArraySplit(x, labels), 8, **kw)
    files = FileLoader(
        FileSplit(paths, labels),
        8,
        channels=3,
        preprocess=[],
        input_shape=(3, 20, 20),
        max_pixels=10**6,
        workers=1,
        **kw,
    )
    memory.set_epoch(1)
    files.set_epoch(1)
    pairs = list(zip(memory, files))
    assert len(pairs) == 3
    for (xm, ym), (xf, yf) in pairs:
        assert torch.equal(ym, yf) and torch.equal(xm, xf)
    plain = TensorLoader(ArraySplit(x, labels), 8, **{**kw, "augment": "none"})
    plain.set_epoch(1)
    assert not any(torch.equal(xm, xp) for (xm, _), (xp, _) in zip(memory, plain))  # the policies did change them


def test_float_images_keep_their_scale():
    """After rotate (float32 on [0, 255]) a policy sees [0, 1], as torchvision reads floats, and gives 0..255 back."""
    x = _images(16)
    out = build_augment("rotate+autoaugment", AugmentParams())(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.max() > 100 and 0 <= out.min() and out.max() <= 255


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("randaugment_m", 31, "data.randaugment_m is 31; it must be a magnitude from 0 to 30"),
        ("randaugment_n", 0, "data.randaugment_n is 0; it must be at least 1"),
        ("autoaugment_policy", "cifar", "data.autoaugment_policy is 'cifar'; it must be imagenet, cifar10 or svhn"),
        ("erasing_p", 1.5, "data.erasing_p is 1.5; it must be a probability from 0 to 1"),
    ],
)
def test_bad_policy_settings_are_one_line_errors(key, value, message):
    cfg = config_from_dict({"data": {"augment": "randaugment+autoaugment", key: value}})
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_erasing_p_is_the_share_of_images_erased():
    x = _images(64)
    erased = {}
    for p in (0.0, 0.5, 1.0):
        out = build_augment("random-erasing", AugmentParams(erasing_p=p))(x, torch.Generator().manual_seed(0))
        erased[p] = int((out != x).flatten(1).any(1).sum())
    assert erased[0.0] == 0 and erased[1.0] == 64 and 16 < erased[0.5] < 48, erased


def test_data_erasing_p_reaches_the_training_loader():
    """The recipe key, through build_loaders, to the batches: against the same batch unaugmented
    (the same shuffle), 0 erases no image and 1 every one."""
    from cnnlab.config import DataConfig, TrainConfig
    from cnnlab.data.base import ArraySplit, Dataset
    from cnnlab.data.pipeline import build_loaders

    x = _images(32)
    split = ArraySplit(x, torch.arange(32) % 4)
    ds = Dataset(split, split, list("abcd"), source="test", input_shape=(1, 28, 28))
    batches = {}
    for augment, p in (("none", 0.5), ("random-erasing", 0.0), ("random-erasing", 1.0)):
        data = DataConfig(augment=augment, erasing_p=p)
        loader = build_loaders(ds, data, TrainConfig(batch_size=32), torch.device("cpu"), [0.5], [0.25])["train"]
        batches[augment, p] = next(iter(loader))[0]
    plain = batches.pop(("none", 0.5))
    changed = {p: int((b != plain).flatten(1).any(1).sum()) for (_, p), b in batches.items()}
    assert changed == {0.0: 0, 1.0: 32}, changed


def test_the_policy_names_are_torchvision_s():
    from torchvision.transforms import v2

    assert AUTOAUGMENT_POLICIES == tuple(p.value for p in v2.AutoAugmentPolicy)
    assert isinstance(RunConfig().validate(), RunConfig)  # the defaults pass their own checks


def _trained(out, augment: str, *extra: str) -> dict:
    """metrics.json of a finished run, after checking its config and one epoch of finite losses."""
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["augment"] == augment and cfg["model"]["name"] == "fastnet"
    assert cfg["model"]["kwargs"] == {"pool_grid": 3, "strided_first": True}  # the default recipe's model
    rows = (out / "history.csv").read_text().splitlines()
    assert len(rows) == 2 and math.isfinite(float(rows[1].split(",")[rows[0].split(",").index("train_loss")]))
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize(
    "augment,sets",
    [
        ("trivialaugment", []),
        ("randaugment", ["data.randaugment_n=1", "data.randaugment_m=14"]),
        ("autoaugment", ["data.autoaugment_policy=imagenet"]),  # cifar10's: from files, below
        ("random-erasing", []),
    ],
)
def test_each_policy_trains_the_default_model_for_an_epoch(fashion_dir, tmp_path, augment, sets):
    out = tmp_path / "run"
    flags = [f for s in sets for f in ("--set", s)]
    r = run_main(
        "train", "--data", str(fashion_dir), "--out", str(out), *QUICK, "--set", f"data.augment={augment}", *flags
    )
    assert r.returncode == 0, r.stderr
    metrics = _trained(out, augment)
    assert metrics["test"]["num_samples"] == 120 and 0 <= metrics["test"]["accuracy"] <= 1
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    for s in sets:
        key, value = s.split("=")
        assert str(cfg["data"][key.split(".")[1]]) == value


def test_a_policy_trains_from_files_on_disk(tmp_path, monkeypatch):
    """An image folder read lazily (data.in_memory=false): FileLoader decodes, the policies augment."""
    read = []  # whether each FileLoader that ran was the (shuffled) training loader
    batches = FileLoader._batches

    def spy(self, indices, start):
        read.append(self.shuffle)
        yield from batches(self, indices, start)

    monkeypatch.setattr(FileLoader, "_batches", spy)
    data = write_image_folder(tmp_path / "d", {"a": 24, "b": 24}, size=(28, 28), mode="L")
    out = tmp_path / "run"
    augment = "flip+autoaugment+random-erasing"
    r = run_main(
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        *QUICK,
        "--set",
        "data.val_size=8",
        "--set",
        "data.in_memory=false",
        "--set",
        "data.workers=0",  # decoded in this process: a worker's start costs more than these 48 files (workers: above)
        "--set",
        "train.precision=fp32",  # as given, not probed: measuring the bf16 step for this batch would take 2 s
        "--set",
        "train.channels_last=false",
        "--set",
        "data.autoaugment_policy=cifar10",
        "--set",
        f"data.augment={augment}",
    )
    assert r.returncode == 0, r.stderr
    assert _trained(out, augment)["test"]["num_samples"] > 0
    assert True in read  # the training images came from the files
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["autoaugment_policy"] == "cifar10"
