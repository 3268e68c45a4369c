"""The named stages of a run and the pieces they share, each tested alone: the trackers that own the
monitored figures, the checkpoint contract (engine/checkpoint.py) and run.py's stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.engine.callbacks import BestTracker, Callback, Checkpointer, EarlyStopping, PlateauSchedule
from cnnlab.engine.checkpoint import (
    FIT_SAVED,
    CheckpointedParts,
    RunIdentity,
    fit_state_dict,
    fit_state_from,
    load_checkpoint,
    restore_training,
    resume_position,
    save_checkpoint,
    training_snapshot,
    validate_checkpoint,
)
from cnnlab.engine.distributed import Dist
from cnnlab.engine.fit import with_trackers
from cnnlab.engine.loop import EpochProgress
from cnnlab.engine.state import FitState
from cnnlab.errors import CnnlabError


def row(epoch: int, val_acc="", val_loss="", train_acc=0.5, train_loss=1.0) -> dict:
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": 0.1,
        "epoch_seconds": 1.0,
    }


def run_epochs(callbacks, rows) -> FitState:
    """Drive the callbacks' epoch hooks as fit() does, one row per epoch."""
    state = FitState(epochs=len(rows), steps_per_epoch=1)
    for cb in callbacks:
        cb.on_fit_start(state)
    for r in rows:
        state.epoch = r["epoch"]
        for cb in callbacks:
            cb.on_epoch_start(state)
        for cb in callbacks:
            cb.on_epoch_end(state, r)
        if state.stop_reason:
            break
    for cb in callbacks:
        cb.on_fit_end(state)
    return state


# --- trackers -----------------------------------------------------------------------------------


def test_the_best_tracker_keeps_the_best_epoch_by_its_figure():
    acc = run_epochs([BestTracker("val_accuracy")], [row(1, 0.5, 0.9), row(2, 0.7, 0.8), row(3, 0.6, 0.5)])
    assert (acc.best_epoch, acc.best_score) == (2, 0.7)
    loss = run_epochs([BestTracker("val_loss")], [row(1, 0.5, 0.9), row(2, 0.7, 0.8), row(3, 0.6, 0.5)])
    assert (loss.best_epoch, loss.best_score) == (3, -0.5)  # a loss is negated: higher is better


def test_without_validation_the_tracker_reads_the_training_figure():
    state = run_epochs([BestTracker("val_accuracy")], [row(1, train_acc=0.4), row(2, train_acc=0.3)])
    assert state.best_epoch == 1


def test_improved_says_whether_the_epoch_just_ended_is_the_best():
    tracker = BestTracker()
    seen = []

    class Spy(Callback):  # after the tracker
        def on_epoch_end(self, state, r):
            seen.append(tracker.improved)

    run_epochs([tracker, Spy()], [row(1, 0.5), row(2, 0.4), row(3, 0.6)])
    assert seen == [True, False, True]


def test_early_stopping_reads_the_tracker():
    tracker = BestTracker("val_loss")
    rows = [row(1, val_loss=0.5), row(2, val_loss=0.6), row(3, val_loss=0.7), row(4, val_loss=0.1)]
    state = run_epochs([tracker, EarlyStopping(2, tracker)], rows)
    assert state.epoch == 3 and state.best_epoch == 1
    assert state.stop_reason == "early stopping: no better val loss for 2 epochs"


def test_the_checkpointer_writes_best_pt_when_the_tracker_improved(tmp_path):
    tracker = BestTracker()
    written = []

    def snapshot(s):
        written.append(s.epoch)
        return {"epoch": s.epoch}

    ck = Checkpointer(tmp_path, snapshot, tracker=tracker)
    run_epochs([tracker, ck], [row(1, 0.5), row(2, 0.4)])
    # last.pt before training, then epoch 1: best.pt and last.pt, epoch 2: last.pt only
    assert written == [0, 1, 1, 2]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


class _Step:
    """What PlateauSchedule and with_trackers read of a TrainStep."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.optimizer = scheduler.optimizer if scheduler is not None else None


def _plateau(monitor: str = "val_loss"):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=0)
    sched.monitor = monitor
    return _Step(sched)


def test_the_plateau_schedule_steps_once_an_epoch_on_its_own_figure():
    step = _plateau("val_loss")
    sched = step.scheduler
    plateau = PlateauSchedule(step)
    lrs = []

    class Spy(Callback):
        def on_batch_end(self, state, loss): ...

        def on_epoch_end(self, state, r):
            lrs.append(state.lr)
            assert step.scheduler is None  # the training step does not step it per batch meanwhile

    run_epochs([plateau, Spy()], [row(1, val_loss=0.5), row(2, val_loss=0.6), row(3, val_loss=0.4)])
    assert lrs == [1.0, 0.5, 0.5]  # epoch 2 did not improve: halved, and the others see it at once
    assert step.scheduler is sched  # given back at the end of the fit


def test_fit_runs_the_tracker_its_callbacks_read_first():
    step = _plateau()
    early = EarlyStopping(2, BestTracker("val_loss"))
    made = with_trackers([early], step, "val_accuracy")
    assert [type(c) for c in made] == [PlateauSchedule, BestTracker, EarlyStopping]
    assert made[1] is early.tracker  # the one early stopping reads is the one that runs, first
    mine = BestTracker("val_loss")
    assert with_trackers([other := Callback(), mine], _Step(None), "val_accuracy") == [
        mine,
        other,
    ]
    made = with_trackers([], _Step(None), "val_loss")
    assert len(made) == 1 and isinstance(made[0], BestTracker) and made[0].monitor == "val_loss"
    with pytest.raises(ValueError, match="more than one BestTracker"):
        with_trackers([BestTracker(), EarlyStopping(2, BestTracker())], _Step(None), "val_accuracy")


def test_a_tracker_held_only_by_the_checkpointer_still_runs(tmp_path):
    """The Checkpointer's tracker need not be in the list: fit runs it, so best.pt is written."""
    from cnnlab.engine.fit import with_trackers as wt

    tracker = BestTracker()
    ck = Checkpointer(tmp_path, lambda s: {"epoch": s.epoch}, tracker=tracker)
    run_epochs(wt([ck], _Step(None), "val_accuracy"), [row(1, 0.5)])
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1


