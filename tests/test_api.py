"""The Python API (cnnlab.train, cnnlab.open_run, Run): a notebook run end to end in a Jupyter kernel
on a small fixture, then the Run of the folder it wrote, and the overrides checked as --set checks them."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cnnlab
from cnnlab.config import apply_overrides, load_recipe
from cnnlab.errors import CnnlabError, ConfigError

NOTEBOOK = Path(__file__).parent / "notebooks" / "quickstart.ipynb"

# tests/conftest.py's QUICK as recipe keys, with a model of 8 and 16 channels in fp32 (no precision
# probe in the kernel): about 1 s of training; the kernel's imports (torch, matplotlib) take most of its 10 s
QUICK = {
    "train.epochs": 1,
    "data.val_size": 64,
    "train.batch_size": 64,
    "train.eval_batch_size": 128,
    "train.report": False,
    "model.kwargs.widths": [8, 16],
    "train.precision": "fp32",
    "train.channels_last": False,
    "data.augment": "none",  # no measuring of what flips keep (plan.adapt): 0.7 s
}


OWN_FIGURE = 'import matplotlib.pyplot as plt\n\nplt.plot(run.history["epoch"], run.history["val_accuracy"], "o-");'


@pytest.fixture(scope="module")
def executed(fashion_dir, tmp_path_factory):
    """(the notebook with its outputs, the run folder it trained): tests/notebooks/quickstart.ipynb with
    its parameters cell pointed at the Fashion-MNIST fixture, run in a fresh kernel in a temporary folder."""
    why = "the notebook test needs nbformat, nbclient and ipykernel"
    nbformat = pytest.importorskip("nbformat", reason=why)
    nbclient = pytest.importorskip("nbclient", reason=why)
    pytest.importorskip("ipykernel", reason=why)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook has one cell tagged parameters"
    params[0].source = f"data = {str(fashion_dir)!r}\noverrides = {QUICK!r}"
    # after the example, the user's own pyplot figure: it shows once training has drawn the run's curves
    nb.cells.append(nbformat.v4.new_code_cell(OWN_FIGURE))
    where = tmp_path_factory.mktemp("notebook")
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(where)}}
    ).execute()
    runs = sorted((where / "runs").iterdir())
    assert len(runs) == 1, runs
    return nb, runs[0]


def _code_cell(nb, starts: str):
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(starts)]
    assert len(cells) == 1, f"one code cell starts with {starts!r}"
    return cells[0]


def _result(cell) -> dict:
    """The data of the cell's value (its execute_result)."""
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert len(results) == 1, cell.outputs
    return results[0].data


def test_the_notebook_runs_and_shows_the_run(executed):
    nb, run_dir = executed
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    trained = _code_cell(nb, "import cnnlab")
    html = _result(trained)["text/html"]
    correct = round(test["accuracy"] * test["num_samples"])
    assert f"{100 * test['accuracy']:.2f}%  ({correct}/{test['num_samples']})" in html
    assert test["worst_class"] in html and str(run_dir.name) in html
    assert 'src="data:image/png;base64,' in html  # the curves the run drew
    assert _result(_code_cell(nb, 'run.metrics["test"]["accuracy"]'))["text/plain"] == repr(test["accuracy"])
    assert _result(_code_cell(nb, "again = "))["text/plain"] == repr(test["worst_class"])
    history = _result(_code_cell(nb, "run.history"))
    assert "text/html" in history and "val_accuracy" in history["text/html"]  # a DataFrame
    for starts in ("run.plot_confusion()", "run.plot_top_losses(8)", "run.gradcam("):
        png = base64.b64decode(_result(_code_cell(nb, starts))["image/png"])
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000, starts
    assert _code_cell(nb, "clf = again.classifier()").execution_count is not None
    # the user's own pyplot figure, after training drew the run's curves: the inline backend is still on
    own = [o for o in _code_cell(nb, OWN_FIGURE).outputs if "image/png" in o.get("data", {})]
    assert len(own) == 1


def test_the_readme_example_is_the_notebooks():
    nb = json.loads(NOTEBOOK.read_text())
    cells = [
        "".join(c["source"])
        for c in nb["cells"]
        if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", [])
    ]
    code = "\n".join(cells).replace("cnnlab.train(data=data, **overrides)", 'cnnlab.train(data="fashion-mnist")')
    readme = (Path(__file__).parents[1] / "README.md").read_text().split("\n## In Python / Jupyter\n")[1]
    assert readme.split("```python\n")[1].split("```")[0].strip() == code.strip()


def test_the_notebook_shows_progress_as_widgets_not_carriage_returns(executed):
    nb, _ = executed
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "\r" not in streams and "Traceback" not in streams
    assert re.search(r"epoch +1/1 +train loss", streams)  # the epoch's line, printed
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    try:
        import ipywidgets  # noqa: F401
    except ImportError:  # tqdm.auto falls back to its text bar, off where the output is not a terminal
        assert not widgets
    else:
        assert widgets, "tqdm.auto draws each epoch's bar as a Jupyter widget"


