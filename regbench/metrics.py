"""GLUE metrics, computed by scikit-learn and SciPy."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from regbench.tasks import Task


def _correlation(fn, predictions, references) -> float:
    # A constant prediction has no correlation (SciPy returns NaN); it is as bad as no signal.
    if np.ptp(predictions) == 0 or np.ptp(references) == 0:
        return 0.0
    return float(fn(predictions, references)[0])


METRICS = {
    "accuracy": lambda p, r: float(accuracy_score(r, p)),
    "f1": lambda p, r: float(f1_score(r, p)),
    "mcc": lambda p, r: float(matthews_corrcoef(r, p)),
    "pearson": lambda p, r: _correlation(pearsonr, p, r),
    "spearman": lambda p, r: _correlation(spearmanr, p, r),
}
# GLUE reports the mean of two metrics for MRPC, QQP and STS-B.
METRICS["f1_accuracy"] = lambda p, r: (METRICS["f1"](p, r) + METRICS["accuracy"](p, r)) / 2
METRICS["pearson_spearman"] = lambda p, r: (
    METRICS["pearson"](p, r) + METRICS["spearman"](p, r)) / 2


def predictions_from_logits(task: Task, logits: np.ndarray) -> np.ndarray:
    return logits[:, 0] if task.is_regression else logits.argmax(axis=-1)


def compute_metrics(task: Task, predictions, references) -> dict[str, float]:
    """The task's primary metric under its own name, then its extra metrics."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    return {name: METRICS[name](predictions, references)
            for name in (task.metric, *task.extra_metrics)}


def test_reference(task: Task, train_labels, test_labels) -> dict[str, Any]:
    """What the leaderboard judges a run's test scores against, stored with the run: the test
    half's size and label counts, and the scores of the constant predictor (the most frequent
    training label, or the mean training score for regression) on it. A classification run fails
    at or below its accuracy; a regression run's correlation is tested at the half's size."""
    train, test = np.asarray(train_labels), np.asarray(test_labels)
    if task.is_regression:
        constant, counts = float(train.mean()), None
    else:
        constant = int(np.bincount(train.astype(int)).argmax())
        counts = np.bincount(test.astype(int), minlength=task.num_labels).tolist()
    scores = compute_metrics(task, np.full(len(test), constant), test)
    if not task.is_regression:
        scores["accuracy"] = METRICS["accuracy"](np.full(len(test), constant), test)
    return {"test_size": len(test), "label_counts": counts, "constant_prediction": constant,
            "constant_scores": scores}
