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
        assert m["per_class"][name] == pytest.approx({"precision": prec[i], "recall": rec[i], "f1": f1[i], "support": sup[i]})
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = sklearn_metrics.precision_recall_fscore_support(y, p, labels=range(k), average=avg, zero_division=0)
        assert m[avg] == pytest.approx({"precision": ap, "recall": ar, "f1": af})
    assert m["worst_class"] == names[int(rec.argmin())]
    assert m["num_samples"] == 400 and m["loss"] == 1.5


def test_worst_class_ignores_classes_absent_from_the_split():
    cm = [[5, 0, 0], [1, 3, 0], [0, 0, 0]]  # class c is absent: recall 0 by convention, but not "worst"
    assert classification_metrics(cm, ["a", "b", "c"])["worst_class"] == "b"


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        classification_metrics([[1, 0], [0, 1]], ["a", "b", "c"])
