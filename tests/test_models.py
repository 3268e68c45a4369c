"""Every registered model builds, gives the right output shape, backpropagates; the reports' exact counts."""

import pytest
import torch
from conftest import run_cli, run_main

from cnnlab.errors import ConfigError
from cnnlab.models import DEFAULT_INPUTS, MODELS, create_model, num_parameters
from cnnlab.models.summary import summarize

# The figures the reports give (hanoi-scratch: 20 classes at 3x224x224), or that the layers add up to
# (cifar10-comprehensive: the report says "about 1.28 M"; lenet5: LeCun's, on 28x28 with padding 2).
REPORTED = {
    "textbook-mnist": 3_274_634,
    "textbook-celeba-smile": 388_673,
    "textbook-celeba-smile-dropout": 388_673,
    "uw-lab": 28_938,
    "cifar10-comprehensive": 1_278_218,
    "kth-default": 256_058,
    "hanoi-scratch": 6_983_444,
    "lenet5": 61_706,
}


def _input(name: str) -> tuple[int, int, int]:
    """The model's default input, at most 64x64: the backbones' 224x224 only slows the tests."""
    (c, h, w), _ = DEFAULT_INPUTS[name]
    return c, min(h, 64), min(w, 64)


def _outputs(name: str, classes: int) -> int:
    return 1 if name.startswith("textbook-celeba-smile") else classes  # its sigmoid unit


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("channels", [1, 3])
def test_builds_forwards_and_backpropagates(name, channels):
    torch.manual_seed(0)
    _, h, w = _input(name)
    model = create_model(name, num_classes=7, in_channels=channels, input_size=(h, w))
    x = torch.randn(2, channels, h, w)
    out = model(x)
    assert out.shape == (2, _outputs(name, 7)) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert num_parameters(model) > 0


@pytest.mark.parametrize("name", MODELS.names())
def test_features_then_head_is_forward(name):
    (c, h, w), classes = _input(name), DEFAULT_INPUTS[name][1]
    model = create_model(name, num_classes=classes, in_channels=c, input_size=(h, w)).eval()
    x = torch.randn(2, c, h, w)
    assert torch.allclose(model.forward_head(model.forward_features(x)), model(x))


@pytest.mark.parametrize("name", MODELS.names())
def test_channels_last_gives_the_same_output(name):
    (c, h, w), classes = _input(name), DEFAULT_INPUTS[name][1]
    model = create_model(name, num_classes=classes, in_channels=c, input_size=(h, w)).eval()
    x = torch.randn(2, c, h, w)
    ref = model(x)
    model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", sorted(REPORTED))
def test_reported_parameter_counts(name):
    (c, h, w), classes = DEFAULT_INPUTS[name]
    model = create_model(name, num_classes=classes, in_channels=c, input_size=(h, w))
    print(name, num_parameters(model))
    assert num_parameters(model) == REPORTED[name]


def test_kth_layer_table_matches_the_report():
    s = summarize(create_model("kth-default", num_classes=10, in_channels=3, input_size=(32, 32)), (3, 32, 32))
    shapes = [r.shape for r in s.rows if not r.layer.startswith("ReLU")]
    assert shapes == [[24, 28, 28], [24, 14, 14], [48, 12, 12], [48, 6, 6], [96, 4, 4], [96, 2, 2], [384], [512], [10]]
    assert (s.total_params, f"{s.params_mb:.2f}", f"{s.total_mb:.2f}") == (256_058, "0.98", "1.46")


def test_hanoi_table_has_no_relu_rows_and_the_reports_sizes():
    s = summarize(create_model("hanoi-scratch", num_classes=20, in_channels=3, input_size=(224, 224)), (3, 224, 224))
    assert not any(r.layer.startswith("ReLU") for r in s.rows)
    assert [f"{v:.2f}" for v in (s.input_mb, s.forward_backward_mb, s.params_mb, s.total_mb)] == [
        "0.57",
        "17.90",
        "26.64",
        "45.12",
    ]


