"""report.html in a real browser, the figures behind it, Grad-CAM checked against the objects'
pixels, and cnnlab evaluate / report / compare from the command line."""

import json
from pathlib import Path

import pytest
import torch
from conftest import QUICK, run_main, write_image_folder

from cnnlab.cli import main
from cnnlab.report.plots import shorten

SECTIONS = [
    "Training curves",
    "Metrics (test)",
    "Confusion matrix",
    "Per-class accuracy and the most-confused pairs",
    "Worst misclassifications",
    "What the layers see",
    "Grad-CAM and integrated gradients",
    "Configuration",
]
FIGURES = ["curves", "lr", "confusion", "per_class", "worst", "filters", "feature_maps", "gradcam", "attribution"]


@pytest.fixture(scope="module")
def run(fashion_dir, tmp_path_factory):
    """The default recipe (on the Fashion-MNIST fixture), as cnnlab train runs it: it writes the report."""
    out = tmp_path_factory.mktemp("report") / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(fashion_dir),
                "--out",
                str(out),
                "--epochs",
                "3",
                "--set",
                "data.val_size=64",
                "--set",
                "train.batch_size=64",
                "--set",
                "train.adapt=false",
            ]
        )
        == 0
    )  # as the recipe is: flips on, so a few test images stay wrong and the gallery has some
    return out


def test_train_writes_the_report_with_every_figure(run):
    assert (run / "report.html").is_file()
    for name in FIGURES:
        assert (run / "plots" / f"{name}.png").stat().st_size > 1000, name
    page = (run / "report.html").read_text()
    assert all(f">{h}</h2>" in page for h in SECTIONS)
    assert 'src="http' not in page and "src='http" not in page  # self-contained: images are data: URIs
    deletion = json.loads((run / "plots" / "deletion.json").read_text())
    assert set(deletion["drops"]) == {"integrated gradients", "Grad-CAM"} and deletion["images"] > 0
    shown = f"{deletion['drops']['integrated gradients']['map']['0.2']:.3f}"
    assert f"The deletion test on {deletion['images']} test images" in page and f"<td>{shown}</td>" in page


def test_the_report_in_headless_chromium(run, browser):
    browser.get((run / "report.html").resolve().as_uri())
    headings = [h.text for h in browser.find_elements("tag name", "h2")]
    assert headings == SECTIONS
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(images) == len(FIGURES)
    assert all(complete and w > 100 and h > 100 for _, complete, w, h in images), images
    worst = browser.find_element("css selector", "tr.worst td").text
    assert worst == json.loads((run / "metrics.json").read_text())["test"]["worst_class"]


def test_report_redraws_from_the_folder_alone(run):
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()


def test_metrics_json_has_the_new_figures(run):
    m = json.loads((run / "metrics.json").read_text())["test"]
    assert set(m["top_k_accuracy"]) == {"1", "2", "3", "5"} and m["top_k_accuracy"]["1"] == m["accuracy"]
    assert 0 <= m["balanced_accuracy"] <= 1


def test_evaluate_reproduces_the_runs_test_figures(run, capsys):
    assert main(["evaluate", str(run), "--batch-size", "37"]) == 0
    out = capsys.readouterr().out
    got = json.loads((run / "eval-test.json").read_text())
    want = json.loads((run / "metrics.json").read_text())["test"]
    assert got["accuracy"] == want["accuracy"] and got["confusion_matrix"] == want["confusion_matrix"]
    assert f"({round(want['accuracy'] * 120)}/120)" in out and "<- worst" in out and want["worst_class"] in out


def test_evaluate_val_with_tta_writes_its_own_file(run):
    assert main(["evaluate", str(run), "--split", "val", "--tta"]) == 0
    assert json.loads((run / "eval-val-tta.json").read_text())["num_samples"] == 64
    assert main(["evaluate", str(run), "--split", "val", "--no-tta"]) == 0
    assert json.loads((run / "eval-val-no-tta.json").read_text())["tta"] is False


