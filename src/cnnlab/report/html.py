"""One self-contained HTML page per run: every figure embedded as a data: URI, no other file needed."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CSS = (
    "\n"
    "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:24px "
    "auto;padding:0 16px;color:#1d2330}\n"
    "h1{font-size:1.6em;margin-bottom:4px} h2{margin-top:36px;border-bottom:1px solid #dde;padding-bottom:4px}\n"
    ".sub{color:#667;margin-top:0} table{border-collapse:collapse;margin:8px 0;font-size:0.9em}\n"
    "td,th{border:1px solid #dde;padding:3px 9px;text-align:right} th{background:#f3f5fa} "
    "td:first-child,th:first-child{text-align:left}\n"
    "tr.worst td{background:#fde8e8} img{max-width:100%;border:1px solid #eee;margin:6px 0}\n"
    ".cards{display:flex;flex-wrap:wrap;gap:12px} .card{background:#f6f8fc;border:1px solid "
    "#e1e6f0;border-radius:8px;padding:10px 16px;min-width:150px}\n"
    ".card b{display:block;font-size:1.35em} "
    "pre{background:#f6f8fc;padding:10px;overflow-x:auto;font-size:0.85em}\n"
    "nav a{margin-right:12px}\n"
)


def image_tag(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return f"<p><em>{html.escape(alt)}: not available for this run.</em></p>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for row, cls in zip(rows, list(classes) + [""] * len(rows)):
        out.append(f'<tr class="{cls}">' + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>")
    return "\n".join(out) + "</table>"


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def render(title: str, subtitle: str, cards: list[tuple[str, str]], sections: list[tuple[str, str, str]]) -> str:
    """The page: a title, figure cards, then (anchor, heading, body html) sections with a nav bar."""
    nav = " ".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in sections)
    body = "\n".join(f'<h2 id="{a}">{html.escape(h)}</h2>\n{b}' for a, h, b in sections)
    card_html = "".join(f"<div class='card'>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in cards)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p class='sub'>{html.escape(subtitle)}</p><nav>{nav}</nav>"
        f"<div class='cards'>{card_html}</div>\n{body}\n</body></html>\n"
    )


def metrics_tables(m: dict[str, Any], classes: Sequence[str]) -> str:
    """The per-class table (worst class highlighted) and the averages."""
    multilabel = bool(m.get("multilabel"))
    header = ["attribute" if multilabel else "class", "precision", "recall", "f1", "support"] + (
        ["accuracy"] if multilabel else []
    )
    rows, marks = [], []
    for c in classes:
        pc = m["per_class"][c]
        rows.append(
            [c, f"{pc['precision']:.4f}", f"{pc['recall']:.4f}", f"{pc['f1']:.4f}", pc["support"]]
            + ([f"{pc['accuracy']:.4f}"] if multilabel else [])
        )
        marks.append("worst" if c == m["worst_class"] else "")
    avg = [
        [name, f"{m[name]['precision']:.4f}", f"{m[name]['recall']:.4f}", f"{m[name]['f1']:.4f}"]
        for name in ("macro", "weighted")
    ]
    extra = [["accuracy", pct(m["accuracy"])], ["loss", f"{m['loss']:.4f}"]]
    if "balanced_accuracy" in m:
        extra.append(["mean per-class recall (balanced accuracy)", pct(m["balanced_accuracy"])])
    for k, v in (m.get("top_k_accuracy") or {}).items():
        extra.append([f"top-{k} accuracy", pct(v)])
    if m.get("roc_auc") is not None:
        extra.append(["ROC-AUC", f"{m['roc_auc']:.4f}"])
        extra.append(["decision threshold", f"{m['threshold']}"])
    return (
        table(header, rows, marks)
        + table(["average", "precision", "recall", "f1"], avg)
        + table(["figure", "value"], extra)
    )


__all__ = ["image_tag", "metrics_tables", "pct", "render", "table"]
