"""The confusion matrix, and every classification figure derived from it.

Written by hand rather than with scikit-learn's `classification_report`: the engine accumulates one
confusion matrix on the device batch by batch, and every figure (per-class, macro, weighted, worst
class) comes from it without keeping predictions around. tests/test_metrics.py checks the results
against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; rows are true classes, columns predictions."""
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


def classification_metrics(
    cm: torch.Tensor | Sequence[Sequence[int]], classes: Sequence[str], loss: float | None = None
) -> dict[str, Any]:
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
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    present = support > 0  # a class absent from this split has no recall to be worst at
    worst = int(torch.where(present, recall, torch.full_like(recall, 2.0)).argmin()) if bool(present.any()) else 0
    out: dict[str, Any] = {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        # the mean per-class recall over the classes present (scikit-learn's balanced accuracy; the
        # KTH report's "average top-1 recall")
        "balanced_accuracy": float(recall[present].mean()) if bool(present.any()) else 0.0,
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


def multilabel_metrics(
    cm: torch.Tensor | Sequence, attributes: Sequence[str], loss: float | None = None
) -> dict[str, Any]:
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
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "accuracy": float(acc[i]),
            }
            for i, name in enumerate(attributes)
        },
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "weighted": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
        },
        "confusion_matrix": cm.long().tolist(),
        "worst_class": attributes[int(acc.argmin())] if len(acc) else "",
        "multilabel": True,
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


def top_k_accuracy(probs: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 2, 3, 5)) -> dict[str, float]:
    """{"k": share of samples whose true class is among the k highest scores}, for each k below the class count."""
    n, num_classes = probs.shape
    ks = [k for k in ks if k < num_classes or k == 1]
    if not ks or n == 0:
        return {}
    top = probs.topk(max(ks), dim=1).indices  # (N, kmax)
    hit = top == targets.view(-1, 1)
    return {str(k): float(hit[:, :k].any(1).double().mean()) for k in ks}


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """Area under the ROC curve of `scores` for the 0/1 `positive` labels, by the rank statistic
    (Mann-Whitney U, ties counted half), which equals the trapezoid area under the curve. None if one
    class is missing."""
    scores, positive = scores.double().flatten(), positive.flatten().bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ranks = (counts.cumsum(0) - (counts - 1) / 2.0).double()  # the average 1-based rank of each distinct value
    rank_sum = float(ranks[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def prediction_metrics(
    probs: torch.Tensor,
    targets: torch.Tensor,
    classes: Sequence[str],
    loss: float | None = None,
    threshold: float = 0.5,
    scores: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Every figure for single-label predictions: classification_metrics of the argmax's confusion
    matrix, plus top-k accuracy and, for two classes, the ROC-AUC of the positive class's score and
    the threshold the predictions use. `scores` (logits, same shape) rank the classes for top-k and
    ROC-AUC where given: float32 probabilities saturate at 1.0 and would tie."""
    probs, targets = probs.float().cpu(), targets.long().cpu()
    k = len(classes)
    if k == 2:
        pred = (probs[:, 1] > threshold).long()
    else:
        pred = probs.argmax(1)
    out = classification_metrics(confusion_matrix(pred, targets, k), classes, loss)
    ranking = scores.float().cpu() if scores is not None else probs
    out["top_k_accuracy"] = top_k_accuracy(ranking, targets)
    if k == 2:
        out["roc_auc"] = roc_auc(ranking[:, 1] - ranking[:, 0] if scores is not None else probs[:, 1], targets == 1)
        out["threshold"] = threshold
    return out