@pytest.mark.parametrize("command", ["evaluate", "report"])
def test_a_folder_that_is_not_a_run_says_what_is_missing(command, tmp_path):
    r = run_main(command, str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "not a run folder" in r.stderr


def test_a_run_interrupted_before_evaluation_says_so(run, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    (partial / "metrics.json").unlink()
    r = run_main("report", str(partial))
    assert r.returncode == 2 and "interrupted before the test evaluation" in r.stderr and "--resume" in r.stderr
    (partial / "checkpoints" / "best.pt").unlink()
    r = run_main("evaluate", str(partial))
    assert r.returncode == 2 and "interrupted before the first epoch" in r.stderr


def test_compare_three_runs(run, fashion_dir, tmp_path, capsys):
    others = []
    for seed in (1, 2):
        out = tmp_path / f"seed{seed}"
        assert main(["train", "--data", str(fashion_dir), "--out", str(out), *QUICK, "--seed", str(seed)]) == 0
        others.append(str(out))
    capsys.readouterr()
    figure = tmp_path / "preds.png"
    assert main(["compare", str(run), *others, "--figure", str(figure), "--out", str(tmp_path / "t.md")]) == 0
    text = capsys.readouterr().out
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, separator, one row per run
    for d in (run, *map(Path, others)):
        m = json.loads((d / "metrics.json").read_text())["test"]
        assert f"({round(m['accuracy'] * m['num_samples'])}/{m['num_samples']})" in text
    assert figure.stat().st_size > 5000
    assert main(["compare", str(run), *others, "--format", "csv", "--figure", str(figure)]) == 0
    assert capsys.readouterr().out.startswith("run,model,data,parameters,best epoch,test accuracy")


def test_long_class_names_are_shortened_in_the_figures(tmp_path):
    names = {
        "a very long class name that would overlap its neighbours": 12,
        "another equally long class name here": 12,
        "short": 12,
    }
    folder = write_image_folder(tmp_path / "imgs", names, size=(16, 16))
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--out", str(out), "--epochs", "1", "--set", "data.val_size=0"]) == 0
    assert (out / "plots" / "confusion.png").is_file() and (out / "report.html").is_file()
    assert all(len(shorten(n)) <= 14 for n in names) and shorten("short") == "short"


@pytest.fixture(scope="module")
def real_fashion_run(tmp_path_factory):
    """The default model trained briefly (2 epochs, 12,000 images) on the real Fashion-MNIST, and
    50 of its test images, normalised as the run feeds them."""
    from cnnlab.config import DataConfig
    from cnnlab.data import DATASETS
    from cnnlab.evaluation import load_run, load_split, split_loader

    if DATASETS.get("fashion-mnist").find(DataConfig(download=False)) is None:
        pytest.skip("the real Fashion-MNIST is not installed (make bootstrap installs it)")
    out = tmp_path_factory.mktemp("real") / "run"
    args = ["--data", "fashion-mnist", "--out", str(out), "--epochs", "2", "--set", "data.train_limit=12000"]
    assert main(["train", *args, "--set", "data.test_limit=500", "--set", "train.report=false"]) == 0
    run = load_run(out)
    _, split = load_split(run, "test")
    subset = split.subset(torch.arange(50))
    return run, subset, torch.cat([x for x, _ in split_loader(run, subset)])


def test_gradcam_heat_lies_on_the_garment_in_real_fashion_mnist(real_fashion_run):
    """Over 50 test images, the mean Grad-CAM heat on the garment's pixels (non-zero) exceeds the mean
    heat on the black background."""
    from cnnlab.report.gradcam import grad_cam
    from cnnlab.report.images import heat_inside_ratio

    run, subset, x = real_fashion_run
    heats, _ = grad_cam(run.model, x)
    ratio = heat_inside_ratio(heats, subset.images[:, 0] > 0)
    print(f"Grad-CAM heat on the garment / on the background: {ratio:.3f}")
    assert ratio > 1.0


def test_integrated_gradients_pass_the_deletion_test_and_the_randomisation_check(real_fashion_run):
    """Deleting the hottest 20% of the pixels by integrated gradients lowers the predicted class's
    probability at least twice as much as a random 20%; and the map of the same model with its weights
    drawn afresh is another map (rank correlation under 0.5), so it shows what the model learnt."""
    from cnnlab.report.attribution import deletion_drops, integrated_gradients, randomised_similarity

    run, _, x = real_fashion_run
    with torch.no_grad():
        classes = run.model(x).argmax(1)
    heat, explained = integrated_gradients(run.model, x, run.mean, run.std, steps=16)
    assert torch.equal(explained, classes) and heat.shape == (50, 28, 28) and float(heat.max()) == 1.0
    drops = deletion_drops(run.model, x, heat, classes, run.mean, run.std)
    print("deletion by integrated gradients:", drops)
    assert drops["map"]["0.2"] >= 2 * drops["random"]["0.2"] > 0

    def explain(model, images, cls):
        return integrated_gradients(model, images, run.mean, run.std, cls, steps=16)[0]

    similarity = randomised_similarity(run.model, x, explain)
    print(f"integrated gradients, trained against re-initialised weights: rank correlation {similarity:.3f}")
    assert similarity < 0.5


def test_the_checks_of_a_map_on_a_model_whose_evidence_is_known():
    """A model that scores class 0 by the left half of the image and class 1 by the right half: the
    true map (the left half, for class 0) beats random deletion, its opposite does worse; a map that
    ignores the weights (the image itself) is as similar to itself after re-initialisation as can be."""
    from cnnlab.report.attribution import deletion_drops, randomised_similarity, rank_similarity

    class Halves(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Linear(1, 1)  # has weights to re-initialise, and does not change the ranks
            with torch.no_grad():
                self.scale.weight.fill_(4.0)
                self.scale.bias.zero_()

        def forward(self, x):
            left, right = x[..., :8].mean((1, 2, 3)), x[..., 8:].mean((1, 2, 3))
            return torch.stack([left - right, right - left], 1) * self.scale.weight.abs().view(1)

    x = torch.rand(16, 1, 16, 16) * torch.tensor([1.0] * 8 + [0.2] * 8)  # brighter on the left: class 0
    classes = Halves()(x).argmax(1)
    assert (classes == 0).all()
    left = torch.zeros(16, 16, 16)
    left[..., :8] = 1.0
    mean, std = [0.0], [1.0]
    true_map = deletion_drops(Halves(), x, left, classes, mean, std)
    wrong_map = deletion_drops(Halves(), x, 1 - left, classes, mean, std)
    assert true_map["map"]["0.5"] > true_map["random"]["0.5"] > wrong_map["map"]["0.5"]
    assert rank_similarity(x[:, 0], x[:, 0]) == pytest.approx(1.0)
    assert randomised_similarity(Halves(), x, lambda m, images, cls: images[:, 0]) > 0.99


def test_tensorboard_logging_is_an_option(fashion_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert (
        main(["train", "--data", str(fashion_dir), "--out", str(out), *QUICK, "--set", "train.tensorboard=true"]) == 0
    )
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    steps = len((out / "steps.csv").read_text().strip().splitlines()) - 1
    assert len(events.Scalars("step/train_loss")) == steps and steps > 0
    assert [e.step for e in events.Scalars("epoch/val_accuracy")] == [1]
    assert (out / "history.csv").is_file()  # the CSV is written either way


def test_report_with_files_that_do_not_decode_keeps_images_and_captions_together(tmp_path):
    """Data read lazily from disk: undecodable files have no prediction row; the figures still pair
    each prediction with its own image."""
    from conftest import write_corrupt_files

    from cnnlab.evaluation import load_run, load_split, predict, split_loader

    folder = tmp_path / "imgs"
    write_image_folder(folder / "train", {"cat": 20, "dog": 20}, size=(16, 16))
    write_image_folder(folder / "test", {"cat": 6, "dog": 6}, size=(16, 16), seed=1)
    write_corrupt_files(folder / "test" / "cat")  # three files in the test part that will not decode
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(folder),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--set",
                "data.in_memory=false",
                "--set",
                "data.workers=0",
                "--set",
                "data.val_size=0",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["num_samples"] == 12 and len(m["skipped_files"]) == 3
    assert (
        (out / "plots" / "gradcam.png").is_file()
        and (out / "plots" / "worst.png").is_file()
        and "warning" not in (out / "log.txt").read_text()
    )
    run = load_run(out)
    _, split = load_split(run, "test")
    p = predict(run.model, split_loader(run, split), run.objective)
    assert len(split) == 15 and len(p.index) == 12
    good = [i for i, path in enumerate(split.paths) if not path.endswith(("empty.jpg", "notes.png", "truncated.jpg"))]
    assert p.index.tolist() == good


def test_gradcam_of_a_squeezenet_is_not_flat():
    """SqueezeNet's last conv is its classifier (1x1 maps): Grad-CAM must use the last conv of the body."""
    from cnnlab.models import create_model
    from cnnlab.report.gradcam import grad_cam

    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=3, in_channels=3, input_size=(64, 64))
    heats, _ = grad_cam(model, torch.randn(2, 3, 64, 64))
    assert heats.shape == (2, 64, 64) and float(heats.std()) > 1e-3
    assert all(p.grad is None for p in model.parameters())  # nothing left on the weights


def test_evaluate_out_into_a_new_folder_and_a_file_that_is_not_a_checkpoint(run, tmp_path):
    assert main(["evaluate", str(run), "--out", str(tmp_path / "new" / "dir" / "m.json")]) == 0
    assert (tmp_path / "new" / "dir" / "m.json").is_file()
    r = run_main("evaluate", str(run / "config.yaml"))
    assert r.returncode == 2 and "is not a checkpoint file" in r.stderr


def test_report_without_the_data_still_draws_the_numbers(fashion_dir, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(fashion_dir, data)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *QUICK]) == 0
    shutil.rmtree(data)  # the data is gone: moved, or on another machine
    assert main(["report", str(out)]) == 0
    assert "image figures are left out" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert all(f">{h}</h2>" in page for h in SECTIONS) and "Not drawn" in page
    assert (out / "plots" / "confusion.png").is_file() and (out / "plots" / "per_class.png").is_file()
