import pytest
import torch

from cnnlab.metrics import classification_metrics, confusion_matrix

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_scikit_learn(seed):
    g = torch.Generator().manual_seed(seed)
    k = 5
    y = torch.randint(0, k, (400,), generator=g)
    p = torch.where(torch.rand(400, generator=g) < 0.6, y, torch.randint(0, k, (400,), generator=g))
    p[p == 4] = 3  # class 4 is never predicted: precision 0 by scikit-learn's zero_division=0
    names = [f"c{i}" for i in range(k)]
    m = classification_metrics(confusion_matrix(p, y, k), names, loss=1.5)

    assert m["confusion_matrix"] == sklearn_metrics.confusion_matrix(y, p, labels=range(k)).tolist()
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, p))
    prec, rec, f1, sup = sklearn_metrics.precision_recall_fscore_support(y, p, labels=range(k), zero_division=0)
    for i, name in enumerate(names):
        assert m["per_class"][name] == pytest.approx(
            {"precision": prec[i], "recall": rec[i], "f1": f1[i], "support": sup[i]}
        )
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = sklearn_metrics.precision_recall_fscore_support(
            y, p, labels=range(k), average=avg, zero_division=0
        )
        assert m[avg] == pytest.approx({"precision": ap, "recall": ar, "f1": af})
    assert m["worst_class"] == names[int(rec.argmin())]
    assert m["num_samples"] == 400 and m["loss"] == 1.5


def test_worst_class_ignores_classes_absent_from_the_split():
    cm = [[5, 0, 0], [1, 3, 0], [0, 0, 0]]  # class c is absent: recall 0 by convention, but not "worst"
    assert classification_metrics(cm, ["a", "b", "c"])["worst_class"] == "b"


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        classification_metrics([[1, 0], [0, 1]], ["a", "b", "c"])


@pytest.mark.parametrize("seed", [0, 1])
def test_every_figure_from_random_predictions_over_an_odd_class_count_equals_scikit_learn(seed):
    """7 classes, random scores: confusion matrix, per-class and averaged P/R/F1, balanced accuracy and
    top-k accuracy equal scikit-learn's within 1e-9."""
    from cnnlab.metrics import prediction_metrics

    g = torch.Generator().manual_seed(seed)
    k, n = 7, 1001
    y = torch.randint(0, k, (n,), generator=g)
    probs = torch.rand(n, k, generator=g).double()
    probs = probs / probs.sum(1, keepdim=True)
    names = [f"class {i}" for i in range(k)]
    m = prediction_metrics(probs, y, names)
    pred = probs.argmax(1)
    assert m["confusion_matrix"] == sklearn_metrics.confusion_matrix(y, pred, labels=range(k)).tolist()
    prec, rec, f1, sup = sklearn_metrics.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    for i, name in enumerate(names):
        got = m["per_class"][name]
        assert (
            abs(got["precision"] - prec[i]) <= 1e-9
            and abs(got["recall"] - rec[i]) <= 1e-9
            and abs(got["f1"] - f1[i]) <= 1e-9
        )
        assert got["support"] == sup[i]
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = sklearn_metrics.precision_recall_fscore_support(
            y, pred, labels=range(k), average=avg, zero_division=0
        )
        assert (
            abs(m[avg]["precision"] - ap) <= 1e-9
            and abs(m[avg]["recall"] - ar) <= 1e-9
            and abs(m[avg]["f1"] - af) <= 1e-9
        )
    assert abs(m["accuracy"] - sklearn_metrics.accuracy_score(y, pred)) <= 1e-9
    assert abs(m["balanced_accuracy"] - sklearn_metrics.balanced_accuracy_score(y, pred)) <= 1e-9
    for key, value in m["top_k_accuracy"].items():
        assert abs(value - sklearn_metrics.top_k_accuracy_score(y, probs.numpy(), k=int(key), labels=range(k))) <= 1e-9
    assert set(m["top_k_accuracy"]) == {"1", "2", "3", "5"}


def test_roc_auc_and_threshold_for_a_binary_task_equal_scikit_learn():
    from cnnlab.metrics import prediction_metrics, roc_auc

    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 2, (500,), generator=g)
    score = (torch.rand(500, generator=g) * 0.6 + 0.4 * y).round(decimals=2)  # informative, with many ties
    m = prediction_metrics(torch.stack([1 - score, score], 1), y, ["no", "yes"])
    assert abs(m["roc_auc"] - sklearn_metrics.roc_auc_score(y, score)) <= 1e-9
    assert m["threshold"] == 0.5
    assert m["confusion_matrix"] == sklearn_metrics.confusion_matrix(y, (score > 0.5).long()).tolist()
    assert roc_auc(score, torch.zeros(500)) is None  # one class only: undefined


def test_balanced_accuracy_ignores_absent_classes_as_scikit_learn_does():
    y = torch.tensor([0, 0, 1, 1, 1])
    p = torch.tensor([0, 2, 1, 1, 0])
    m = classification_metrics(confusion_matrix(p, y, 3), ["a", "b", "c"])
    assert abs(m["balanced_accuracy"] - sklearn_metrics.balanced_accuracy_score(y, p)) <= 1e-9
