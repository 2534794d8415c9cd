"""weight_decay: which parameters decay, by how much, and a short fine-tuning run."""

from __future__ import annotations

import torch
from optuna.distributions import FloatDistribution
from torch import nn

from regbench.plugins import build
from regbench.registry.weight_decay import WeightDecay


def _ids(parameters) -> set[int]:
    return {id(p) for p in parameters}


def test_biases_and_layer_norm_weights_are_exempt_and_the_rest_decays(minilm):
    model, _ = minilm
    decayed, exempt = WeightDecay(weight_decay=0.05).param_groups(model)
    assert decayed["weight_decay"] == 0.05
    assert exempt["weight_decay"] == 0.0

    named = dict(model.named_parameters())
    no_decay = {n for n in named if n.endswith(".bias") or ".LayerNorm." in n}
    assert {"bert.embeddings.LayerNorm.weight", "classifier.bias"} <= no_decay
    assert _ids(exempt["params"]) == _ids(named[n] for n in no_decay)
    assert _ids(decayed["params"]) == _ids(named[n] for n in set(named) - no_decay)
    assert len(decayed["params"]) + len(exempt["params"]) == len(named)


def test_layer_norms_are_found_by_type_not_by_name():
    class T5LayerNorm(nn.Module):  # a model's own LayerNorm, not an nn.LayerNorm subclass
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), T5LayerNorm())
    decayed, exempt = WeightDecay().param_groups(model)
    assert _ids(decayed["params"]) == {id(model[0].weight)}
    assert _ids(exempt["params"]) == _ids([model[0].bias, *model[1].parameters(), model[2].weight])


def test_tied_and_frozen_parameters():
    first, second = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    frozen = nn.Linear(3, 3)
    second.weight = first.weight
    frozen.requires_grad_(False)
    decayed, exempt = WeightDecay().param_groups(nn.Sequential(first, second, frozen))
    assert _ids(decayed["params"]) == {id(first.weight)} and len(decayed["params"]) == 1
    assert exempt["params"] == []


def test_one_adamw_step_shrinks_exactly_the_decayed_parameters(minilm):
    model, _ = minilm
    groups = WeightDecay(weight_decay=0.1).param_groups(model)
    decayed = _ids(groups[0]["params"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's own update is then zero: only the decay remains
    torch.optim.AdamW(groups, lr=0.01).step()
    for name, p in model.named_parameters():
        factor = 1 - 0.01 * 0.1 if id(p) in decayed else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=0)


def test_registration_defaults_and_search_space():
    assert type(build("weight_decay")) is WeightDecay
    assert WeightDecay.defaults == {"weight_decay": 0.01}
    assert WeightDecay.search_space(6) == {"weight_decay": FloatDistribution(1e-4, 0.3, log=True)}
    assert WeightDecay().extra_passes() == 0.0
