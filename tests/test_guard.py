"""The divergence guard: a loss that explodes is rolled back to the last good weights with a lower rate."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from cnnlab.engine.callbacks import Callback, DivergenceGuard
from cnnlab.engine.state import FitState


def _setup():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    lines: list[str] = []
    guard = DivergenceGuard(model, opt, sched, log=lines.append, every=3)
    state = FitState(epochs=2, steps_per_epoch=100)
    guard.on_fit_start(state)
    return model, opt, sched, guard, state, lines


def _steps(guard, state, losses):
    for loss in losses:
        state.step += 1
        guard.on_batch_end(state, loss)


def test_a_spike_rolls_back_the_weights_and_halves_the_rate():
    model, opt, sched, guard, state, lines = _setup()
    state.epoch = 1
    _steps(guard, state, [2.3, 2.1, 2.0, 1.9, 1.8, 1.7])  # healthy: the snapshot follows (every 3 steps)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.mul_(100.0)  # what a blow-up does to the weights
    _steps(guard, state, [25.0])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in good.items())
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05) and sched.base_lrs == [pytest.approx(0.05)]
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # the schedule keeps the lower rate
    assert len(state.recoveries) == 1 and state.recoveries[0]["restored"] == "epoch 1, step 6" and not state.diverged
    assert lines == [lines[0]] and lines[0].startswith(
        "recovery 1 of at most 3: the training loss rose to 25 at epoch 1, step 7"
    )


def test_small_wobbles_and_the_first_steps_are_not_spikes():
    _, _, _, guard, state, lines = _setup()
    _steps(guard, state, [2.3, 6.0, 2.2])  # before WARM healthy steps nothing is judged (a first step can be high)
    _, _, _, low, low_state, low_lines = _setup()
    _steps(low, low_state, [0.3] * 10 + [0.95, 0.3])  # 3.2x the level, but less than one unit above it
    assert not state.recoveries and not lines and not low_state.recoveries and not low_lines


def test_nan_after_the_last_recovery_stops_with_the_loss_named():
    _, _, _, guard, state, lines = _setup()
    state.epoch = 2
    _steps(guard, state, [2.0] * 6)
    for _ in range(3):
        _steps(guard, state, [float("nan")])
        assert not state.diverged
    _steps(guard, state, [float("nan")])
    assert state.diverged and len(state.recoveries) == 3 and len(lines) == 3
    assert (
        state.stop_reason.startswith("the training loss became nan at epoch 2, step 10")
        and "after 3 recoveries" in state.stop_reason
    )


def test_a_validation_loss_that_explodes_is_rolled_back_too():
    model, opt, _, guard, state, lines = _setup()
    state.epoch = 1
    _steps(guard, state, [1.0] * 6)
    guard.on_epoch_end(state, {"val_loss": 0.5})
    kept = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(3.0)
    state.epoch = 2
    guard.on_epoch_end(state, {"val_loss": 40.0})
    assert torch.equal(model.weight, kept) and len(state.recoveries) == 1 and "validation loss rose to 40" in lines[0]
    guard.on_epoch_end(state, {"val_loss": ""})  # no validation part: nothing to judge
    assert len(state.recoveries) == 1


class BlowUp(Callback):
    """Forces a divergence: at step `at`, multiplies every weight by 40 (as a far too high rate would)."""

    def __init__(self, model_of, at: int) -> None:
        self.model_of, self.at = model_of, at

    def on_batch_end(self, state, loss):
        if state.step == self.at:
            with torch.no_grad():
                for p in self.model_of().parameters():
                    p.mul_(40.0)


def test_a_forced_spike_in_a_real_run_is_recovered_logged_and_in_metrics(fashion_dir, tmp_path, monkeypatch):
    """A whole run: the weights blow up at step 12, the guard rolls back, logs one line, and the run
    still learns; metrics.json lists the recovery."""
    import cnnlab.run as run_mod
    from cnnlab.config import apply_overrides, load_recipe

    built = {}
    real_prepare = run_mod.prepare

    def prepare(cfg, world=1):
        p = real_prepare(cfg, world)
        built["model"] = p.model
        return p

    monkeypatch.setattr(run_mod, "prepare", prepare)
    cfg = apply_overrides(
        load_recipe(None),
        {
            "data.root": str(fashion_dir),
            "train.epochs": 3,
            "train.min_steps": None,
            "train.reference_images": None,
            "data.val_size": 64,
            "train.batch_size": 32,
            "train.report": False,
            "model.kwargs.widths": [8, 16],
        },
    )
    out = tmp_path / "run"
    result = run_mod.train_run(cfg, out=str(out), progress=False, callbacks=[BlowUp(lambda: built["model"], at=12)])
    m = json.loads((out / "metrics.json").read_text())
    assert (
        len(m["recoveries"]) == 1
        and m["recoveries"][0]["step"] == 13
        and result.metrics["recoveries"] == m["recoveries"]
    )
    log = (out / "log.txt").read_text()
    assert "recovery 1 of at most 3: the training loss rose to" in log and "learning rate x0.5" in log
    assert m["test"]["accuracy"] > 0.3  # ten classes: chance is 0.1
