"""mixout: the mixed weight against its definition, the swap in a real model, short fine-tunings."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from optuna.distributions import FloatDistribution
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from regbench.harness import set_up
from regbench.plugins import build
from regbench.registry.mixout import MixLinear, Mixout
from regbench.tasks import get_task

IN, OUT = 64, 5


def _moved_layer(p: float) -> tuple[MixLinear, torch.Tensor]:
    """A MixLinear whose weight W has moved away from its target U everywhere; and U."""
    layer = MixLinear(nn.Linear(IN, OUT), p)
    target = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(torch.rand(OUT, IN) + 0.5)
    return layer, target


def _weight_seen(layer: MixLinear) -> torch.Tensor:
    """The weight one forward pass used: with the identity as input, row j of the output is
    column j of the weight, plus the bias."""
    return (layer(torch.eye(IN)) - layer.bias).T


def test_p_zero_is_the_plain_linear_layer():
    layer, _ = _moved_layer(0.0)
    x = torch.randn(3, IN)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_p_one_gives_the_target():
    layer, target = _moved_layer(1.0)
    x = torch.randn(3, IN)
    assert torch.equal(layer(x), F.linear(x, target, layer.bias))


def test_evaluation_uses_the_weight_unchanged():
    layer, _ = _moved_layer(0.7)
    layer.eval()
    x = torch.randn(3, IN)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_one_mask_entry_covers_a_whole_input_column_and_changes_every_pass():
    layer, target = _moved_layer(0.6)
    delta = layer.weight.detach() - target
    first, second = ((_weight_seen(layer).detach() - target) / delta for _ in range(2))
    for ratio in (first, second):
        column = ratio[0]  # one row stands for the whole column
        torch.testing.assert_close(ratio, column.expand_as(ratio))
        kept = column > 0.5
        torch.testing.assert_close(column[kept], torch.full_like(column[kept], 1 / (1 - 0.6)))
        torch.testing.assert_close(column[~kept], torch.zeros_like(column[~kept]), atol=1e-5,
                                   rtol=0)
        assert 0 < kept.sum() < IN
    assert not torch.equal(first, second)


def test_the_mixed_weight_averages_to_the_weight():
    layer, target = _moved_layer(0.5)
    with torch.no_grad():
        mean = torch.stack([layer.mixed_weight() for _ in range(4000)]).mean(0)
    assert (layer.mixed_weight() - layer.weight).abs().max() > 0.5  # one draw is far from W
    # 4000 draws: the standard error of a column's mean is |W − U|/√4000 ≤ 0.024 here.
    torch.testing.assert_close(mean, layer.weight.detach(), atol=0.12, rtol=0)


def test_gradient_is_the_mask_over_one_minus_p_and_the_bias_is_not_mixed():
    layer, target = _moved_layer(0.7)
    output = layer(torch.eye(IN))
    grad_output = torch.randn_like(output)
    output.backward(grad_output)
    seen = (output.detach() - layer.bias.detach()).T
    kept = ((seen - target).abs() > 0.25).all(0).float()  # a kept column moved by ≥ 0.5 / 0.3
    torch.testing.assert_close(layer.weight.grad, grad_output.T * kept / (1 - 0.7))
    torch.testing.assert_close(layer.bias.grad, grad_output.sum(0))


def test_p_must_be_a_probability():
    with pytest.raises(ValueError, match="1.5"):
        MixLinear(nn.Linear(2, 2), 1.5)


def _set_up(minilm, **params) -> torch.nn.Module:
    model, head = minilm
    set_up(Mixout(**params), model, get_task("rte"), head)
    return model


def test_setup_swaps_every_linear_keeps_the_parameters_and_switches_dropout_off(minilm,
                                                                                rte_batch):
    model, _ = minilm
    model.eval()
    parameters = {n: id(p) for n, p in model.named_parameters()}
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules()
               if isinstance(m, nn.Linear)}
    with torch.no_grad():
        before = model(**rte_batch).logits

    _set_up(minilm, p=0.0)
    mixed = {n: m for n, m in model.named_modules() if isinstance(m, MixLinear)}
    assert sorted(mixed) == sorted(weights) and len(mixed) == 6 * 6 + 2  # + pooler, classifier
    assert "classifier" in mixed
    assert all(torch.equal(m.target, weights[n]) for n, m in mixed.items())
    assert {n: id(p) for n, p in model.named_parameters()} == parameters  # same tensors
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))

    with torch.no_grad():
        assert torch.equal(model(**rte_batch).logits, before)  # evaluation: W unchanged
        model.train()  # with p = 0 and every dropout off, training computes the same thing
        assert torch.equal(model(**rte_batch).logits, before)


def test_without_mix_head_the_head_and_its_dropout_are_left_alone(minilm):
    model = _set_up(minilm, mix_head=False)
    assert type(model.classifier) is nn.Linear
    assert model.dropout.p == 0.1
    assert isinstance(model.bert.pooler.dense, MixLinear)
    assert all(m.p == 0.0 for m in model.bert.modules() if isinstance(m, nn.Dropout))


def test_a_tiny_bert_computes_with_the_published_mixed_weights(monkeypatch):
    """With a fixed mask, the mixed-out model's logits and gradients against a plain copy of it
    whose every linear weight is replaced by the published formula, computed here."""
    p = 0.6
    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=40)).train()
    plain = copy.deepcopy(model).eval()  # no dropout, as mixout switches it off
    targets = {name: module.weight.detach().clone() for name, module in plain.named_modules()
               if isinstance(module, nn.Linear)}
    set_up(Mixout(p=p), model, get_task("rte"), frozenset())
    with torch.no_grad():  # training has moved W away from U
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))

    def kept(columns: int) -> torch.Tensor:  # the fixed mask: every column but each third one
        return (torch.arange(columns) % 3 != 0).float()

    def fixed_draw(keep: torch.Tensor, probability: float) -> torch.Tensor:
        assert probability == pytest.approx(1 - p)
        return keep.copy_(kept(keep.shape[-1]))

    monkeypatch.setattr(torch.Tensor, "bernoulli_", fixed_draw)
    ids = torch.tensor([[2, 5, 6, 7, 3, 0, 0], [2, 5, 6, 7, 8, 9, 3]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    parameters = dict(model.named_parameters())
    mixed = dict(parameters)
    for name, target in targets.items():
        weight, m = parameters[f"{name}.weight"], kept(target.shape[1])  # m[j]: column j
        mixed[f"{name}.weight"] = ((1 - m) * target + m * weight - p * target) / (1 - p)

    logits = model(**batch).logits
    expected = torch.func.functional_call(plain, mixed, kwargs=batch).logits
    torch.testing.assert_close(logits, expected)
    leaves = list(parameters.values())
    for ours, reference in zip(torch.autograd.grad(logits.square().sum(), leaves),
                               torch.autograd.grad(expected.square().sum(), leaves), strict=True):
        torch.testing.assert_close(ours, reference)


def test_registration_defaults_and_search_space():
    assert type(build("mixout")) is Mixout
    assert Mixout.defaults == {"p": 0.7, "mix_head": True}
    assert Mixout.search_space(6) == {"p": FloatDistribution(0.1, 0.9)}
