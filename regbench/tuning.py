"""Optuna's side of a suite: studies, samplers, pruners, and a plugin's search space as trials."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from regbench.suite import Tuning


def make_pruner(tuning: Tuning, max_resource: int) -> optuna.pruners.BasePruner:
    if tuning.pruner == "median":
        # Two trials must finish before any is judged; the first evaluation never is.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if tuning.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource)
    return optuna.pruners.NopPruner()


def open_study(storage: str, name: str, tuning: Tuning, max_resource: int,
               first_params: dict[str, Any]) -> optuna.Study:
    """The study of one (regularizer, task, size), created on first use; its first trial is the
    plugin's defaults, so tuning can only improve on them."""
    study = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=tuning.sampler_seed),
        pruner=make_pruner(tuning, max_resource))
    if not study.trials and first_params:
        study.enqueue_trial(first_params)
    return study


def suggest(trial: optuna.Trial, space: dict[str, BaseDistribution]) -> dict[str, Any]:
    values = {}
    for name, dist in space.items():
        if isinstance(dist, FloatDistribution):
            values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log,
                                               step=dist.step)
        elif isinstance(dist, IntDistribution):
            values[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log,
                                             step=dist.step)
        elif isinstance(dist, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, dist.choices)
        else:
            raise TypeError(f"search space entry {name!r}: unsupported {type(dist).__name__}")
    return values


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
