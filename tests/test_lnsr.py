"""lnsr against its definition in regularizers.md: the penalty, its noise, the layers it reruns."""

from __future__ import annotations

import pytest
import torch
from optuna.distributions import IntDistribution
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from regbench.errors import RegbenchError
from regbench.harness import set_up
from regbench.registry.lnsr import LNSR
from regbench.tasks import get_task

RTE = get_task("rte")
LAYERS = 6  # MiniLM-L6


def _setup(lnsr: LNSR, minilm) -> torch.nn.Module:
    model, head = minilm
    set_up(lnsr, model, RTE, head)
    return model.eval()  # no dropout: the penalty is then a function of the noise alone


def _penalty(lnsr: LNSR, model, batch, seed: int = 1) -> torch.Tensor:
    outputs = model(**batch, output_hidden_states=True)
    torch.manual_seed(seed)
    return lnsr.penalty(batch, outputs)


@pytest.mark.parametrize("inject_layer", [0, 3])
def test_penalty_is_zero_without_noise(minilm, rte_batch, inject_layer):
    lnsr = LNSR(sigma=0.0, inject_layer=inject_layer, include_logits=True)
    assert _penalty(lnsr, _setup(lnsr, minilm), rte_batch).item() == 0.0


def test_penalty_grows_like_sigma_squared(minilm, rte_batch):
    small, double = LNSR(sigma=1e-3), LNSR(sigma=2e-3)
    model = _setup(small, minilm)
    set_up(double, model, RTE, minilm[1])
    ratio = _penalty(double, model, rte_batch) / _penalty(small, model, rte_batch)
    assert ratio.item() == pytest.approx(4.0, rel=0.02)


def _with_noise_injected(model, batch, inject_layer: int, sigma: float, weights: list[float],
                         include_logits: bool) -> torch.Tensor:
    """R from two whole forward passes, the second with N(0, σ²) noise added to the input of
    layer inject_layer + 1 by a hook: an independent path to the same number."""
    clean = model(**batch, output_hidden_states=True)
    noise = sigma * torch.randn_like(clean.hidden_states[inject_layer])
    layer = model.base_model.encoder.layer[inject_layer]
    hook = layer.register_forward_pre_hook(lambda module, args: (args[0] + noise, *args[1:]))
    noisy = model(**batch, output_hidden_states=True)
    hook.remove()
    tokens = batch["attention_mask"].bool()
    penalty = sum(weights[k - 1] * (noisy.hidden_states[k] - clean.hidden_states[k]).square()
                  .sum(-1)[tokens].mean() for k in range(inject_layer + 1, len(weights) + 1))
    if include_logits:
        penalty = penalty + (noisy.logits - clean.logits).square().sum(-1).mean()
    return penalty


@pytest.mark.parametrize("include_logits", [False, True])
def test_penalty_matches_whole_forward_passes_with_the_noise_injected(minilm, rte_batch,
                                                                     include_logits):
    weights = [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
    lnsr = LNSR(sigma=0.05, inject_layer=2, layer_weights=weights, include_logits=include_logits)
    model = _setup(lnsr, minilm)
    torch.manual_seed(1)
    expected = _with_noise_injected(model, rte_batch, 2, 0.05, weights, include_logits)
    torch.testing.assert_close(_penalty(lnsr, model, rte_batch), expected)


def test_works_for_roberta_style_models():
    config = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=40)
    model = RobertaForSequenceClassification(config).eval()
    ids = torch.tensor([[0, 5, 6, 7, 2, 1, 1], [0, 5, 6, 7, 8, 9, 2]])  # 1 pads
    batch = {"input_ids": ids, "attention_mask": (ids != config.pad_token_id).long()}
    lnsr = LNSR(sigma=0.1, inject_layer=1, include_logits=True)
    set_up(lnsr, model, RTE, frozenset())
    torch.manual_seed(1)
    expected = _with_noise_injected(model, batch, 1, 0.1, [1.0] * 3, include_logits=True)
    torch.testing.assert_close(_penalty(lnsr, model, batch), expected)


def test_reruns_only_the_layers_above_the_injection_layer(minilm, rte_batch):
    lnsr = LNSR(inject_layer=2, samples=2)
    model = _setup(lnsr, minilm)
    outputs = model(**rte_batch, output_hidden_states=True)
    calls = [0] * LAYERS
    for k, layer in enumerate(model.bert.encoder.layer):
        layer.register_forward_hook(lambda module, args, out, k=k: calls.__setitem__(k,
                                                                                   calls[k] + 1))
    embeddings = []
    model.bert.embeddings.register_forward_hook(lambda *_: embeddings.append(1))
    penalty = lnsr.penalty(rte_batch, outputs)
    assert calls == [0, 0, 2, 2, 2, 2] and not embeddings
    # Gradients flow through both branches, so down to the layers below the noise as well.
    penalty.backward()
    assert model.bert.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0


def test_padding_tokens_do_not_count(minilm, rte_batch):
    lnsr = LNSR(inject_layer=1)
    model = _setup(lnsr, minilm)
    padding = rte_batch["attention_mask"] == 0
    assert padding.any()
    scrambled = {**rte_batch, "input_ids": rte_batch["input_ids"].masked_fill(padding, 2023)}
    with torch.no_grad():
        before = model(**rte_batch, output_hidden_states=True).hidden_states[-1][padding]
        after = model(**scrambled, output_hidden_states=True).hidden_states[-1][padding]
    assert not torch.allclose(before, after)  # the padded positions did change...
    torch.testing.assert_close(_penalty(lnsr, model, scrambled),  # ...the penalty did not
                               _penalty(lnsr, model, rte_batch))


def test_relative_noise_is_a_fraction_of_each_token_norm():
    h = torch.randn(2, 5, 16) * torch.arange(1, 6).view(1, 5, 1)
    noise = LNSR(noise="relative", sigma=0.05).noise(h)
    torch.testing.assert_close(noise.norm(dim=-1), 0.05 * h.norm(dim=-1))


def test_loss_adds_lambda_times_the_penalty(minilm, rte_batch):
    lnsr = LNSR(**{"lambda": 0.3})
    model = _setup(lnsr, minilm)
    outputs = model(**rte_batch, output_hidden_states=True)
    torch.manual_seed(1)
    loss = lnsr.loss(model, rte_batch, outputs, outputs.loss)
    torch.manual_seed(1)
    torch.testing.assert_close(loss, outputs.loss + 0.3 * lnsr.penalty(rte_batch, outputs))


def test_rejects_what_it_cannot_do(minilm):
    distilbert = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=32, dim=16, hidden_dim=32, n_layers=1, n_heads=2))
    with pytest.raises(RegbenchError, match="cannot find the encoder layers"):
        set_up(LNSR(), distilbert, RTE)
    with pytest.raises(RegbenchError, match="inject_layer must be in 0..5"):
        set_up(LNSR(inject_layer=LAYERS), minilm[0], RTE)
    with pytest.raises(RegbenchError, match="one weight per layer"):
        set_up(LNSR(layer_weights=[1.0]), minilm[0], RTE)
    with pytest.raises(RegbenchError, match="noise = 'gaussian' is not allowed; it must be one of"):
        LNSR(noise="gaussian")


def test_search_space_covers_every_injection_layer():
    space = LNSR.search_space(LAYERS)
    assert set(space) == {"lambda", "sigma", "inject_layer"} <= set(LNSR.defaults)
    assert space["inject_layer"] == IntDistribution(0, LAYERS - 1)
