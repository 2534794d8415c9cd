"""llrd against its definition: after k scheduler steps each parameter learns at
base · decay^(L − l) times the recipe's linear schedule, l its depth; decay = 1 is vanilla; with
`top_layer: decayed`, the rates of Zhang et al.'s loop."""

from __future__ import annotations

import re

import pytest
from optuna.distributions import FloatDistribution

from regbench.harness import set_up
from regbench.modeling import load_model
from regbench.plugins import build
from regbench.recipe import Recipe
from regbench.registry.llrd import LLRD
from regbench.registry.vanilla import Vanilla
from regbench.tasks import get_task

RTE = get_task("rte")
LAYERS = 6  # MiniLM-L6
# 10 steps, 5 of them warmup.
RECIPE_VALUES = {"learning_rate": 0.1, "warmup_ratio": 0.5, "epochs": 0, "min_steps": 10}


def _depth(name: str) -> int:
    """l from the parameter's name: embeddings 0, `encoder.layer.i` i + 1, the rest the top."""
    if name.startswith("bert.embeddings."):
        return 0
    layer = re.match(r"bert\.encoder\.layer\.(\d+)\.", name)
    return int(layer.group(1)) + 1 if layer else LAYERS


def _linear_schedule(step: int, total: int = 10, warmup: int = 5) -> float:
    return step / warmup if step < warmup else (total - step) / (total - warmup)


def _state_after(regularizer, steps: int):
    model, head = load_model("minilm", RTE, seed=0)
    state = set_up(regularizer, model, RTE, head, Recipe(**RECIPE_VALUES))
    for _ in range(steps):  # no gradients: the optimiser's steps move nothing
        state.optimizer.step()
        state.scheduler.step()
    return state


@pytest.mark.parametrize("steps", [2, 7])
def test_each_parameter_learns_at_its_depths_rate_on_the_schedule(steps):
    state = _state_after(LLRD(decay=0.8), steps)
    rate_of = {}
    for group in state.optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in rate_of  # in one group only
            rate_of[id(p)] = group["lr"]
    trainable = [(n, p) for n, p in state.model.named_parameters() if p.requires_grad]
    assert len(rate_of) == len(trainable)  # and every parameter in one
    for name, p in trainable:
        expected = 0.1 * 0.8 ** (LAYERS - _depth(name)) * _linear_schedule(steps)
        assert rate_of[id(p)] == pytest.approx(expected, rel=1e-12), name
    assert {_depth(n) for n, _ in trainable} == set(range(LAYERS + 1))
    assert all(group["weight_decay"] == 0.0 for group in state.optimizer.param_groups)


@pytest.mark.parametrize("steps", [0, 3, 8])
def test_decay_one_gives_every_parameter_vanillas_rate(steps):
    vanilla = _state_after(Vanilla(), steps).lrs
    assert len(vanilla) == 1
    assert _state_after(LLRD(decay=1.0), steps).lrs == [vanilla[0]] * (LAYERS + 1)


def test_frozen_parameters_stay_out_of_the_optimiser():
    model, head = load_model("minilm", RTE, seed=0)
    model.bert.embeddings.requires_grad_(False)
    state = set_up(LLRD(), model, RTE, head)
    optimised = {id(p) for group in state.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    # No empty group for the embeddings; the recipe's default rate at the top.
    assert [group["initial_lr"] for group in state.optimizer.param_groups] == pytest.approx(
        [2e-5 * 0.95 ** (LAYERS - depth) for depth in range(1, LAYERS + 1)], rel=1e-12)


def test_top_layer_decayed_gives_zhang_et_als_rates():
    """Their loop: the pooler and classifier at the base rate, then, from the top layer down to
    the embeddings, the rate multiplied by decay before each."""
    state = _state_after(LLRD(decay=0.8, top_layer="decayed"), 2)
    base = 0.1 * _linear_schedule(2)
    rate, expected = base, {}
    for depth in range(LAYERS, -1, -1):
        rate *= 0.8
        expected[depth] = rate
    rate_of = {id(p): group["lr"] for group in state.optimizer.param_groups
               for p in group["params"]}
    for name, p in state.model.named_parameters():
        top = not name.startswith(("bert.embeddings.", "bert.encoder."))  # pooler, classifier
        assert rate_of[id(p)] == pytest.approx(base if top else expected[_depth(name)],
                                               rel=1e-12), name
    # One power of decay below the default's form at every encoder depth.
    default = _state_after(LLRD(decay=0.8), 2)
    assert [g["lr"] for g in state.optimizer.param_groups][:LAYERS + 1] == pytest.approx(
        [0.8 * g["lr"] for g in default.optimizer.param_groups][:LAYERS + 1], rel=1e-12)


def test_registration_defaults_and_search_space():
    regularizer = build("llrd")
    assert type(regularizer) is LLRD
    assert regularizer.params == {"decay": 0.95, "top_layer": "base"}
    assert regularizer.extra_passes() == 0.0 and regularizer.setup_passes() == 0.0
    assert LLRD.search_space(6) == {"decay": FloatDistribution(0.5, 1.0)}
