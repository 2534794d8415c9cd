"""recadam: λ(t) against its formula, each group's rate, and real steps number for number against
an independent implementation of the authors' RecAdam update."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from optuna.distributions import FloatDistribution
from transformers import get_linear_schedule_with_warmup

from regbench.harness import set_up, training_step
from regbench.plugins import build
from regbench.recipe import Recipe
from regbench.registry.recadam import RecAdam
from regbench.tasks import get_task


def _linear_factors(warmup: int, total: int) -> list[float]:
    """The rate factor of each step of Hugging Face's linear schedule."""
    probe = torch.optim.SGD([torch.zeros(1)], lr=1.0)
    factor = get_linear_schedule_with_warmup(probe, warmup, total).lr_lambdas[0]
    return [factor(step) for step in range(total)]


def test_lambda_and_the_rates_follow_the_sigmoid_schedule(tiny_bert):
    model, head = tiny_bert
    recipe = Recipe(learning_rate=1e-3, warmup_ratio=0.1, epochs=0, min_steps=40)
    regularizer = RecAdam(k=20.0, t0=0.25)  # 0.5 per step of 40, t0 at step 10
    state = set_up(regularizer, model, get_task("rte"), head, recipe)
    for t in (1, 5, 10, 11, 40):
        assert regularizer.anneal(t) == pytest.approx(1 / (1 + math.exp(-0.5 * (t - 10))),
                                                      rel=1e-12)
    assert regularizer.anneal(10) == 0.5
    for t, factor in enumerate(_linear_factors(4, 40), start=1):
        # Step t runs the pretrained group at η_t·λ(t), the head at η_t.
        lam = 1 / (1 + math.exp(-0.5 * (t - 10)))
        assert state.lrs == pytest.approx([1e-3 * factor * lam, 1e-3 * factor], rel=1e-9)
        state.optimizer.step()  # no gradients: nothing moves
        state.scheduler.step()

    far = RecAdam(k=1000.0, t0=1.0)  # e^999 would overflow a naive formula
    set_up(far, model, get_task("rte"), head, Recipe(epochs=0, min_steps=1000))
    assert far.anneal(1) == pytest.approx(math.exp(-999), rel=1e-9) and far.anneal(2000) == 1.0


def test_the_anneal_takes_the_same_share_of_every_run_as_in_the_authors(tiny_bert):
    """At the defaults, a run of 9,000 steps anneals as the authors' `anneal_function` with their
    k = 0.1 per step and t0 = 900 steps; a run of 300 at the same shares of its length."""
    model, head = tiny_bert
    runs = {}
    for total in (9000, 300):
        runs[total] = RecAdam()
        set_up(runs[total], model, get_task("rte"), head, Recipe(epochs=0, min_steps=total))
    for t in (1, 850, 900, 901, 950, 9000):
        assert runs[9000].anneal(t) == pytest.approx(1 / (1 + math.exp(-0.1 * (t - 900))),
                                                     rel=1e-9, abs=1e-300)
    for share in (0.05, 0.1, 0.11, 0.5):
        assert runs[300].anneal(round(share * 300)) == pytest.approx(
            runs[9000].anneal(round(share * 9000)), rel=1e-9, abs=1e-300)
    # From 0.12 to 0.88 within 40 of the 9,000 steps, so within 4/3 of a step of the 300.
    rising = [t for t in range(1, 301) if 0.12 < runs[300].anneal(t) < 0.88]
    assert rising == [30]


def _authors_steps(model, head, batches, lr_factors, k, t0, gamma, lr):
    """The authors' RecAdam update (RecAdam.py, `step`) written out, after the recipe's clipping.
    Its ε sits where torch's AdamW puts it, inside the bias correction: the one deliberate
    difference (see the plugin's docstring)."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    m = {n: torch.zeros_like(p) for n, p in trainable}
    v = {n: torch.zeros_like(p) for n, p in trainable}
    trajectory = []
    for t, (batch, factor) in enumerate(zip(batches, lr_factors, strict=False), start=1):
        model.zero_grad()
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        rate = lr * factor
        with torch.no_grad():
            for n, p in trainable:
                m[n] = beta1 * m[n] + (1 - beta1) * p.grad
                v[n] = beta2 * v[n] + (1 - beta2) * p.grad.square()
                step_size = rate * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                adam = m[n] / (v[n].sqrt() + eps * math.sqrt(1 - beta2**t))
                if n in head:  # not pretrained: anneal_w = 0, a plain Adam step
                    p -= step_size * adam
                    continue
                lam = 1 / (1 + math.exp(-k * (t - t0)))
                p -= step_size * lam * adam
                p -= rate * (1 - lam) * gamma * (p - anchor[n])
        trajectory.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return trajectory


def test_real_steps_match_the_authors_update(tiny_bert, tiny_batches):
    model, head = tiny_bert
    # A key's bias adds the same amount to all of a query's scores, which the softmax ignores:
    # its gradient is rounding noise, which Adam's normalisation turns into whole steps.
    for layer in model.bert.encoder.layer:
        layer.attention.self.key.bias.requires_grad_(False)
    reference = _authors_steps(copy.deepcopy(model), head, tiny_batches,
                               _linear_factors(2, 10), k=1.0, t0=2, gamma=20.0, lr=1e-2)
    # Two warmup steps: the first runs at rate 0 and only fills Adam's moments.
    recipe = Recipe(learning_rate=1e-2, warmup_ratio=0.2, epochs=0, min_steps=10,
                    precision="fp32")
    regularizer = RecAdam(k=10.0, t0=0.2, gamma=20.0)  # theirs per step of 10, t0 at step 2
    state = set_up(regularizer, model, get_task("rte"), head, recipe)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for batch, expected in zip(tiny_batches, reference, strict=True):
        state.batch = batch
        training_step(state, regularizer)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), expected[n], rtol=1e-5, atol=1e-7)
    # Not a trivial agreement: every trained parameter moved.
    assert all(not torch.equal(p, start[n]) for n, p in model.named_parameters()
               if p.requires_grad)


def test_registration_defaults_and_search_space():
    assert type(build("recadam")) is RecAdam
    assert RecAdam.defaults == {"k": 900.0, "t0": 0.1, "gamma": 5000.0}
    assert RecAdam.search_space(6) == {"k": FloatDistribution(450.0, 9000.0, log=True),
                                       "t0": FloatDistribution(0.01, 0.5, log=True),
                                       "gamma": FloatDistribution(500.0, 20000.0, log=True)}
    assert build("recadam").extra_passes() == 0
