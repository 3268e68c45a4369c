"""cnnlab sweep: grids, seeds, the cumulative method, tables, and resuming a sweep that stopped."""

import json
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.config import apply_overrides, load_recipe
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.models import create_model, num_parameters
from cnnlab.sweep import parse_grid, run_sweep

FAST = {"data.val_size": 64, "train.batch_size": 64, "train.epochs": 1, "train.min_steps": None, "train.report": False}


def _base(fashion_dir):
    return apply_overrides(load_recipe(None), {**FAST, "data.root": str(fashion_dir)})


def test_grid_values_are_yaml_and_lists_keep_their_commas():
    assert parse_grid(["optim.lr=0.1,0.001", "model.kwargs.widths=[16, 32],[32,64]", "data.shuffle=true,false"]) == [
        ("optim.lr", [0.1, 1e-3]),
        ("model.kwargs.widths", [[16, 32], [32, 64]]),
        ("data.shuffle", [True, False]),
    ]
    with pytest.raises(ConfigError, match="key=v1,v2"):
        parse_grid(["optim.lr"])


def test_a_grid_over_seeds_gives_one_folder_per_run_and_mean_and_std(fashion_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "sweep",
                "fashion-mnist-fast",
                "--data",
                str(fashion_dir),
                "--grid",
                "optim.lr=0.05,0.1",
                "--seeds",
                "2",
                "--out",
                str(out),
                *[x for k, v in FAST.items() for x in ("--set", f"{k}={'null' if v is None else str(v).lower()}")],
            ]
        )
        == 0
    )
    runs = sorted(p.parent.name + "/" + p.name for p in out.glob("*/seed-*"))
    assert runs == ["00-lr=0.05/seed-0", "00-lr=0.05/seed-1", "01-lr=0.1/seed-0", "01-lr=0.1/seed-1"]
    table = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["label"] for r in table] == ["optim.lr=0.05", "optim.lr=0.1"]
    model = load_recipe("fashion-mnist-fast").model
    size = num_parameters(create_model(model.name, num_classes=10, in_channels=1, input_size=(28, 28), **model.kwargs))
    for row in table:
        accs = [json.loads((Path(r) / "metrics.json").read_text())["test"]["accuracy"] for r in row["runs"]]
        assert row["accuracy"] == accs and row["seconds"] > 0 and row["parameters"] == size
    text = capsys.readouterr().out
    assert "±" in text and "optim.lr=0.1" in text and (out / "sweep.md").is_file() and (out / "sweep.csv").is_file()


def test_cumulative_keeps_a_value_only_when_it_beats_the_best_so_far(fashion_dir, tmp_path):
    rows = run_sweep(
        _base(fashion_dir),
        parse_grid(["optim.lr=1e-5,0.05", "train.label_smoothing=0.0"]),
        seeds=1,
        out=tmp_path / "s",
        cumulative=True,
        log=lambda _: None,
    )
    assert [r.label for r in rows] == ["base", "optim.lr=1e-5", "optim.lr=0.05", "train.label_smoothing=0.0"]
    best = rows[0].mean
    for r in rows[1:]:
        assert r.kept == (r.mean > best)
        best = max(best, r.mean) if r.kept else best
    last_base = [r for r in rows[:3] if r.kept][-1].overrides
    assert rows[3].overrides == {**last_base, "train.label_smoothing": 0.0}  # applied to the best so far


