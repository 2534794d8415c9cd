"""The sampler a tuning budget gets: TPE only where its random start-up is at most half the
trials, random search from one scrambled Sobol sequence below that."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution

from regbench.suite import TPE_MIN_TRIALS, TPE_STARTUP, Tuning
from regbench.tuning import make_sampler, start_trial

SPACE = {"x": FloatDistribution(0.0, 1.0)}


@pytest.mark.parametrize("trials", range(1, 61))
def test_tpe_gets_budgets_of_twice_its_start_up_and_random_search_the_rest(trials):
    tuning = Tuning(trials=trials)
    sampler = make_sampler(tuning, slot=3)
    if trials < TPE_MIN_TRIALS:
        assert tuning.sampler()["sampler"] == "qmc"
        assert isinstance(sampler, optuna.samplers.QMCSampler)
    else:
        assert isinstance(sampler, optuna.samplers.TPESampler)
        assert sampler._n_startup_trials == TPE_STARTUP <= trials / 2


def _study(trials: int) -> list[float]:
    """One worker's study of `trials` trials over x in [0, 1), the defaults (x = 0.5) first,
    each slot drawn by its own sampler as the runner draws them; the values of x."""
    tuning = Tuning(trials=trials, pruner="none", sampler_seed=7)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for slot in range(trials):
        trial = start_trial(study, slot, {"x": 0.5}, tuning)
        x = trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, -abs(x - 0.3))
    return [t.params["x"] for t in study.trials]


def test_random_search_spreads_its_trials_as_one_sobol_sequence():
    """Seven Sobol points after the defaults fall in seven different eighths of the range, where
    seven independent draws do so about twice in a hundred; and the study draws them again."""
    xs = _study(8)
    assert xs[0] == 0.5 and len(set(xs)) == 8
    assert len({int(x * 8) for x in xs[1:]}) == 7
    assert _study(8) == xs


def test_a_random_search_trial_is_its_slots_whatever_ran_before():
    """Workers that sample at once cannot draw one point twice: a slot's point does not depend
    on what the study drew before it."""
    tuning = Tuning(trials=8, pruner="none", sampler_seed=7)
    xs = _study(8)
    study = optuna.create_study(direction="maximize")
    for slot in (0, 5, 2):
        trial = start_trial(study, slot, {"x": 0.5}, tuning)
        study.tell(trial, -abs(trial.suggest_float("x", 0.0, 1.0) - 0.3))
    assert [t.params["x"] for t in study.trials] == [xs[0], xs[5], xs[2]]
