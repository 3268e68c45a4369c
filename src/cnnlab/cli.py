"""The command line: the only place that parses arguments. Library functions take plain values."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from cnnlab import __version__

EPILOG_TRAIN = """examples:
  cnnlab train                                  # the default recipe on Fashion-MNIST
  cnnlab train --epochs 2 --out runs/quick      # fewer epochs, a chosen run folder
  cnnlab train --data ~/datasets/fashion-mnist  # a folder holding the four IDX files
  cnnlab train --set optim.lr=0.1 --set data.val_size=0.1

Fashion-MNIST is looked for in: --data PATH; $CNNLAB_DATA; ./data (torchvision layout
data/FashionMNIST/raw/); /usr/share/datasets/fashion-mnist (Debian package
dataset-fashion-mnist); else torchvision downloads it into ./data where a network exists.
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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnlab", description="Image classification with convolutional networks, on PyTorch and torchvision.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser(
        "train",
        help="train a model from a recipe and write a run folder",
        description="Train a model from a recipe (default: fashion-mnist-fast) and write runs/<recipe>-<n>/ with "
        "config.yaml, history.csv, metrics.json, checkpoints/ and plots/.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("recipe", nargs="?", metavar="RECIPE", help="a recipe name (see src/cnnlab/recipes/) or a path to a .yaml file")
    t.add_argument("--data", metavar="NAME|PATH", help="a dataset name, or a folder holding the dataset's files")
    t.add_argument("--model", metavar="NAME", help="a registered model name")
    t.add_argument("--epochs", type=_positive_int, metavar="N")
    t.add_argument("--batch-size", type=_positive_int, metavar="N")
    t.add_argument("--lr", type=_positive_float, metavar="X", help="peak learning rate")
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    t.add_argument("--seed", type=_int, metavar="N")
    t.add_argument("--device", metavar="auto|cpu|cuda|mps", help="default auto: cuda, then mps, then cpu")
    t.add_argument("--out", metavar="DIR", help="the run folder (must be new or empty); default runs/<recipe>-<n>")
    t.add_argument("--time-limit", type=_positive_float, metavar="SECONDS", help="stop training after this long, then evaluate and write everything")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any recipe key, e.g. --set train.label_smoothing=0 (repeatable)")
    t.set_defaults(func=cmd_train)
    return parser


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from cnnlab.data import DATASETS

    flags = {
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "optim.lr": args.lr,
        "optim.name": args.optimizer,
        "train.seed": args.seed,
        "train.device": args.device,
        "train.time_limit": args.time_limit,
        "model.name": args.model,
    }
    if args.data is not None:
        flags["data.name" if args.data in DATASETS else "data.root"] = args.data
    return {k: v for k, v in flags.items() if v is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from cnnlab.config import apply_overrides, load_recipe, parse_set
    from cnnlab.run import train_run

    cfg = load_recipe(args.recipe)
    cfg = apply_overrides(cfg, {**parse_set(args.set), **_train_overrides(args)})
    result = train_run(cfg, out=args.out)
    print_summary(result.metrics, str(result.run_dir))
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
        ("best epoch", f"{m['best_epoch']} of {m['epochs_run']} run" + (f"  ({m['stop_reason']})" if m.get("stop_reason") else "")),
        ("time", f"{m['train_seconds']:.1f} s training, {m['total_seconds']:.1f} s in all"),
        ("model", f"{m['model']}  ({m['num_parameters']:,} parameters, {m['device']}, {m['precision']} training)"),
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
        return args.func(args)
    except CnnlabError as e:
        print(f"cnnlab {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"cnnlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
