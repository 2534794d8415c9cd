"""childtuning_d: the Fisher estimate against an independent computation, the mask's share, the
1/p scaling after clipping, which parameters move."""

from __future__ import annotations

import copy

import pytest
import torch
from optuna.distributions import FloatDistribution

from regbench.harness import set_up, training_step
from regbench.plugins import build
from regbench.recipe import Recipe
from regbench.registry.childtuning_d import ChildTuningD, fisher_information
from regbench.tasks import get_task

# No warmup, so the first step moves every parameter whose gradient survives.
RECIPE = Recipe(learning_rate=1e-3, warmup_ratio=0.0, epochs=0, min_steps=10)


def _is_encoder(name: str) -> bool:
    return ".encoder.layer." in name


def _fisher_by_hand(model, batches, max_norm):
    """Σ over batches of each encoder tensor's squared batch gradient, clipped tensor by tensor
    to `max_norm`, in float64; and the gradients' norms before clipping."""
    fisher, norms = {}, []
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        for name, p in model.named_parameters():
            if _is_encoder(name):
                grad = p.grad.double()
                norms.append(grad.norm().item())
                grad = grad * min(1.0, max_norm / (norms[-1] + 1e-6))
                fisher[name] = fisher.get(name, 0) + grad.square()
    return fisher, norms


def test_the_fisher_of_a_tiny_model_and_its_top_share(tiny_bert, tiny_batches):
    model, head = tiny_bert
    twin = copy.deepcopy(model)
    # A clipping norm that some tensors' gradients exceed and others do not.
    recipe = Recipe(max_grad_norm=0.05, epochs=0, min_steps=10, precision="fp32")
    regularizer = ChildTuningD(p=0.25)
    state = set_up(regularizer, model, get_task("rte"), head, recipe,
                   read_training=lambda: iter(tiny_batches))
    expected, norms = _fisher_by_hand(twin, tiny_batches, 0.05)
    assert min(norms) < 0.05 < max(norms)

    names = [n for n, _ in model.named_parameters() if _is_encoder(n)]
    found = fisher_information(model, [model.get_parameter(n) for n in names], state)
    for name, value in zip(names, found, strict=True):
        torch.testing.assert_close(value.double(), expected[name], rtol=1e-5, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # setup leaves no gradient behind

    # The top quarter of the whole encoder, by one threshold.
    scores = torch.cat([expected[n].flatten() for n in names])
    threshold = scores.sort(descending=True).values[round(0.25 * len(scores)) - 1]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    regularizer.before_optimizer_step(state)
    for name, p in model.named_parameters():
        if _is_encoder(name):
            torch.testing.assert_close(p.grad, (expected[name] >= threshold).float() / 0.25)
        else:
            assert torch.equal(p.grad, torch.ones_like(p))


def test_a_real_step_updates_share_p_of_the_encoder_with_its_gradients_over_p(minilm, rte_data):
    model, head = minilm
    batches = [rte_data.train.collate(list(range(i, i + 8)), pad_id=0) for i in (0, 8, 16, 24)]
    regularizer = ChildTuningD(p=0.3)
    state = set_up(regularizer, model, get_task("rte"), head, RECIPE,
                   read_training=lambda: iter(batches))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = {}
    hook = regularizer.before_optimizer_step

    def spy(state):  # the gradients as the harness hands them over (clipped), and as left
        seen["clipped"] = {n: p.grad.clone() for n, p in model.named_parameters()}
        hook(state)
        seen["left"] = {n: p.grad.clone() for n, p in model.named_parameters()}

    regularizer.before_optimizer_step = spy
    state.batch = batches[0]
    training_step(state, regularizer)

    clipped, left = seen["clipped"], seen["left"]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in clipped.values()]))
    assert norm.item() <= RECIPE.max_grad_norm * (1 + 1e-5)
    kept = total = 0
    for name, p in model.named_parameters():
        moved = p.detach() != before[name]
        if _is_encoder(name):
            mask = left[name] != 0
            torch.testing.assert_close(left[name], torch.where(mask, clipped[name] / 0.3, 0.0),
                                       rtol=1e-6, atol=0)
            assert torch.equal(moved, mask)  # AdamW leaves a zero-gradient parameter alone
            kept += mask.sum().item()
            total += mask.numel()
        else:
            assert torch.equal(left[name], clipped[name])
            assert moved.any(), name
    assert total == 6 * 1_774_464  # MiniLM-L6's six layers of 384 wide
    assert kept / total == pytest.approx(0.3, abs=1e-6)


def test_registration_cost_and_search_space():
    regularizer = build("childtuning_d")
    assert type(regularizer) is ChildTuningD and regularizer.params == {"p": 0.3}
    assert (regularizer.setup_passes(), regularizer.extra_passes()) == (1.0, 0.0)
    assert ChildTuningD.search_space(6) == {"p": FloatDistribution(0.1, 0.3)}
