import math

import pytest

from regbench.metrics import compute_metrics
from regbench.tasks import get_task


def test_accuracy():
    assert compute_metrics(get_task("rte"), [0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 0.75}


def test_mrpc_is_the_mean_of_f1_and_accuracy():
    # tp=2, fp=1, fn=1: precision = recall = 2/3, so F1 = 2/3; accuracy 3/5.
    m = compute_metrics(get_task("mrpc"), [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(0.6)
    assert m["f1_accuracy"] == pytest.approx((2 / 3 + 0.6) / 2)


def test_cola_matthews_correlation():
    # tp=2, tn=1, fp=1, fn=0: (2·1 − 1·0) / sqrt(3·2·2·1)
    m = compute_metrics(get_task("cola"), [1, 1, 1, 0], [1, 1, 0, 0])
    assert m["mcc"] == pytest.approx(2 / math.sqrt(12))
    assert m["accuracy"] == pytest.approx(0.75)


def test_cola_constant_prediction_scores_zero():
    assert compute_metrics(get_task("cola"), [1, 1, 1], [1, 0, 1])["mcc"] == 0.0


def test_stsb_pearson_and_spearman():
    # Spearman is 1 for any monotone map; Pearson is not, for a non-linear one.
    m = compute_metrics(get_task("stsb"), [1.0, 2.0, 3.0, 10.0], [1.0, 2.0, 3.0, 4.0])
    assert m["spearman"] == pytest.approx(1.0)
    x, y = [1.0, 2.0, 3.0, 10.0], [1.0, 2.0, 3.0, 4.0]
    mx, my = sum(x) / 4, sum(y) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    pearson = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert m["pearson"] == pytest.approx(pearson)
    assert m["pearson_spearman"] == pytest.approx((pearson + 1) / 2)


def test_stsb_constant_prediction_has_no_correlation():
    assert compute_metrics(get_task("stsb"), [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"] == 0.0
