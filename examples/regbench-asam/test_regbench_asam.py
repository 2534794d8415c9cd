"""The ASAM plugin against its definition, on a two-layer BERT built in code: no data, no
download, a second or two. With the plugin installed, run `pytest` in this folder."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from regbench.harness import set_up, training_step
from regbench.plugins import build
from regbench.recipe import Recipe
from regbench.tasks import get_task

RECIPE = Recipe(learning_rate=1e-2, warmup_ratio=0.0, epochs=0, min_steps=10, precision="fp32")
HEAD = frozenset({"classifier.weight", "classifier.bias"})


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).train()


def _batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, 30, (4, 6), generator=generator),
            "attention_mask": torch.ones(4, 6, dtype=torch.long),
            "labels": torch.randint(0, 2, (4,), generator=generator)}


def test_the_perturbation_is_rho_t_squared_g_over_the_norm_of_tg_and_w_comes_back(model):
    asam = build("asam", {"rho": 0.5, "eta": 0.01})
    state = set_up(asam, model, get_task("rte"), HEAD, RECIPE)
    state.batch = batch = _batch(0)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = dict(zip(w, torch.autograd.grad(model(**batch).loss, list(model.parameters())),
                 strict=True))
    t = {n: w[n].abs() + 0.01 if "weight" in n else torch.ones_like(w[n]) for n in w}
    norm = torch.sqrt(sum((t[n] * g[n]).square().sum() for n in w))

    asam.before_forward(state)
    outputs = model(**batch)
    backward, reported = asam.loss(model, batch, outputs, outputs.loss)
    for n, p in model.named_parameters():  # the weights now stand at w + ε
        torch.testing.assert_close(p.detach(), w[n] + 0.5 * t[n] ** 2 * g[n] / norm)
    assert reported.item() == outputs.loss.item()  # L(w) is what the run reports
    backward.backward()
    asam.before_optimizer_step(state)
    assert all(torch.equal(p, w[n]) for n, p in model.named_parameters())


def test_without_adaptation_it_takes_the_built_in_sams_steps(model):
    twin, start = copy.deepcopy(model), copy.deepcopy(model)
    runs = [(build("asam", {"rho": 0.05, "adaptive": False}), model),
            (build("sam", {"rho": 0.05}), twin)]
    states = [set_up(plugin, network, get_task("rte"), HEAD, RECIPE) for plugin, network in runs]
    for step in range(3):
        for (plugin, _), state in zip(runs, states, strict=True):
            state.batch = _batch(step)
            training_step(state, plugin)
    for ours, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(model.classifier.weight, start.classifier.weight)  # they moved
