"""Hand-made boards: runs as the suite runner stores them, with known scores, for the tests of
the board, its markdown, its web page and its tuning budget."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from regbench.store import Store

# The test references the runner stores with each run (regbench.metrics.test_reference). A run
# fails at or below the majority class's accuracy: RTE's 0.527; CoLA's 0.69, its MCC 0.
REFERENCES = {
    "rte": {"test_size": 139, "label_counts": [73, 66], "constant_prediction": 0,
            "constant_scores": {"accuracy": 0.527}},
    "cola": {"test_size": 522, "label_counts": [161, 361], "constant_prediction": 1,
             "constant_scores": {"mcc": 0.0, "accuracy": 0.69}},
    "mrpc": {"test_size": 204, "label_counts": [68, 136], "constant_prediction": 1,
             "constant_scores": {"f1_accuracy": 0.75, "f1": 0.8, "accuracy": 0.7}},
    "stsb": {"test_size": 750, "label_counts": None, "constant_prediction": 2.7,
             "constant_scores": {"pearson_spearman": 0.0, "pearson": 0.0, "spearman": 0.0}},
}
# The primary score at or below which a run fails, by the construction of `measured` below.
FAILS_AT = {"rte": 0.527, "cola": 0.0}
META = {"suite": "handmade", "model": "minilm", "recipe": {"learning_rate": 2e-5}}
PARAMS = {"vanilla": {}, "l2sp": {"alpha": 0.001}, "mixout": {"p": 0.1}}
SECONDS = {"vanilla": 10.0, "l2sp": 12.0, "mixout": 20.0}  # per 100 training examples
# (task, N) -> regularizer -> test score of seeds 0..4. RTE fails at or below 0.527, CoLA at 0.
SCORES = {
    ("rte", 100): {"vanilla": [0.60, 0.62, 0.50, 0.64, 0.58],
                   "l2sp": [0.63, 0.66, 0.61, 0.65, 0.62],
                   "mixout": [0.61, 0.60, 0.59, 0.70, 0.55]},
    ("rte", 1000): {"vanilla": [0.66, 0.68, 0.67, 0.65, 0.69],
                    "l2sp": [0.67, 0.70, 0.52, 0.69, 0.68],
                    "mixout": [0.70, 0.71, 0.69, 0.72, 0.70]},
    ("cola", 100): {"vanilla": [0.10, 0.00, 0.20, 0.15, -0.05],
                    "l2sp": [0.20, 0.25, 0.22, 0.18, 0.24],
                    "mixout": [0.05, 0.30, 0.28, 0.00, 0.26]},
    # The same spread around two means without failures: their stability ranks tie.
    ("cola", 1000): {"vanilla": [-0.02, 0.00, 0.02, 0.04, 0.06],
                     "l2sp": [0.40, 0.42, 0.44, 0.46, 0.48],
                     "mixout": [0.30, 0.32, 0.34, 0.36, 0.38]},
}
PROVENANCE = {"regbench": "0.1.0", "torch": "2.13.0", "transformers": "5.0",
              "python": "3.11.7", "git_commit": "abc1234", "device": "cpu", "bf16": True,
              "cpu": "Test CPU 9000", "gpu": None, "distribution": "regbench 0.1.0"}


def measured(task: str, score: float) -> dict:
    """A run's test metrics for its primary `score`. CoLA's accuracy is made to beat the
    majority's (by 0.05) exactly when the MCC is above 0, so that failures are the runs at or
    below 0 and a vanilla failing two seeds of five still learns; STS-B's correlations are the
    score."""
    if task == "cola":
        return {"mcc": score, "accuracy": 0.69 + 0.05 * (score > 0)}
    if task == "mrpc":
        return {"f1_accuracy": score, "f1": score, "accuracy": score}
    if task == "stsb":
        return {"pearson_spearman": score, "pearson": score, "spearman": score}
    return {"accuracy": score}


def run(regularizer: str, task: str, n: int, seed: int, score: float | None,
        status: str = "finished", phase: str = "final", **extra) -> dict:
    """One row of the runs table, as the suite runner writes it."""
    return {"key": f"{phase}-{regularizer}-{task}-{n}-{seed}-{score}", "suite": "handmade",
            "phase": phase, "trial": None, "regularizer": regularizer,
            "regularizer_version": "1", "params": PARAMS.get(regularizer, {}), "task": task,
            "n_train": n, "data_seed": 0, "seed": seed, "model": "minilm", "recipe": {},
            "status": status, "validation": {},
            "test": {} if score is None else measured(task, score),
            "validation_score": score, "test_score": score, "steps": 100,
            "seconds": SECONDS.get(regularizer, 1.0) * n / 100, "peak_memory_mb": 800.0,
            "error": None, "provenance": PROVENANCE, "test_reference": REFERENCES[task],
            **extra}


def frame_of(rows: list[dict], tmp_path: Path) -> pd.DataFrame:
    """The rows written to, and read back from, a real store."""
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    for row in rows:
        store.put(row)
    return store.frame("handmade")


def handmade_rows(scores: dict = SCORES) -> list[dict]:
    return [run(reg, task, n, seed, score) for (task, n), by_reg in scores.items()
            for reg, seeds in by_reg.items() for seed, score in enumerate(seeds)]


def expected_of(scores: dict = SCORES, seeds: int = 5) -> pd.DataFrame:
    return pd.DataFrame([{"regularizer": reg, "task": task, "n_train": n, "seed": seed}
                         for (task, n), by_reg in scores.items() for reg in by_reg
                         for seed in range(seeds)])


def noise_measured(summary: float, depth: int = 2, parts: tuple = ("table", "distance")) -> dict:
    """A run's noise-stability measure whose every relative change is `summary` and every distance
    ten times that (row i, layers above i); `parts` are the tables it has (older runs lack the
    distance, or both)."""
    def table(value: float) -> list:
        return [[value if k > i else None for k in range(1, depth + 1)] for i in range(depth)]

    found = {"table": table(summary), "distance": table(10 * summary)}
    return {"summary": summary, **{part: found[part] for part in parts},
            "settings": {"scale": 0.05, "draws": 2, "examples": 32, "seed": 0}}
