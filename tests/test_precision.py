"""The precision and layout policy (engine/precision.py): each answer of the machine forced, on any CPU."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import QUICK

from cnnlab.cli import main
from cnnlab.engine import precision
from cnnlab.engine.precision import Choice, choose, measure
from cnnlab.models import create_model

CPU = torch.device("cpu")


def _model():
    return create_model("fastnet", num_classes=10, in_channels=1, input_size=(28, 28), widths=(8, 16))


def _probe(rates: dict[str, float], calls: list):
    """A probe that answers `rates` (images/s per candidate name) and records what it was asked."""

    def probe(model, shape, batch, outputs, candidates):
        calls.append([precision._name(c) for c in candidates])
        return {precision._name(c): rates[precision._name(c)] for c in candidates}

    return probe


def _never(*args, **kwargs):
    raise AssertionError("the probe ran where nothing needed measuring")


FAST_BF16 = {"fp32": 1000.0, "fp32_channels_last": 1500.0, "bf16": 1200.0, "bf16_channels_last": 3000.0}
SLOW_BF16 = {
    "fp32": 1000.0,
    "fp32_channels_last": 1500.0,
    "bf16": 300.0,
    "bf16_channels_last": 700.0,
}  # emulated-like figures
NCHW_FASTER = {"fp32": 2000.0, "fp32_channels_last": 1500.0, "bf16": 4000.0, "bf16_channels_last": 3000.0}


def test_emulated_bf16_trains_in_fp32_without_timing_the_dtype(tmp_path):
    calls: list = []
    c = choose(
        CPU,
        "auto",
        True,
        model=_model(),
        input_shape=(1, 28, 28),
        native=lambda: False,
        probe=_never,
        cache=tmp_path / "c.json",
    )
    assert (c.dtype, c.channels_last, c.native_bf16, c.autocast_dtype) == ("float32", True, False, None)
    assert "no native bf16" in c.reason
    # with the layout on auto, only fp32's two layouts are timed
    c = choose(
        CPU,
        "auto",
        "auto",
        model=_model(),
        input_shape=(1, 28, 28),
        native=lambda: False,
        probe=_probe(SLOW_BF16, calls),
        cache=tmp_path / "c.json",
    )
    assert c.dtype == "float32" and c.channels_last is True
    assert all(not name.startswith("bf16") for names in calls for name in names)


def test_native_bf16_is_taken_only_where_measured_faster(tmp_path):
    calls: list = []
    fast = choose(
        CPU,
        "auto",
        "auto",
        model=_model(),
        input_shape=(1, 28, 28),
        native=lambda: True,
        probe=_probe(FAST_BF16, calls),
        cache=tmp_path / "a.json",
    )
    assert (fast.dtype, fast.channels_last, fast.autocast_dtype) == ("bfloat16", True, torch.bfloat16)
    assert "2.00x fp32" in fast.reason and fast.probe["bf16_channels_last"] == 3000.0
    # first the dtypes at channels_last, then the winner's other layout: three candidates, not four
    assert calls == [["fp32_channels_last", "bf16_channels_last"], ["bf16"]]
    slow = choose(
        CPU,
        "auto",
        "auto",
        model=_model(),
        input_shape=(1, 28, 28),
        native=lambda: True,
        probe=_probe(SLOW_BF16, []),
        cache=tmp_path / "b.json",
    )
    assert slow.dtype == "float32" and "not faster" in slow.reason


def test_bf16_within_the_margin_is_not_taken(tmp_path):
    """auto is never slower than fp32: a bf16 step only 2% faster is not worth the rounding."""
    rates = {"fp32_channels_last": 1000.0, "bf16_channels_last": 1020.0}
    c = choose(
        CPU,
        "auto",
        True,
        model=_model(),
        input_shape=(1, 28, 28),
        native=lambda: True,
        probe=_probe(rates, []),
        cache=tmp_path / "c.json",
    )
    assert c.dtype == "float32"


def test_channels_last_is_kept_only_where_measured_faster(tmp_path):
    c = choose(
        CPU,
        "auto",
        "auto",
        model=_model(),
        input_shape=(1, 28, 28),
        native=lambda: True,
        probe=_probe(NCHW_FASTER, []),
        cache=tmp_path / "c.json",
    )
    assert c.channels_last is False and "channels_last measured 0.75x NCHW" in c.reason


def test_explicit_settings_are_kept_and_not_measured(tmp_path):
    for prec, dtype in (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16")):
        c = choose(
            CPU,
            prec,
            False,
            model=_model(),
            input_shape=(1, 28, 28),
            native=lambda: True,
            probe=_never,
            cache=tmp_path / "c.json",
        )
        assert (c.dtype, c.channels_last, c.reason) == (dtype, False, "given")
    # bf16 given on a CPU without it: what was asked for (emulated), not refused
    assert choose(CPU, "bf16", True, native=lambda: False, probe=_never).dtype == "bfloat16"


def test_the_answer_is_cached_per_machine_and_a_bad_cache_is_measured_again(tmp_path):
    cache = tmp_path / "cache" / "precision.json"
    calls: list = []
    kw = dict(
        model=_model(),
        input_shape=(1, 28, 28),
        native=lambda: True,
        probe=_probe(FAST_BF16, calls),
        cache=cache,
        signature="fastnet",
    )
    first = choose(CPU, "auto", "auto", **kw)
    again = choose(CPU, "auto", "auto", **kw)
    assert len(calls) == 2 and not first.cached and again.cached and again.dtype == first.dtype
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 1 and torch.__version__ in next(iter(entries))  # keyed by machine and torch version
    other = choose(CPU, "auto", "auto", **{**kw, "signature": "another model"})  # another model: measured
    assert not other.cached and len(calls) == 4
    cache.write_text("{not json")
    redone = choose(CPU, "auto", "auto", **kw)
    assert not redone.cached and json.loads(cache.read_text())["version"] == precision.CACHE_VERSION


def test_an_unwritable_cache_is_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    c = choose(
        CPU,
        "auto",
        "auto",
        model=_model(),
        input_shape=(1, 28, 28),
        native=lambda: True,
        probe=_probe(FAST_BF16, []),
        cache=blocker / "precision.json",
    )
    assert c.dtype == "bfloat16"


def test_measure_times_every_candidate_and_leaves_the_run_untouched():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    figures = measure(model, (1, 28, 28), 8, 10, [("float32", False), ("float32", True), ("bfloat16", True)])
    assert set(figures) == {"fp32", "fp32_channels_last", "bf16_channels_last"} and all(v > 0 for v in figures.values())
    assert torch.equal(torch.rand(3), expected)  # torch's global stream is where it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights and BN statistics too


def test_native_flags_come_from_the_cpu_not_from_onednn(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx2"})  # an Ice Lake: AVX-512, no AVX512_BF16
    assert precision.cpu_has_native_bf16() is False
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert precision.cpu_has_native_bf16() is True
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"asimd", "bf16"})  # aarch64 with BF16
    assert precision.cpu_has_native_bf16() is True


@pytest.mark.parametrize(
    "native, rates, dtype", [(False, SLOW_BF16, "float32"), (True, FAST_BF16, "bfloat16")], ids=["emulated", "native"]
)
def test_a_run_records_the_choice_and_trains_with_it(fashion_dir, tmp_path, monkeypatch, capsys, native, rates, dtype):
    seen: list = []
    real = torch.autocast.__init__

    def spy(self, device_type, dtype=None, *a, **kw):  # what the training step's autocast is asked for
        seen.append(dtype)
        real(self, device_type, dtype, *a, **kw)

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(precision, "measure", _probe(rates, []))
    monkeypatch.setattr(torch.autocast, "__init__", spy)
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert (
        main(
            ["train", "--data", str(fashion_dir), "--out", str(out), *QUICK, "--set", "model.kwargs={widths: [8, 16]}"]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["precision"] == dtype and m["channels_last"] is True
    policy = Choice.from_dict(m["precision_policy"])
    assert policy.dtype == dtype and policy.native_bf16 is native and policy.probe["probe_batch"] <= 64
    assert (torch.bfloat16 in seen) is (dtype == "bfloat16")
    printed = capsys.readouterr().out
    assert f"precision: {dtype}, channels_last (auto:" in printed and f"{dtype} training, channels_last" in printed


def test_the_probe_batch_shrinks_with_the_image_size():
    assert precision.probe_batch(256, (1, 28, 28)) == 64
    assert precision.probe_batch(16, (1, 28, 28)) == 16  # never more than the run's own batch
    assert precision.probe_batch(128, (3, 32, 32)) == 49
    assert precision.probe_batch(64, (3, 224, 224)) == 4


def test_a_malformed_cache_entry_is_measured_again(tmp_path):
    """Valid JSON that is not what this version wrote: entries not a mapping, or an entry missing a figure."""
    cache = tmp_path / "precision.json"
    calls: list = []
    kw = dict(
        model=_model(),
        input_shape=(1, 28, 28),
        native=lambda: True,
        probe=_probe(FAST_BF16, calls),
        cache=cache,
        signature="fastnet",
    )
    cache.write_text(json.dumps({"version": precision.CACHE_VERSION, "entries": ["not", "a", "mapping"]}))
    assert choose(CPU, "auto", "auto", **kw).dtype == "bfloat16" and len(calls) == 2
    data = json.loads(cache.read_text())
    key = next(iter(data["entries"]))
    del data["entries"][key]["bf16_channels_last"]
    cache.write_text(json.dumps(data))
    again = choose(CPU, "auto", "auto", **kw)
    assert not again.cached and again.dtype == "bfloat16" and len(calls) == 4
