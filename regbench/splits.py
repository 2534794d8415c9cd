"""The protocol's splits: a stratified training subset of N examples per data seed, and the dev set
cut once into a validation half (tuning, early decisions) and a test half (the leaderboard)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from regbench.tasks import Task

DEV_SPLIT_SEED = 20200101  # fixed for ever: every run of every regularizer sees the same halves
STSB_BINS = 5  # STS-B scores in [0, 5] are stratified by whole points


def strata(task: Task, labels) -> np.ndarray:
    labels = np.asarray(labels)
    if task.is_regression:
        return np.clip(np.floor(labels), 0, STSB_BINS - 1).astype(int)
    return labels.astype(int)


def subsample(task: Task, labels, n: int, data_seed: int) -> np.ndarray:
    """Sorted indices of a stratified subset of `n` examples; all of them when n covers the set."""
    everything = np.arange(len(labels))
    if n >= len(labels):
        return everything
    groups = strata(task, labels)
    counts = np.unique(groups, return_counts=True)[1]
    # Stratifying needs each stratum twice, and room for every stratum in the subset and in the
    # rest; a subset too small or too close to the whole is drawn plainly.
    feasible = counts.min() >= 2 and min(n, len(labels) - n) >= len(counts)
    stratify = groups if feasible else None
    chosen, _ = train_test_split(everything, train_size=n, stratify=stratify,
                                 random_state=data_seed)
    return np.sort(chosen)


def split_dev(task: Task, labels) -> tuple[np.ndarray, np.ndarray]:
    """(validation, test) indices: two stratified, disjoint halves of the dev set."""
    validation, test = train_test_split(np.arange(len(labels)), test_size=0.5,
                                        stratify=strata(task, labels),
                                        random_state=DEV_SPLIT_SEED)
    return np.sort(validation), np.sort(test)
