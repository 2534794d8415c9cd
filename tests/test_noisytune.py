"""noisytune against its definition: each pretrained tensor moves by U(−λ/2, λ/2) · std(W), checked
through the perturbation's range, spread and mean; the head stays; the draws follow the seed."""

from __future__ import annotations

import math

import pytest
import torch
from optuna.distributions import FloatDistribution

from regbench.harness import set_up
from regbench.modeling import load_model
from regbench.plugins import build
from regbench.registry.noisytune import NoisyTune
from regbench.tasks import get_task

RTE = get_task("rte")


def _perturbed(seed: int = 0, **params) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                   frozenset[str]]:
    """The weights of a fresh MiniLM before and after `NoisyTune(**params)` is set up on it
    (the global RNG seeded with `seed` first, as the harness does), and its head."""
    model, head = load_model("minilm", RTE, seed=seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(seed)
    set_up(NoisyTune(**params), model, RTE, head)
    return before, {n: p.detach().clone() for n, p in model.named_parameters()}, head


def test_each_pretrained_tensor_moves_by_uniform_noise_scaled_by_its_std():
    lam = 0.2
    before, after, head = _perturbed(**{"lambda": lam})
    assert all(torch.equal(before[n], after[n]) for n in head)
    moved = 0
    for name in sorted(set(before) - head):
        w = before[name].double()
        delta = after[name].double() - w
        n, half_width = w.numel(), lam / 2 * w.std().item()
        if half_width == 0:  # a constant tensor (MiniLM's pooler bias is all zeros)
            assert not delta.any(), name
            continue
        spread = half_width / math.sqrt(3)  # the std of U(−a, a) is a / √3 = λ · std(W) / √12
        # float32 rounds W + noise: half an ulp of the result
        rounding = torch.finfo(torch.float32).eps * after[name].double().abs()
        assert (delta.abs() <= half_width + rounding).all(), name
        assert delta.abs().max().item() > half_width * (1 - 10 / n), name  # the range is filled
        # 6 standard errors over ~100 tensors: the mean's is spread / √n; for a uniform variable
        # the sample std's is about spread · √(0.8 / (4n)).
        assert abs(delta.mean().item()) < 6 * spread / math.sqrt(n), name
        assert delta.std().item() == pytest.approx(spread, rel=6 * math.sqrt(0.2 / n)), name
        moved += 1
    assert moved == 102  # every tensor of the embeddings, the layers and the pooler but one


def test_matrices_only_leaves_vectors_alone_and_lambda_zero_leaves_everything():
    before, after, _ = _perturbed(matrices_only=True)
    for name in before:
        assert torch.equal(before[name], after[name]) == (before[name].dim() < 2
                                                          or name.startswith("classifier")), name
    before, after, _ = _perturbed(**{"lambda": 0.0})
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_draws_are_fixed_by_the_seed_and_leave_the_dropout_stream_alone():
    torch.manual_seed(3)
    stream = torch.rand(8)  # what dropout would draw first in a vanilla run of seed 3
    _, first, _ = _perturbed(seed=3)
    assert torch.equal(torch.rand(8), stream)  # the global RNG left as the harness seeded it
    _, again, _ = _perturbed(seed=3)
    _, other, _ = _perturbed(seed=4)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(first[name], again[name]) and not torch.equal(first[name], other[name])


def test_registration_defaults_and_search_space():
    regularizer = build("noisytune")
    assert type(regularizer) is NoisyTune
    assert regularizer.params == {"lambda": 0.15, "matrices_only": False}
    assert regularizer.extra_passes() == 0.0 and regularizer.setup_passes() == 0.0
    assert NoisyTune.search_space(6) == {"lambda": FloatDistribution(0.0, 0.3)}
