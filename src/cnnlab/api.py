"""cnnlab in Python, for notebooks and scripts: `cnnlab.train(...)` and `cnnlab.open_run(path)` give a Run.

    run = cnnlab.train(data="fashion-mnist", **{"optim.lr": 0.1})
    run                      # in Jupyter: the summary table and the training curves
    run.history              # one row per epoch (a pandas DataFrame where pandas is installed)
    run.plot_confusion()     # a matplotlib Figure, shown inline

Training is the command line's own (run.train_run, with the recipe's keys checked by
config.apply_overrides exactly as `--set` checks them), and a Run reads the run folder with
run_folder's readers. Its figures are the report's (report/plots.py, report/images.py), handed back
as Figures instead of written as PNGs. Imports are inside the functions that need them: reading a
run's metrics imports neither torch nor matplotlib.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.config import RunConfig, apply_overrides, flatten, load_recipe
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.run_folder import read_config, read_history, read_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnlab.report.build import ReportInputs
    from cnnlab.serve.predictor import Classifier

CAM_IMAGES = 12  # Grad-CAM examples when none are named: the report's own number


def train_config(recipe: str | Path | RunConfig | None = None, data: Any = None, **overrides: Any) -> RunConfig:
    """The RunConfig that train() would train, without training: the recipe (a name, a path, a
    RunConfig; None: the default) with `data` (a dataset name or folder) and the overrides applied.

    Overrides are recipe keys, dotted (`**{"optim.lr": 0.1}`) or as one mapping per section
    (`optim={"lr": 0.1}`); `data` may be such a mapping too (`data={"root": "...", "val_size": 0.1}`).
    A mapping for model.kwargs replaces the recipe's, as `--set model.kwargs={...}` does; the dotted
    `model.kwargs.NAME` changes one argument. Unknown keys and bad values raise ConfigError, with
    the message `--set` gives."""
    cfg = recipe if isinstance(recipe, RunConfig) else load_recipe(None if recipe is None else str(recipe))
    return apply_overrides(cfg, _dotted(data, overrides))


def _dotted(data: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """train()'s keyword arguments as apply_overrides' dotted keys."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        overrides = {"data": data, **overrides}
    elif data is not None:
        from cnnlab.data import data_key

        out[data_key(str(data))] = str(data)  # as --data NAME|PATH: a registered name, else a folder
    for key, value in overrides.items():
        if "." not in key and isinstance(value, dict):
            out.update(flatten(value, f"{key}."))
        else:
            out[key] = value
    return out


def train(
    recipe: str | Path | RunConfig | None = None,
    data: Any = None,
    *,
    out: str | Path | None = None,
    progress: bool | None = None,
    resume: str | Path | None = None,
    **overrides: Any,
) -> Run:
    """Train a recipe (default: fashion-mnist-fast) and return its Run, as `cnnlab train` does.

        run = cnnlab.train(data="path/to/images", **{"train.epochs": 3, "optim.lr": 0.05})

    `data`, `overrides` and `recipe`: see train_config. `out` is the run folder (default
    runs/<recipe>-<n>). `progress`: tqdm bars (None: where tqdm can draw them; a widget in Jupyter).
    `resume` continues that run folder from its last.pt with its own recipe: then give no recipe
    and no `out`, and the overrides are the keys to change (e.g. `**{"train.epochs": 8}`)."""
    from cnnlab.run import train_run

    if resume is not None:
        if recipe is not None or out is not None:
            raise ConfigError("resume= continues that run with its own recipe and folder; give neither recipe nor out")
        result = train_run(None, resume=resume, overrides=_dotted(data, overrides), progress=progress)  # type: ignore[arg-type]
    else:
        cfg = train_config(recipe, data, **overrides)
        result = train_run(cfg, out=None if out is None else str(out), progress=progress)
    return Run(result.run_dir)


def open_run(path: str | Path) -> Run:
    """The Run of a run folder that `cnnlab train` (or train()) wrote."""
    return Run(path)


