"""ema: the evaluated weights against an independent average of the recorded weights, the
training weights restored exactly, and a run's test scores those of the average."""

from __future__ import annotations

import torch
from optuna.distributions import FloatDistribution

from regbench.harness import evaluate, fine_tune, set_up, training_step
from regbench.modeling import load_tokenizer
from regbench.plugins import build
from regbench.recipe import Recipe
from regbench.registry.ema import EMA, averaged_tensors
from regbench.tasks import get_task


def test_evaluation_sees_the_average_of_the_recorded_weights_and_training_resumes(minilm,
                                                                                  rte_data):
    model, head = minilm
    recipe = Recipe(learning_rate=1e-3, warmup_ratio=0.0, epochs=0, min_steps=10)
    regularizer = EMA(beta=0.8)
    state = set_up(regularizer, model, get_task("rte"), head, recipe)
    expected = {n: p.detach().double() for n, p in model.named_parameters()}  # θ̄ = θ⁰
    for i in range(3):
        state.batch = rte_data.train.collate(list(range(8 * i, 8 * i + 8)), pad_id=0)
        training_step(state, regularizer)
        for n, p in model.named_parameters():
            expected[n] = 0.8 * expected[n] + 0.2 * p.detach().double()
    last = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    regularizer.before_evaluate(state)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), expected[n], rtol=1e-6, atol=1e-8)
    assert not torch.equal(model.classifier.weight, last["classifier.weight"])
    regularizer.after_evaluate(state)
    assert all(torch.equal(p, last[n]) for n, p in model.named_parameters())
    # BERT's buffers are integer ids: constants, never averaged.
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


def test_the_average_covers_parameters_and_floating_point_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    covered = {id(t) for t in averaged_tensors(model)}
    named = dict(model.named_parameters()) | dict(model.named_buffers())
    assert {n for n, t in named.items() if id(t) in covered} == {
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"}


def test_a_runs_scores_are_those_of_the_averaged_weights(stsb_data, tiny_recipe):
    regularizer = EMA(beta=0.5)
    result = fine_tune(stsb_data, regularizer, seed=0, recipe=tiny_recipe, progress=False)
    state = regularizer.state
    pad = load_tokenizer("minilm").pad_token_id

    def scores():
        return evaluate(state.model, stsb_data.test, stsb_data.task, pad,
                        tiny_recipe.eval_batch_size, state.device, state.bf16)

    last = scores()  # the run leaves the training weights in the model
    regularizer.before_evaluate(state)
    assert result.test == scores()
    assert result.test != last


def test_registration_defaults_and_search_space():
    assert type(build("ema")) is EMA
    assert EMA.defaults == {"beta": 0.99}
    assert EMA.search_space(6) == {"beta": FloatDistribution(0.9, 0.995)}
    assert build("ema").extra_passes() == 0 and build("ema").setup_passes() == 0