def test_a_run_reads_its_folder(executed):
    _, run_dir = executed
    run = cnnlab.open_run(run_dir)
    assert run.path == run_dir and run.config["train"]["epochs"] == 1
    assert run.metrics == json.loads((run_dir / "metrics.json").read_text())
    rows = (run_dir / "history.csv").read_text().splitlines()
    history = run.history
    assert list(history.columns) == rows[0].split(",") and len(history) == len(rows) - 1
    assert history["epoch"].tolist() == [1]
    assert history["val_accuracy"].iloc[0] == float(rows[1].split(",")[rows[0].split(",").index("val_accuracy")])
    assert run.summary()[0] == ("run folder", str(run_dir))


def test_the_figures_are_the_runs_and_nothing_is_written(executed):
    _, run_dir = executed
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    run = cnnlab.open_run(run_dir)
    test = run.metrics["test"]
    confusion = run.plot_confusion()
    assert confusion.axes[0].images[0].get_array().tolist() == test["confusion_matrix"]
    top = run.plot_top_losses(5)
    titles = [ax.get_title() for ax in top.axes if ax.get_title()]
    losses = [float(re.search(r"loss (\d+\.\d+)", t).group(1)) for t in titles]
    assert len(losses) == 5 and losses == sorted(losses, reverse=True)
    cams = run.gradcam([0, 2])
    assert len([ax for ax in cams.axes if ax.images]) == 4  # two images, each above its map
    new = run.gradcam(run_dir / "plots" / "curves.png")  # any image file: resized to the model's input
    assert [ax.get_title() for ax in new.axes][0].startswith("curves.png\npred: ")
    assert len(run.plot_curves().axes) == 2 and run.plot_per_class().axes
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_a_run_says_in_one_line_what_it_cannot_show(executed, tmp_path):
    _, run_dir = executed
    run = cnnlab.open_run(run_dir)
    n = run.metrics["test"]["num_samples"]
    for call, match in [
        (lambda: run.gradcam([n]), f"no test image {n} to explain: the test part has {n} images"),
        (lambda: run.plot_top_losses(0), "at least 1"),
        (lambda: run.gradcam(b"not an image"), "image 0: not an image"),
        (lambda: cnnlab.open_run(tmp_path), "has no config.yaml"),
    ]:
        with pytest.raises(CnnlabError, match=re.escape(match)) as e:
            call()
        assert "\n" not in str(e.value)


def test_the_history_without_pandas_is_rows_of_numbers(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: tiny\n")
    (run_dir / "history.csv").write_text("epoch,train_loss,val_loss,lr\n1,0.9,,0.1\n2,0.5,0.625,1e-3\n")
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    assert cnnlab.open_run(run_dir).history == [
        {"epoch": 1, "train_loss": 0.9, "val_loss": None, "lr": 0.1},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.625, "lr": 0.001},
    ]
    html = cnnlab.open_run(run_dir)._repr_html_()  # no metrics.json yet: says so, with the epochs written
    assert "has no metrics.json" in html and "<td>epochs written</td><td>2</td>" in html


def test_overrides_are_dotted_keys_or_one_mapping_per_section(fashion_dir):
    from cnnlab.api import train_config

    base = load_recipe(None)
    dotted = train_config(**{"optim.lr": 0.1, "train.epochs": 2, "model.kwargs.widths": [8, 16]})
    nested = train_config(optim={"lr": 0.1}, train={"epochs": 2}, **{"model.kwargs.widths": [8, 16]})
    assert (
        dotted == nested == apply_overrides(base, {"optim.lr": 0.1, "train.epochs": 2, "model.kwargs.widths": [8, 16]})
    )
    assert dotted.model.kwargs == {**base.model.kwargs, "widths": [8, 16]}
    # a mapping for model.kwargs replaces the recipe's, as --set model.kwargs={...} does
    assert train_config(model={"kwargs": {"widths": [8]}}).model.kwargs == {"widths": [8]}
    assert train_config(data="mnist").data.name == "mnist"  # a registered name
    by_folder = train_config(data=fashion_dir)  # a folder (a Path too)
    assert by_folder.data.root == str(fashion_dir) and by_folder.data.name == base.data.name
    assert train_config(data={"root": str(fashion_dir), "val_size": 64}).data.val_size == 64
    assert train_config("uw-lab-fashion") == load_recipe("uw-lab-fashion")


def test_a_bad_override_is_the_error_set_gives():
    from cnnlab.api import train_config

    for kwargs, key in [
        ({"optim.lrr": 0.1}, "optim.lrr"),
        ({"epochs": 3}, "epochs"),
        ({"optim": {"lrr": 1}}, "optim.lrr"),
    ]:
        with pytest.raises(ConfigError) as api:
            train_config(**kwargs)
        with pytest.raises(ConfigError) as cli:
            apply_overrides(load_recipe(None), {key: 1})
        assert str(api.value) == str(cli.value) and key in str(api.value)
    with pytest.raises(ConfigError, match="give neither recipe nor out"):
        cnnlab.train("fashion-mnist-fast", resume="runs/x")


def test_import_cnnlab_stays_light():
    code = (
        "import sys, cnnlab; names = dir(cnnlab); "
        "print(sorted(m for m in ('torch', 'matplotlib', 'cnnlab.api') if m in sys.modules), "
        "all(n in names for n in ('train', 'open_run', 'Run', 'load')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "True"]
    from cnnlab import api

    assert cnnlab.train is api.train and cnnlab.open_run is api.open_run and cnnlab.Run is api.Run
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        cnnlab.trian  # noqa: B018
