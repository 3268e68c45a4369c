"""The confusion matrix, and every classification figure derived from it.

Written by hand rather than with scikit-learn's `classification_report`: the engine accumulates one
confusion matrix on the device batch by batch, and every figure (per-class, macro, weighted, worst
class) comes from it without keeping predictions around. tests/test_metrics.py checks the results
against scikit-learn.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; rows are true classes, columns predictions."""
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


def classification_metrics(cm: torch.Tensor | Sequence[Sequence[int]], classes: Sequence[str], loss: float | None = None) -> dict[str, Any]:
    """accuracy, per-class precision/recall/f1/support, macro and weighted averages, worst class."""
    cm = torch.as_tensor(cm, dtype=torch.float64).cpu()
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix {tuple(cm.shape)} does not match {len(classes)} classes")
    tp = cm.diagonal()
    support = cm.sum(1)  # true count per class
    predicted = cm.sum(0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    total = cm.sum()
    weights = _safe_div(support, total.expand_as(support))
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    present = support > 0  # a class absent from this split has no recall to be worst at
    worst = int(torch.where(present, recall, torch.full_like(recall, 2.0)).argmin()) if bool(present.any()) else 0
    out: dict[str, Any] = {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "num_samples": int(total),
        "per_class": per_class,
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "weighted": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
        },
        "confusion_matrix": cm.long().tolist(),
        "worst_class": classes[worst],
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


def multilabel_confusion(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(A, 2, 2) int64 counts per attribute, [[tn, fp], [fn, tp]] (scikit-learn's multilabel_confusion_matrix)."""
    t = (targets > 0.5).long()
    p = preds.long()
    idx = t * 2 + p  # (B, A) in 0..3
    return torch.stack([torch.bincount(idx[:, a], minlength=4).view(2, 2) for a in range(idx.shape[1])])


def multilabel_metrics(cm: torch.Tensor | Sequence, attributes: Sequence[str], loss: float | None = None) -> dict[str, Any]:
    """The same keys as classification_metrics, per attribute: precision/recall/f1 of the positive
    label, support = positives, accuracy = the share of (image, attribute) pairs right; worst_class is
    the attribute with the lowest accuracy; confusion_matrix holds each attribute's [[tn, fp], [fn, tp]]."""
    cm = torch.as_tensor(cm, dtype=torch.float64).cpu()
    if cm.shape != (len(attributes), 2, 2):
        raise ValueError(f"multi-label confusion {tuple(cm.shape)} does not match {len(attributes)} attributes")
    tn, fp, fn, tp = cm[:, 0, 0], cm[:, 0, 1], cm[:, 1, 0], cm[:, 1, 1]
    n = cm[0].sum() if len(cm) else torch.tensor(0.0)
    support = tp + fn
    precision, recall = _safe_div(tp, tp + fp), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    acc = _safe_div(tp + tn, cm.sum((1, 2)))
    weights = _safe_div(support, support.sum().expand_as(support))
    out: dict[str, Any] = {
        "accuracy": float(acc.mean()) if len(acc) else 0.0,
        "num_samples": int(n),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i]), "accuracy": float(acc[i])}
            for i, name in enumerate(attributes)
        },
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "weighted": {"precision": float((precision * weights).sum()), "recall": float((recall * weights).sum()), "f1": float((f1 * weights).sum())},
        "confusion_matrix": cm.long().tolist(),
        "worst_class": attributes[int(acc.argmin())] if len(acc) else "",
        "multilabel": True,
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


def evaluation_metrics(cm: torch.Tensor, classes: Sequence[str], loss: float | None = None) -> dict[str, Any]:
    """classification_metrics for a (K, K) confusion matrix, multilabel_metrics for an (A, 2, 2) one."""
    return multilabel_metrics(cm, classes, loss) if cm.ndim == 3 else classification_metrics(cm, classes, loss)