def test_summary_cli_prints_the_reports_figures():
    r = run_main("summary", "kth-default", "--input", "3x32x32")
    assert r.returncode == 0, r.stderr
    for text in (
        "Total params: 256,058",
        "[-1, 24, 28, 28]",
        "[-1, 96, 2, 2]",
        "Params size (MB): 0.98",
        "Estimated Total Size (MB): 1.46",
        "MACs per image",
    ):
        assert text in r.stdout, text
    r = run_main("summary", "hanoi-scratch", "--input", "3x224x224", "--num-classes", "20")
    for text in (
        "Total params: 6,983,444",
        "Input size (MB): 0.57",
        "Forward/backward pass size (MB): 17.90",
        "Params size (MB): 26.64",
        "Estimated Total Size (MB): 45.12",
    ):
        assert text in r.stdout, text


def test_macs_of_a_conv_and_a_linear():
    s = summarize(create_model("uw-lab", num_classes=10, in_channels=1, input_size=(28, 28)), (1, 28, 28))
    # conv1: 16x28x28 outputs x 25 taps; conv2: 32x14x14 x (16 x 25); linear: 1568 x 10
    assert s.macs == 16 * 28 * 28 * 25 + 32 * 14 * 14 * 16 * 25 + 1568 * 10


def test_models_list_names_every_model_with_its_count():
    r = run_main("models", "list")
    assert r.returncode == 0
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert sorted(lines) == MODELS.names()
    assert "6,983,444" in lines["hanoi-scratch"] and "256,058" in lines["kth-default"]


def test_spec_keys_override_a_preset():
    base = create_model("kth-default", num_classes=10, in_channels=3, input_size=(32, 32))
    wide = create_model("kth-default", num_classes=10, in_channels=3, input_size=(32, 32), channels=[64, 128, 256])
    assert num_parameters(wide) > num_parameters(base)
    leaky = create_model("kth-default", num_classes=10, in_channels=3, input_size=(32, 32), act="leaky_relu")
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in leaky.modules())


def test_too_small_input_names_the_block():
    with pytest.raises(ConfigError, match="too small.*block 5"):
        create_model("hanoi-scratch", num_classes=20, in_channels=3, input_size=(28, 28))


def test_unknown_model_and_bad_kwargs():
    with pytest.raises(ConfigError, match="unknown model 'kth-defualt'; did you mean kth-default"):
        create_model("kth-defualt", num_classes=10, in_channels=1)
    with pytest.raises(ConfigError, match="rejects its arguments"):
        create_model("fastnet", num_classes=10, in_channels=1, no_such_arg=3)
    with pytest.raises(ConfigError, match="unknown model key 'no_such_key'"):
        create_model("uw-lab", num_classes=10, in_channels=1, no_such_key=3)
    with pytest.raises(ConfigError, match="act"):
        create_model("uw-lab", num_classes=10, in_channels=1, act="swish")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["summary", "nope"], "unknown model"),
        (["summary", "uw-lab", "--input", "1x28"], "CxHxW"),
        (["summary", "hanoi-scratch", "--input", "3x28x28"], "too small"),
    ],
)
def test_summary_errors_are_one_line(args, needle):
    r = run_main(*args)
    assert (
        r.returncode == 2
        and needle in r.stderr
        and "Traceback" not in r.stderr
        and len(r.stderr.strip().splitlines()) == 1
    )


