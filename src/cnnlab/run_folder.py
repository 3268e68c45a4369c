"""The run folder: its name, its layout, atomic writes of everything in it, and the readers of its files.

The readers (read_config, read_history, read_steps, read_metrics) give plain Python data and import
neither torch nor matplotlib, so a table or a figure of finished runs starts quickly.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.text import printable

RUNS_ROOT = Path("runs")
_UMASK = os.umask(0o022)  # read once (setting it is the only way to read it), then put back
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through `write(fileobj)` to a temporary file beside `path`, then rename it over `path`.

    A reader never sees a half-written file: it sees the old one or the new one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; the file gets the mode open() would give it
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable. Some file systems (CIFS, some FUSE mounts) refuse to fsync a
    folder: the rename has happened, so that is no reason to fail the write."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files atomic_write left in `folder` when its process was killed mid-write
    (`.NAME.XXXX.tmp`, as large as the file being written). Called where a run (re)starts writing a
    folder, so no writer of this run is between mkstemp and rename there."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_user_file(path: str | Path, text: str) -> Path:
    """write_text to a path a user named (--out FILE): its folder is created; failures are one line."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}; choose a writable path") from None
    return path


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (also inside lists and dicts) made None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON: a figure that is not finite (a diverged loss) is null, not the bare NaN that
    Python writes by default and strict parsers (browsers' JSON.parse, jq, Go, Rust) refuse."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False) + ("\n" if indent is not None else "")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json_text(obj))


class RunLog:
    """Lines a person should read: printed, and appended to the run folder's log.txt."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, line: str, echo: bool = True) -> None:
        from tqdm.auto import tqdm

        line = printable(line)  # a file name that is not UTF-8 (the data's) must not end the run here
        if echo:
            tqdm.write(line)
        with open(self.path, "a", encoding="utf-8") as f:  # appended line by line: a crash loses at most the last line
            f.write(line + "\n")


SHOWN_SKIPPED = 10  # skipped files printed; log.txt and metrics.json list them all


def log_data_issues(log: RunLog, skipped: list[tuple[str, str]], warnings: list[str]) -> None:
    """A count, then one line per skipped file (the first few on screen, all in log.txt), then warnings."""
    if skipped:
        log.write(f"skipped {len(skipped)} file(s) that are not images or would not decode:")
        for i, (path, reason) in enumerate(skipped):
            log.write(f"  {path}: {reason}", echo=i < SHOWN_SKIPPED)
        if len(skipped) > SHOWN_SKIPPED:
            print(f"  ... and {len(skipped) - SHOWN_SKIPPED} more in {log.path}")
    for w in warnings:
        log.write(f"warning: {w}")


def make_run_dir(out: str | None, name: str, root: Path = RUNS_ROOT) -> Path:
    """Create the run folder: `out` if given (it must not hold files), else root/<name>-<n>, the next free n."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {out} is a file; give a folder path (it is created if missing)")
        if path.is_dir() and any(path.iterdir()):
            raise ConfigError(f"--out {out} already holds files; choose a new folder so no earlier run is overwritten")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create --out {out}: {e.strerror}; choose a writable folder") from None
        return path
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create {root}/: {e.strerror}; run from a writable folder or pass --out DIR"
        ) from None
    n = 1 + max(
        (int(p.name.rsplit("-", 1)[1]) for p in root.glob(f"{name}-*") if p.name.rsplit("-", 1)[1].isdigit()), default=0
    )
    while True:
        path = root / f"{name}-{n}"
        try:
            path.mkdir()  # fails if another process took this n first; then try the next
            return path
        except FileExistsError:
            n += 1


def report_link(run_dir: str | Path, base: str | Path) -> str:
    """A link from the folder `base` to the run's report.html, or to the run folder where it has none
    (`run_dir` lies under `base`)."""
    rel = Path(run_dir).relative_to(base)
    return f"{rel}/report.html" if (Path(run_dir) / "report.html").is_file() else f"{rel}/"


# --- reading a run folder ------------------------------------------------------------------------------


def _reason(e: Exception) -> str:
    """An exception as one line: a YAML error spreads its position over several."""
    return " ".join(str(e).split())


def _not_a_run(run_dir: Path, name: str) -> CnnlabError:
    return CnnlabError(
        f"{run_dir} has no {name}: not a run folder that cnnlab train wrote (or it stopped before its first epoch)"
    )


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """config.yaml of `run_dir`, the run's fully resolved recipe, as a dict (a mapping of sections)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise _not_a_run(run_dir, "config.yaml")
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: bytes that do not decode as text
        raise CnnlabError(f"cannot read {path} ({_reason(e)}); restore it, or train the run again") from None
    if not isinstance(config, dict):
        raise CnnlabError(
            f"cannot read {path} (it holds no mapping of recipe sections); restore it, or train the run again"
        )
    return config


def _csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file the run wrote, each a dict of column -> text (an empty cell is "")."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, ValueError, csv.Error) as e:  # ValueError: bytes that do not decode as text
        raise CnnlabError(
            f"cannot read {path} ({_reason(e)}); it is rewritten after every epoch: train the run again"
        ) from None


def read_history(run_dir: str | Path) -> list[dict[str, str]]:
    """history.csv of `run_dir`: one dict per epoch, column -> text as written (epoch, train_loss,
    train_accuracy, val_loss, val_accuracy, lr, epoch_seconds; "" where a figure was not computed)."""
    run_dir = Path(run_dir)
    if not (run_dir / "history.csv").is_file():
        raise _not_a_run(run_dir, "history.csv")
    return _csv_rows(run_dir / "history.csv")


def read_steps(run_dir: str | Path) -> list[dict[str, str]]:
    """steps.csv of `run_dir`: one dict per optimizer step (step, loss, lr, ...), or [] where the run
    has none."""
    path = Path(run_dir) / "steps.csv"
    return _csv_rows(path) if path.is_file() else []


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """metrics.json of `run_dir`: the run's final figures (see the design notes for its keys)."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        if not (run_dir / "config.yaml").is_file():
            raise CnnlabError(
                f"{run_dir} has no metrics.json: not a run folder that cnnlab train wrote; give the folder of a "
                "run that cnnlab train finished"
            )
        raise CnnlabError(
            f"{run_dir} has no metrics.json: its training was interrupted before the test evaluation; finish it "
            f"with cnnlab train --resume {run_dir}"
        )
    try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict):
            raise ValueError("it holds no JSON object")
    except (OSError, ValueError) as e:  # ValueError: not JSON, or bytes that do not decode as text
        raise CnnlabError(
            f"cannot read {path} ({_reason(e)}); restore it, or train the run again (cnnlab evaluate {run_dir} "
            "scores its checkpoint anew, into eval-test.json)"
        ) from None
    return metrics
