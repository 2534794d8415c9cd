"""The SWA plugin against its definition, on a two-layer BERT built in code: no data, no
download, a second or two. With the plugin installed, run `pytest` in this folder."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from regbench.harness import set_up, training_step
from regbench.plugins import build
from regbench.recipe import Recipe
from regbench.tasks import get_task

LR = 1e-2


@pytest.fixture
def run():
    """SWA over the second half of 12 steps, cyclic, three steps a cycle, bound to a tiny BERT
    by `set_up`, as the harness binds it: the state, the optimiser and the schedule are real."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config).train()
    swa = build("swa", {"swa_start": 0.5, "swa_lr": 0.2, "lr_schedule": "cyclic", "c": 3})
    recipe = Recipe(learning_rate=LR, warmup_ratio=0.0, epochs=0, min_steps=12)
    head = frozenset({"classifier.weight", "classifier.bias"})
    return swa, set_up(swa, model, get_task("rte"), head, recipe)


def test_the_rate_decays_then_cycles_from_the_peak_down_to_the_swa_rate(run):
    swa, state = run
    rates = []
    for _ in range(12):
        rates.append(state.lrs[0])
        state.optimizer.step()  # no gradients: nothing moves, the schedule advances
        state.scheduler.step()
    recipe = [LR * (12 - s) / 12 for s in range(6)]  # no warmup: linear decay from the peak
    cycle = [LR * ((1 - tau) + tau * 0.2) for tau in (1 / 3, 2 / 3, 1)]
    assert rates == pytest.approx(recipe + cycle + cycle)


def test_evaluation_sees_the_mean_of_the_weights_at_swa_start_and_each_cycles_end(run):
    swa, state = run
    model = state.model
    recorded = []
    for step in range(1, 13):
        state.batch = {"input_ids": torch.randint(1, 30, (4, 6)),
                       "attention_mask": torch.ones(4, 6, dtype=torch.long),
                       "labels": torch.randint(0, 2, (4,))}
        training_step(state, swa)
        if step in (6, 9, 12):
            recorded.append([p.detach().clone() for p in model.parameters()])
    last = [p.detach().clone() for p in model.parameters()]

    swa.before_evaluate(state)
    for p, *values in zip(model.parameters(), *recorded, strict=True):
        torch.testing.assert_close(p.detach(), torch.stack(values).mean(0))
    swa.after_evaluate(state)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), last, strict=True))
