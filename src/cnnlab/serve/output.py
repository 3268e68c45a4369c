"""`cnnlab predict`'s output: an aligned table, CSV (one row per image, the top k as column pairs) or JSON."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from cnnlab.run_folder import json_text
from cnnlab.serve.predictor import Classifier, Prediction


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def as_table(preds: Sequence[Prediction]) -> str:
    if not preds:
        return ""
    k = max(len(p.top) for p in preds)
    rows = [
        (
            p.source,
            p.label,
            _pct(p.probability),
            ", ".join(f"{c} {_pct(v)}" for c, v in p.top[1:]) + (" (resized)" if p.resized else ""),
        )
        for p in preds
    ]
    header = ("file", "class", "probability", f"next {k - 1}" if k > 1 else "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip() for r in [header, *rows]]
    return "\n".join(lines) + "\n"


def as_csv(preds: Sequence[Prediction]) -> str:
    k = max((len(p.top) for p in preds), default=1)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["file", "label", *(f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "probability")), "resized"]
    )
    for p in preds:
        cells = [x for c, v in p.top for x in (c, f"{v:.6f}")]
        w.writerow([p.source, p.label, *cells, *[""] * (2 * k - len(cells)), int(p.resized)])
    return buf.getvalue()


def as_json(preds: Sequence[Prediction], skipped: Sequence[tuple[str, str]], clf: Classifier) -> str:
    doc: dict[str, Any] = {
        "checkpoint": str(clf.run.checkpoint),
        "model": clf.name,
        "tta": clf.tta,
        "predictions": [p.to_dict() for p in preds],
        "skipped": [{"file": f, "reason": r} for f, r in skipped],
    }
    return json_text(doc)


def format_predictions(
    fmt: str, preds: Sequence[Prediction], skipped: Sequence[tuple[str, str]], clf: Classifier
) -> str:
    """The predictions in `fmt` (table | csv | json). Only JSON holds the skipped files; the other
    formats leave them to the caller (cnnlab predict lists them on stderr)."""
    if fmt == "json":
        return as_json(preds, skipped, clf)
    return as_csv(preds) if fmt == "csv" else as_table(preds)