def test_a_sweep_that_stopped_resumes_where_it_stopped(fashion_dir, tmp_path):
    from cnnlab.engine.callbacks import Callback
    from cnnlab.run import train_run

    calls = []

    class Stop(Callback):
        def on_batch_end(self, state, loss):
            if state.step == 2:
                raise KeyboardInterrupt  # as a Ctrl-C that arrives outside the signal handler

    def stopping(cfg, **kw):
        calls.append(kw)
        if len(calls) == 3:  # the third run is killed in its first epoch
            return train_run(cfg, callbacks=[Stop()], **kw)
        return train_run(cfg, **kw)

    grid = parse_grid(["optim.lr=0.05,0.1"])
    with pytest.raises(CnnlabError, match="interrupted"):
        run_sweep(_base(fashion_dir), grid, seeds=2, out=tmp_path / "s", train=stopping, log=lambda _: None)
    assert (tmp_path / "s" / "01-lr=0.1" / "seed-0" / "checkpoints" / "last.pt").is_file()
    calls.clear()
    rows = run_sweep(_base(fashion_dir), grid, seeds=2, out=tmp_path / "s", train=stopping, log=lambda _: None)
    assert [("resume" in kw) for kw in calls] == [
        True,
        False,
    ]  # the stopped run resumed, the last one trained; the first two read back
    assert all(len(r.metric) == 2 for r in rows)


def test_another_sweep_in_the_same_folder_is_refused(fashion_dir, tmp_path):
    run_sweep(_base(fashion_dir), parse_grid(["optim.lr=0.05"]), seeds=1, out=tmp_path / "s", log=lambda _: None)
    with pytest.raises(ConfigError, match="holds another sweep"):
        run_sweep(_base(fashion_dir), parse_grid(["optim.lr=0.1"]), seeds=1, out=tmp_path / "s", log=lambda _: None)


def test_a_bad_grid_value_fails_before_any_run(fashion_dir, tmp_path):
    with pytest.raises(ConfigError, match="optim.lr"):
        run_sweep(_base(fashion_dir), parse_grid(["optim.lr=0.1,-1"]), seeds=1, out=tmp_path / "s", log=lambda _: None)
    assert not list(tmp_path.glob("s/*/seed-*"))


def test_a_plan_from_before_a_new_config_key_still_resumes_but_a_new_kwarg_is_refused(tmp_path):
    import yaml

    from cnnlab.config import RunConfig
    from cnnlab.sweep import guard_plan

    plan = {"recipe": RunConfig().to_dict(), "seeds": 1}
    older = yaml.safe_load(yaml.safe_dump(plan))
    del older["recipe"]["data"]["cutout"]  # written by a cnnlab that had no data.cutout
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(older, sort_keys=False))
    guard_plan(tmp_path, "sweep.yaml", plan, "sweep")  # the new key at its default: the same plan
    changed = {
        "recipe": {**plan["recipe"], "model": {"name": "fastnet", "kwargs": {"pool_grid": 3}, "init_from": None}},
        "seeds": 1,
    }
    with pytest.raises(ConfigError, match="recipe.model.kwargs is {} there and {'pool_grid': 3} here"):
        guard_plan(tmp_path, "sweep.yaml", changed, "sweep")
    cut = {"recipe": {**plan["recipe"], "data": {**plan["recipe"]["data"], "cutout": 4}}, "seeds": 1}
    with pytest.raises(ConfigError, match="recipe.data.cutout"):
        guard_plan(tmp_path, "sweep.yaml", cut, "sweep")


def test_a_grid_over_models_keeps_the_users_model_kwargs(fashion_dir, tmp_path):
    from cnnlab.run import train_run

    seen = []

    def recording(cfg, **kw):
        if cfg is not None:
            seen.append((cfg.model.name, dict(cfg.model.kwargs)))
        return train_run(cfg, **kw)

    sets = {**FAST, "data.root": str(fashion_dir), "model.kwargs.act": "gelu"}
    base = apply_overrides(load_recipe("uw-lab-fashion"), sets)
    run_sweep(
        base,
        parse_grid(["model.name=uw-lab,lenet5"]),
        seeds=1,
        out=tmp_path / "s",
        train=recording,
        log=lambda _: None,
        sets=sets,
    )
    assert seen == [
        ("uw-lab", {"act": "gelu"}),
        ("lenet5", {"act": "gelu"}),
    ]  # the recipe's kwargs (none here) dropped, the user's kept