def _number(text: str) -> int | float | str | None:
    """A history.csv cell as the number it holds; an empty cell (no validation part) as None."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class Run:
    """A run folder read back: its figures (matplotlib Figures), its tables and its model.

    Every figure is drawn from the folder's files (history.csv, metrics.json) or, for the images
    (top losses, Grad-CAM), from its checkpoint and its data, as `cnnlab report` draws them; nothing
    is written into the folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config: dict[str, Any] = read_config(self.path)  # the fully resolved recipe; fails here for no run

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: the test and validation figures and the facts of the run (read at each access)."""
        return read_metrics(self.path)

    @property
    def history(self) -> Any:
        """history.csv, one row per epoch with its numbers as numbers: a pandas DataFrame where
        pandas is installed, else a list of dicts (None where a cell is empty)."""
        rows = [{k: _number(v) for k, v in row.items()} for row in read_history(self.path)]
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows)

    def classifier(self, tta: bool | None = None) -> Classifier:
        """The run's model with its preprocessing, for new images (what `cnnlab.load(path)` gives)."""
        from cnnlab.serve.predictor import load

        return load(self.path, tta=tta)

    # --- figures drawn from the folder's files ------------------------------------------------

    def plot_curves(self) -> Figure:
        """Loss and accuracy per epoch (and the training loss per step): plots/curves.png's figure."""
        plots, _ = _report_modules()
        return _handed_back(plots.plot_training_curves, self.path)

    def _part(self, split: str) -> dict[str, Any]:
        metrics = self.metrics
        if split not in metrics:
            parts = [p for p in ("test", "val") if p in metrics]
            raise CnnlabError(f"{self.path} has no {split!r} figures in metrics.json; it has {', '.join(parts)}")
        return metrics[split]

    def plot_confusion(self, split: str = "test") -> Figure:
        """The confusion matrix of `split` (test or val): counts and the share of each true class."""
        part = self._part(split)
        if part.get("multilabel"):
            raise CnnlabError("a multi-label run has no confusion matrix; plot_per_class() shows each attribute")
        plots, _ = _report_modules()
        classes = list(part["per_class"])
        return _handed_back(plots.plot_confusion, part["confusion_matrix"], classes, self._png("confusion"), split)

    def plot_per_class(self, split: str = "test") -> Figure:
        """Each class's recall with the worst one in red, and the most-confused pairs."""
        part = self._part(split)
        plots, _ = _report_modules()
        return _handed_back(plots.plot_per_class, part, list(part["per_class"]), self._png("per_class"))

    def _png(self, name: str) -> Path:
        return self.path / "plots" / f"{name}.png"  # the report's file, named for its figure; not written

    # --- figures of images: the model and the data, read once ---------------------------------

    @cached_property
    def _inputs(self) -> ReportInputs:
        """The model of the tested checkpoint, the test part (val where there is none) and the
        model's predictions on it, rebuilt as `cnnlab report` rebuilds them."""
        from cnnlab.report.build import inputs_from_run

        return inputs_from_run(self.path)

    def _caption(self, row: int, loss: bool = False) -> str:
        """ "true: X / pred: Y (93%)" for prediction row `row` ("image N" for a multi-label run), with
        the image's loss after the true class where `loss`."""
        inp = self._inputs
        p = inp.predictions
        lost = f", loss {float(p.losses[row]):.2f}" if loss else ""
        if inp.objective.multilabel:
            return f"image {int(p.index[row])}{lost}"
        plots, _ = _report_modules()
        k = int(p.probs[row].argmax())
        true = plots.shorten(inp.classes[int(p.targets[row])], 16)
        return f"true: {true}{lost}\npred: {plots.shorten(inp.classes[k], 16)} ({100 * float(p.probs[row, k]):.0f}%)"

    def plot_top_losses(self, k: int = 16) -> Figure:
        """The `k` test images with the highest loss, with their true and predicted classes (red:
        misclassified), as fastai's plot_top_losses shows them."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise CnnlabError(f"k is the number of images to show, at least 1; got {k!r}")
        from cnnlab.evaluation import display_image

        inp = self._inputs
        p = inp.predictions
        rows = p.losses.argsort(descending=True)[:k].tolist()
        wrong = (
            ((p.probs > 0.5).long() != p.targets).any(1) if inp.objective.multilabel else p.probs.argmax(1) != p.targets
        )
        shown = [display_image(inp.split, int(p.index[r]), inp.preprocess, inp.channels) for r in rows]
        titles = [self._caption(r, loss=True) for r in rows]
        colors = ["darkred" if bool(wrong[r]) else "darkgreen" for r in rows]
        _, images = _report_modules()
        title = f"The {len(rows)} {inp.split_name} images with the highest loss"
        return _handed_back(images.plot_gallery, shown, titles, colors, self._png("top_losses"), title)

    def gradcam(self, images: Any = None) -> Figure:
        """Grad-CAM overlays: where the evidence for the predicted class lies.

        `images`: None (the first 12 test images, as the report shows them), test-part indices
        (`[0, 5, 7]`), or new images: a path, the bytes of a file, a PIL image, a tensor, or a list of
        them (a batch tensor (N, C, H, W) too)."""
        if images is None or _indices(images):
            shown, heats, titles = self._cam_of_test_images(images)
        else:
            shown, heats, titles = self._cam_of_new_images(images)
        _, report_images = _report_modules()
        return _handed_back(report_images.plot_gradcam, shown, heats, titles, self._png("gradcam"))

    def _cam_of_test_images(self, indices: Sequence[int] | None) -> tuple[list, Any, list[str]]:
        import torch

        from cnnlab.evaluation import display_image
        from cnnlab.report.gradcam import grad_cam

        inp = self._inputs
        row_of = {int(i): r for r, i in enumerate(inp.predictions.index.tolist())}  # undecodable files have no row
        if indices is None:
            indices = [int(i) for i in inp.predictions.index[:CAM_IMAGES]]
        for i in indices:
            if i not in row_of:
                n = len(inp.split)
                why = f"the {inp.split_name} part has {n} images" if not 0 <= i < n else "its file did not decode"
                raise CnnlabError(f"no {inp.split_name} image {i} to explain: {why}")
        batch = inp.split.subset(torch.tensor(list(indices), dtype=torch.long))
        heats, _ = grad_cam(inp.model, torch.cat([x for x, _ in inp.batches(batch)]).float())
        shown = [display_image(inp.split, i, inp.preprocess, inp.channels) for i in indices]
        return shown, heats, [self._caption(row_of[i]) for i in indices]

    def _cam_of_new_images(self, images: Any) -> tuple[list, list, list[str]]:
        from cnnlab.data.images import BadImage

        clf = self._classifier
        shown, heats, titles = [], [], []
        for n, image in enumerate(_image_list(images)):
            name = Path(image).name if isinstance(image, (str, os.PathLike)) else f"image {n}"
            try:
                pred, heat, pixels = clf.explain(image, topk=1)
            except BadImage as e:
                raise CnnlabError(f"{name}: {e}") from None
            label, prob = pred.top[0]
            heats.append(heat)
            shown.append(pixels)
            titles.append(f"{name}\npred: {label} ({100 * prob:.0f}%)")
        return shown, heats, titles

    @cached_property
    def _classifier(self) -> Classifier:
        return self.classifier()

    # --- the summary, as text and as Jupyter's HTML ---------------------------------------------

    def summary(self) -> list[tuple[str, str]]:
        """(label, value) rows: the run folder, test accuracy, worst class, epochs, time, model."""
        rows = [("run folder", str(self.path))]
        try:
            m = self.metrics
        except CnnlabError as e:  # still training, or stopped before its end
            epochs = len(read_history(self.path)) if (self.path / "history.csv").is_file() else 0
            return [*rows, ("metrics", str(e)), ("epochs written", str(epochs))]
        part = "test" if "test" in m else "val"
        figures = m.get(part) or {}
        if figures:
            correct = round(figures["accuracy"] * figures["num_samples"])
            rows.append((f"{part} accuracy", f"{100 * figures['accuracy']:.2f}%  ({correct}/{figures['num_samples']})"))
            worst = figures.get("worst_class")
            if worst:
                pc = figures["per_class"][worst]
                rows.append(
                    (
                        "worst class",
                        f"{worst}  ({'accuracy' if 'accuracy' in pc else 'recall'} "
                        f"{100 * pc.get('accuracy', pc.get('recall', 0)):.1f}%)",
                    )
                )
        stop = f"  ({m['stop_reason']})" if m.get("stop_reason") else ""
        rows.append(("epochs", f"best {m.get('best_epoch')} of {m.get('epochs_run')} run{stop}"))
        rows.append(("time", f"{m.get('train_seconds', 0):.1f} s training, {m.get('total_seconds', 0):.1f} s in all"))
        rows.append(
            (
                "model",
                f"{m.get('model')}  ({m.get('num_parameters', 0):,} parameters, {m.get('device')}, "
                f"{m.get('precision')} training)",
            )
        )
        return rows

    def _repr_html_(self) -> str:
        """Jupyter's view of a Run: the summary table, and the training curves the run drew."""
        from cnnlab.report.html import image_tag, table

        page = table(["run", self.name], self.summary())
        curves = self._png("curves")
        if curves.is_file():  # drawn by every finished run: shown from the file, no figure drawn here
            page += image_tag(curves, "loss and accuracy curves").replace("<img ", '<img style="max-width:720px" ', 1)
        return page


