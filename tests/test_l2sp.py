"""l2sp: the penalty against its formula, its gradient, the decoupled pull, a short fine-tuning."""

from __future__ import annotations

import torch
from optuna.distributions import FloatDistribution

from regbench.harness import set_up
from regbench.plugins import build
from regbench.recipe import Recipe
from regbench.registry.l2sp import L2SP
from regbench.tasks import get_task


def _set_up(minilm, recipe: Recipe | None = None, **params) -> L2SP:
    model, head = minilm
    regularizer = L2SP(**params)
    set_up(regularizer, model, get_task("rte"), head, recipe)
    return regularizer


def _head_norm(minilm) -> torch.Tensor:
    """Σ‖p‖² over the head, in float64."""
    model, head = minilm
    return sum(model.get_parameter(n).detach().double().square().sum() for n in head)


def test_penalty_before_the_first_step_is_the_head_term_alone(minilm):
    penalty = _set_up(minilm, alpha=0.3, beta=0.2).penalty()
    assert _head_norm(minilm) > 0
    torch.testing.assert_close(penalty.double(), 0.2 / 2 * _head_norm(minilm))

    zero = _set_up(minilm, alpha=0.3, beta=0.0).penalty()
    assert zero.item() == 0.0
    zero.backward()  # ‖p − p⁰‖ has no derivative at 0; the gradient must still be 0, not NaN
    model, _ = minilm
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_penalty_matches_the_formula_for_known_deltas(minilm):
    regularizer = _set_up(minilm, alpha=0.3, beta=0.2)
    model, _ = minilm
    with torch.no_grad():
        model.bert.encoder.layer[2].attention.self.query.weight.add_(0.1)  # 384 × 384
        model.bert.pooler.dense.bias.sub_(0.5)  # 384
        model.classifier.weight.add_(0.7)  # a head parameter: β term only, no pull to its init
    drift = 384 * 384 * 0.1**2 + 384 * 0.5**2
    expected = 0.3 / 2 * drift + 0.2 / 2 * _head_norm(minilm)
    # The CPU's float32 norm over 10⁵ elements is good to about 1e-4.
    torch.testing.assert_close(regularizer.penalty().double(), expected, rtol=1e-3, atol=0)

    task_loss = torch.tensor(1.5)
    torch.testing.assert_close(regularizer.loss(model, {}, None, task_loss),
                               task_loss + regularizer.penalty())


def test_gradient_is_alpha_times_drift_and_beta_times_head(minilm):
    model, head = minilm
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    regularizer = _set_up(minilm, alpha=0.3, beta=0.2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    regularizer.penalty().backward()
    for name, p in model.named_parameters():
        expected = 0.2 * p.detach() if name in head else 0.3 * (p.detach() - start[name])
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-9)


def test_decoupled_pulls_toward_the_start_at_the_scheduled_rate(minilm):
    model, head = minilm
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    # 10 steps, 5 of warmup: after 2 scheduler steps the rate is 2/5 of the peak 0.1.
    recipe = Recipe(learning_rate=0.1, warmup_ratio=0.5, epochs=0, min_steps=10)
    regularizer = _set_up(minilm, recipe, alpha=0.5, beta=0.0, decoupled=True)
    for _ in range(2):  # no gradients yet: the optimiser's steps change nothing
        regularizer.state.optimizer.step()
        regularizer.state.scheduler.step()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert regularizer.penalty().item() == 0.0  # the α term has left the loss
    regularizer.after_step(model)
    for name, p in model.named_parameters():
        moved = 1.0 if name in head else 1.0 - 0.04 * 0.5  # p − η·α·(p − p⁰), p − p⁰ = 1
        torch.testing.assert_close(p.detach(), start[name] + moved)


def test_registration_defaults_and_search_space():
    assert type(build("l2sp")) is L2SP
    assert L2SP.defaults == {"alpha": 0.01, "beta": 0.01, "decoupled": False}
    assert L2SP.search_space(6) == {"alpha": FloatDistribution(1e-4, 1.0, log=True),
                                    "beta": FloatDistribution(1e-4, 1e-1, log=True)}