# --- the checkpoint contract --------------------------------------------------------------------


def test_a_fit_state_round_trips_through_a_checkpoint(tmp_path):
    state = FitState(epochs=5, steps_per_epoch=10, epoch=2, step=17, lr=0.05, epoch_lr=0.1)
    state.history = [row(1, 0.5, 0.9)]
    state.steps = [[1, 1, 2.3, 0.1]]
    state.best_epoch, state.best_score = 1, 0.5
    state.progress = EpochProgress(7, 10.0, 100, 60, 100, 3.0)
    save_checkpoint(tmp_path / "x.pt", fit=fit_state_dict(state))
    back = fit_state_from(load_checkpoint(tmp_path / "x.pt")["fit"], 10, {"position": 7})
    assert {k: getattr(back, k) for k in FIT_SAVED if k != "sessions"} == {
        k: getattr(state, k) for k in FIT_SAVED if k != "sessions"
    }
    assert back.sessions == state.sessions + 1 and back.progress == state.progress
    assert resume_position(back) == (2, {"position": 7})  # inside epoch 2, from its loader position
    back.progress = None
    assert resume_position(back) == (3, None)  # between epochs: the next one


def test_validate_checkpoint_serves_every_reader(tmp_path):
    path = tmp_path / "c.pt"
    weights_only = {"model": {"w": torch.zeros(2)}}
    validate_checkpoint(weights_only, path, required=("model",))  # --init-from needs the weights only
    with pytest.raises(CnnlabError, match="lacks config, classes, input_shape, normalization"):
        validate_checkpoint(weights_only, path)  # inference needs the whole identity
    with pytest.raises(CnnlabError, match="its model is not a state_dict of tensors"):
        validate_checkpoint({"model": {"w": [1.0]}}, path, required=("model",))
    with pytest.raises(CnnlabError, match=r"its input_shape is \[1, 28\], not \[C, H, W\]"):
        validate_checkpoint({"model": {}, "input_shape": [1, 28]}, path, required=("model",))


def test_the_snapshot_restores_the_training_parts(tmp_path):
    from cnnlab.engine.callbacks import DivergenceGuard

    def parts(seed: int) -> CheckpointedParts:
        torch.manual_seed(seed)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        guard = DivergenceGuard(model, opt, sched, log=lambda line: None, every=20)

        class Loader:
            def __len__(self):
                return 4

            def state_dict(self):
                return {"position": 1}

        return CheckpointedParts(model, model, opt, sched, None, None, guard, Loader())

    a = parts(0)
    a.model(torch.ones(1, 3)).sum().backward()
    a.optimizer.step()
    a.scheduler.step()
    identity = RunIdentity({"name": "x"}, ["a", "b"], [1, 1, 3], [], {"mean": [0.0], "std": [1.0]}, "ce", {})
    state = FitState(epochs=3, steps_per_epoch=4, epoch=1, step=4)
    save_checkpoint(tmp_path / "last.pt", **training_snapshot(a, identity, state))
    b = parts(1)
    back = restore_training(load_checkpoint(tmp_path / "last.pt"), b)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert b.scheduler.last_epoch == a.scheduler.last_epoch == 1
    assert b.optimizer.state_dict()["state"][0]["momentum_buffer"].equal(
        a.optimizer.state_dict()["state"][0]["momentum_buffer"]
    )
    assert (back.epoch, back.step, back.sessions) == (1, 4, 2)


# --- run.py's stages ----------------------------------------------------------------------------


def test_the_stop_states_become_exceptions_that_say_where_the_saved_point_is(tmp_path):
    from cnnlab.run import RunDiverged, RunInterrupted, Session, raise_if_stopped

    lines = []

    class Log:
        def write(self, line, echo=True):
            lines.append(line)

    session = Session(tmp_path, Log(), Dist(), 0.0)
    raise_if_stopped(FitState(epochs=1, steps_per_epoch=1), session)  # a fit that ended: nothing
    stopped = FitState(epochs=2, steps_per_epoch=5, epoch=1, step=3, interrupted=True, stop_reason="interrupted")
    with pytest.raises(RunInterrupted, match=f"the position is saved: continue with cnnlab train --resume {tmp_path}"):
        raise_if_stopped(stopped, session)
    diverged = FitState(epochs=2, steps_per_epoch=5, diverged=True, stop_reason="the loss is nan")
    with pytest.raises(RunDiverged, match="the loss is nan; no checkpoint was written. Lower the learning rate"):
        raise_if_stopped(diverged, session)
    assert lines == ["stopped: interrupted at epoch 1, step 3", "stopped: the loss is nan"]


def test_a_new_run_folder_is_made_and_numbered(tmp_path):
    from cnnlab.run import open_run_dir

    identity = RunIdentity({}, [], [], [], {}, "", {})
    first, notes = open_run_dir(Dist(), "exp", str(tmp_path / "a"), None, None, identity, ["hello"])
    assert first == Path(tmp_path / "a") and first.is_dir() and notes == ["hello"]
    with pytest.raises(CnnlabError):  # an existing run folder is never written over
        (first / "metrics.json").write_text("{}")
        open_run_dir(Dist(), "exp", str(first), None, None, identity, [])
