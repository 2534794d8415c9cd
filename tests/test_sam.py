"""sam against Foret et al.'s update: ε̂ = ρ·g/‖g‖₂, the step from w with ∇L(w + ε̂), computed
by hand beside real steps; the weights put back exactly; the second pass with the main pass's
dropout masks."""

from __future__ import annotations

import copy

import pytest
import torch
from optuna.distributions import FloatDistribution

from regbench.harness import set_up, training_step
from regbench.plugins import build
from regbench.recipe import Recipe
from regbench.registry.sam import SAM
from regbench.tasks import get_task

RTE = get_task("rte")


def _freeze_key_biases(model) -> None:
    # A key's bias adds the same amount to all of a query's scores, which the softmax ignores:
    # its gradient is rounding noise, which Adam's normalisation turns into whole steps.
    for layer in model.bert.encoder.layer:
        layer.attention.self.key.bias.requires_grad_(False)


def test_each_step_is_adamw_from_w_with_the_gradient_at_w_plus_epsilon(tiny_bert, tiny_batches):
    model, head = tiny_bert
    _freeze_key_biases(model)
    reference = copy.deepcopy(model)
    weights = [p for p in reference.parameters() if p.requires_grad]
    # No warmup: the rate of step t is 1e-2 · (10 − t + 1) / 10.
    recipe = Recipe(learning_rate=1e-2, warmup_ratio=0.0, epochs=0, min_steps=10,
                    precision="fp32")
    sam = SAM(rho=0.3)
    state = set_up(sam, model, RTE, head, recipe)
    adamw = torch.optim.AdamW(weights, lr=1e-2, weight_decay=0.0)
    for t, batch in enumerate(tiny_batches, start=1):
        clean = reference(**batch).loss
        g = torch.autograd.grad(clean, weights)
        norm = torch.sqrt(sum(gi.square().sum() for gi in g))
        w = [p.detach().clone() for p in weights]
        with torch.no_grad():
            for p, gi in zip(weights, g, strict=True):
                p += 0.3 * gi / norm
        adamw.zero_grad()
        reference(**batch).loss.backward()
        # Not the plain step: the gradient at w + ε̂ is another one.
        assert not torch.allclose(torch.cat([p.grad.flatten() for p in weights]),
                                  torch.cat([gi.flatten() for gi in g]), rtol=0.05)
        with torch.no_grad():
            for p, wi in zip(weights, w, strict=True):
                p.copy_(wi)
        torch.nn.utils.clip_grad_norm_(weights, 1.0)
        adamw.param_groups[0]["lr"] = 1e-2 * (10 - t + 1) / 10
        adamw.step()

        state.batch = batch
        assert training_step(state, sam) == pytest.approx(clean.item(), rel=1e-6)  # L(w)
        for p, expected in zip(model.parameters(), reference.parameters(), strict=True):
            # A step moves a weight by about 1e-2: 1e-6 is rounding, a ten-thousandth of one.
            torch.testing.assert_close(p.detach(), expected.detach(), rtol=1e-5, atol=1e-6)


def test_the_perturbation_has_norm_rho_and_w_comes_back_exactly(tiny_bert, tiny_batches):
    model, head = tiny_bert
    sam = SAM(rho=0.05)
    state = set_up(sam, model, RTE, head)
    w = [p.detach().clone() for p in model.parameters()]
    batch = tiny_batches[0]
    sam.before_forward(state)
    outputs = model(**batch)
    backward, reported = sam.loss(model, batch, outputs, outputs.loss)
    moved = torch.sqrt(sum((p.detach() - wi).square().sum()
                           for p, wi in zip(model.parameters(), w, strict=True)))
    assert moved.item() == pytest.approx(0.05, rel=1e-4)
    assert reported.item() == outputs.loss.item()  # L(w)
    assert backward.item() == model(**batch).loss.item()  # L(w + ε̂)
    assert backward > outputs.loss  # uphill, to first order
    backward.backward()
    sam.before_optimizer_step(state)
    assert all(torch.equal(p, wi) for p, wi in zip(model.parameters(), w, strict=True))


def test_the_pass_at_w_plus_epsilon_draws_the_main_passs_dropout_masks(minilm, rte_batch):
    """With ρ tiny, ∇L(w + ε̂) is ∇L(w) under the same masks; under fresh masks it is not."""
    model, head = minilm
    model.train()
    sam = SAM(rho=1e-7)
    state = set_up(sam, model, RTE, head)
    classifier = model.classifier.weight
    torch.manual_seed(3)
    sam.before_forward(state)
    outputs = model(**rte_batch)
    main = torch.autograd.grad(outputs.loss, classifier, retain_graph=True)[0]
    sam.loss(model, rte_batch, outputs, outputs.loss).backward.backward()
    torch.testing.assert_close(classifier.grad, main, rtol=1e-3, atol=1e-6)
    fresh = torch.autograd.grad(model(**rte_batch).loss, classifier)[0]
    assert not torch.allclose(fresh, main, rtol=1e-2, atol=1e-4)


def test_registration_defaults_cost_and_search_space():
    sam = build("sam")
    assert type(sam) is SAM and sam.params == {"rho": 0.05}
    assert sam.extra_passes() == 1.0 and sam.setup_passes() == 0.0
    assert SAM.search_space(6) == {"rho": FloatDistribution(0.01, 0.5, log=True)}