def _indices(images: Any) -> bool:
    """True for a list of test-part indices (ints), False for images."""
    return (
        isinstance(images, (list, tuple, range))
        and bool(images)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in images)
    )


def _image_list(images: Any) -> list:
    """One image, a list of them, or a (N, C, H, W) tensor, as a list of images."""
    import torch

    if isinstance(images, torch.Tensor):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise CnnlabError("gradcam() was given no images")
        return list(images)
    return [images]


def _report_modules() -> tuple[Any, Any]:
    """report.plots and report.images (plots.py keeps a Jupyter kernel's own matplotlib backend)."""
    from cnnlab.report import images, plots

    return plots, images


@contextlib.contextmanager
def _figures_kept() -> Iterator[list]:
    """While open, the report's figure functions hand their figure to the list instead of saving it.

    They end in report.plots.save(fig, path) (which report/images.py imports by name): that one
    function is swapped, so a Run shows exactly the figure the report writes, and writes nothing."""
    plots, images = _report_modules()
    kept: list = []

    def keep(fig, path, dpi: int = 110):
        plots.plt.close(fig)  # out of pyplot's list: Jupyter shows it once, as the value returned
        kept.append(fig)
        return Path(path)

    saved = plots.save, images.save
    plots.save = images.save = keep
    try:
        yield kept
    finally:
        plots.save, images.save = saved


def _handed_back(draw: Callable[..., Any], *args: Any) -> Figure:
    """The figure that the report function `draw(*args)` would save."""
    with _figures_kept() as kept:
        draw(*args)
    if not kept:
        raise CnnlabError(f"{draw.__name__} drew no figure for this run")
    return kept[-1]


__all__ = ["Run", "open_run", "train", "train_config"]