@pytest.mark.parametrize("name", ["uw-lab", "textbook-mnist", "lenet5", "kth-default"])
def test_presets_train_through_the_cli(name, fashion_dir, tmp_path):
    from conftest import QUICK

    r = run_cli(
        "train",
        "--data",
        str(fashion_dir),
        "--model",
        name,
        "--out",
        str(tmp_path / "run"),
        *QUICK,
        "--set",
        "train.report=true",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert (tmp_path / "run" / "plots" / "gradcam.png").is_file() and (tmp_path / "run" / "report.html").is_file()
    assert "warning" not in (tmp_path / "run" / "log.txt").read_text()


def test_a_sigmoid_preset_is_refused_before_training(fashion_dir, tmp_path):
    from conftest import QUICK

    r = run_cli(
        "train", "--data", str(fashion_dir), "--model", "textbook-celeba-smile", "--out", str(tmp_path / "run"), *QUICK
    )
    assert (
        r.returncode == 2 and "sigmoid" in r.stderr and "Traceback" not in r.stderr and not (tmp_path / "run").exists()
    )


# Counted by hand from the layers (weights + biases, BN: 2 per channel), 3x32x32 input, 10 classes.
KTH_COUNTS = [256_058, 903_818, 965_642, 708_106, 708_106, 708_106, 708_490, 708_490, 708_490, 708_490]


def test_kth_variants_are_cumulative_yaml_overrides_with_their_counts():
    from cnnlab.config import apply_overrides, load_recipe
    from cnnlab.reproduce import load_study

    study = load_study("kth-cifar10")
    cfg = load_recipe("kth-cifar10")
    assert study.cumulative and len(study.rows) == 10  # the default and the nine variants
    for row, want in zip(study.rows, KTH_COUNTS):
        cfg = apply_overrides(cfg, row.set)  # each applied to the best configuration so far
        model = create_model(cfg.model.name, num_classes=10, in_channels=3, input_size=(32, 32), **cfg.model.kwargs)
        print(f"{row.name:<36} {num_parameters(model):>9,}  (reported recall {row.figures[0].reported})")
        assert num_parameters(model) == want, row.name
    assert cfg.train.batch_size == 256 and cfg.optim.lr == 0.1 and cfg.data.shuffle is True


@pytest.mark.parametrize(
    "key, value",
    [
        ("channels", [-1]),
        ("dropout", 1.5),
        ("order", None),
        ("head_order", "linear,linear"),
        ("hidden", [0]),
        ("orders", []),
        ("padding", -1),
        ("kernel", 0),
        ("stride", 0),
        ("order", "act,conv"),
    ],
)
def test_bad_spec_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key.split("_")[0] if key != "orders" else "orders"):
        create_model("uw-lab", num_classes=10, in_channels=1, **{key: value})


def test_summary_of_an_input_too_small_is_one_line():
    r = run_main("summary", "alexnet", "--input", "3x32x32")
    assert (
        r.returncode == 2
        and "cannot take a 3x32x32 input" in r.stderr
        and r.stdout == ""
        and "Traceback" not in r.stderr
    )


@pytest.mark.parametrize("name", MODELS.names())
def test_inference_path_gives_the_training_paths_outputs(name):
    """Layers with a faster no-grad forward (fastnet's pooling) give exactly what the autograd path gives."""
    torch.manual_seed(0)
    (c, h, w), classes = _input(name), DEFAULT_INPUTS[name][1]
    model = create_model(name, num_classes=classes, in_channels=c, input_size=(h, w)).eval()
    x = torch.randn(3, c, h, w)
    with torch.no_grad():
        fast = model(x)
    assert torch.equal(fast, model(x.requires_grad_()).detach())


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 9), (1, 4, 3, 3), (2, 2, 1, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fastnet_pool_is_max_pool2d_without_grad(shape, dtype, channels_last):
    from cnnlab.models.fastnet import MaxPool2x2

    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype)
    x[0, 0, 0, :2] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    if min(shape[2:]) < 2:  # too small to pool: torch's error either way
        with pytest.raises(RuntimeError), torch.no_grad():
            MaxPool2x2()(x)
        return
    with torch.no_grad():
        fast = MaxPool2x2()(x)
    ref = torch.nn.functional.max_pool2d(x, 2)
    assert fast.shape == ref.shape and fast.dtype == ref.dtype
    assert torch.equal(fast.nan_to_num(7.0), ref.nan_to_num(7.0)) and torch.equal(fast.isnan(), ref.isnan())


@pytest.mark.parametrize("size", [(28, 28), (27, 31), (64, 64)])
def test_fastnet_strided_first_halves_as_the_pooled_block_does(size):
    """strided_first swaps the first block's conv3x3 -> maxpool2 for one 4x4 stride-2 conv: the same
    map sizes after every block (odd sizes floor, as max pooling does), and no pooling layer left in it."""
    from cnnlab.models.fastnet import MaxPool2x2

    torch.manual_seed(0)
    x = torch.randn(2, 1, *size)
    plain = create_model("fastnet", num_classes=10, in_channels=1, input_size=size)
    strided = create_model("fastnet", num_classes=10, in_channels=1, input_size=size, strided_first=True)
    for a, b in zip(plain.features, strided.features):
        x_a, x = a(x), b(x)
        assert x.shape == x_a.shape
    first = strided.features[0]
    assert (
        first[0].stride == (2, 2)
        and first[0].kernel_size == (4, 4)
        and not any(isinstance(m, MaxPool2x2) for m in first)
    )
    assert strided(torch.randn(2, 1, *size)).shape == (2, 10)
