"""Every built-in fine-tunes end to end on a small RTE slice and on STS-B (regression), and
changes training: runs are deterministic per seed, so a difference from vanilla is the
regularizer's doing. The more methods, whose own tests check them against their definitions, run
once each, on RTE."""

import math

import pytest

from regbench.harness import fine_tune
from regbench.plugins import build

# Strong enough settings that four steps show the regularizer's effect.
PARAMS = {"weight_decay": {"weight_decay": 1000.0}, "l2sp": {"alpha": 100.0}, "mixout": {},
          "smart": {}, "lnsr": {}}


@pytest.fixture(scope="module")
def vanilla_runs(rte_data, stsb_data, tiny_recipe):
    return {name: fine_tune(data, build("vanilla"), seed=0, recipe=tiny_recipe, progress=False)
            for name, data in (("rte", rte_data), ("stsb", stsb_data))}


@pytest.mark.parametrize("task", ["rte", "stsb"])
@pytest.mark.parametrize("name", list(PARAMS))
def test_trains_and_differs_from_vanilla(name, task, request, tiny_recipe, vanilla_runs):
    data = request.getfixturevalue(f"{task}_data")
    result = fine_tune(data, build(name, PARAMS[name]), seed=0, recipe=tiny_recipe,
                       progress=False)
    assert result.status == "finished" and result.steps == 4
    assert set(result.test) == set(vanilla_runs[task].test)
    assert all(math.isfinite(v) for v in [*result.validation.values(), *result.test.values()])
    if task == "stsb":  # a continuous metric: accuracy on 32 examples could tie by chance
        assert result.validation != pytest.approx(vanilla_runs[task].validation, rel=1e-4)


@pytest.mark.parametrize("name", ["rdrop", "reinit", "noisytune", "llrd", "childtuning_d",
                                  "recadam", "ema", "r3f", "sam", "freelb", "hype", "bss"])
def test_the_more_methods_train_end_to_end_with_their_defaults(name, rte_data, tiny_recipe):
    result = fine_tune(rte_data, build(name), seed=0, recipe=tiny_recipe, progress=False)
    assert result.status == "finished" and result.steps == 4
    assert rte_data.task.metric in result.test
    assert all(math.isfinite(v) for v in [*result.validation.values(), *result.test.values()])
