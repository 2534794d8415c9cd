"""lnsr against its definition in regularizers.md: the penalty (by hand, on MiniLM and on tiny
BERT-family models, in training and in evaluation), its noise, the dropout masks its rerun
replays, its precision under bf16, the layers it reruns, its defaults."""

from __future__ import annotations

import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from regbench.errors import RegbenchError
from regbench.harness import set_up, training_step
from regbench.recipe import Recipe
from regbench.registry.lnsr import LNSR
from regbench.tasks import get_task

RTE = get_task("rte")
LAYERS = 6  # MiniLM-L6


def _setup(lnsr: LNSR, minilm, train: bool = False) -> torch.nn.Module:
    model, head = minilm
    set_up(lnsr, model, RTE, head)
    # In eval mode no dropout: the penalty is then a function of the noise alone.
    return model.train(train)


def _penalty(lnsr: LNSR, model, batch, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(7)  # the main pass's dropout masks
    outputs = model(**batch, output_hidden_states=True)
    torch.manual_seed(seed)  # the noise
    return lnsr.penalty(batch, outputs)


@pytest.mark.parametrize("inject_layer, train, device", [
    (0, True, "cpu"), (3, True, "cpu"), (0, False, "cpu"),
    pytest.param(0, True, "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                            reason="no CUDA GPU here"))])
def test_penalty_is_exactly_zero_without_noise(minilm, rte_batch, inject_layer, train, device):
    """In training the rerun draws the main pass's dropout masks: nothing but noise differs."""
    model, head = minilm
    model.to(device)
    lnsr = LNSR(sigma=0.0, inject_layer=inject_layer, include_logits=True)
    set_up(lnsr, model, RTE, head, device=torch.device(device))
    model.train(train)
    batch = {k: v.to(device) for k, v in rte_batch.items()}
    assert _penalty(lnsr, model, batch).item() == 0.0


def test_without_dropout_training_mode_gives_the_evaluation_penalty(minilm, rte_batch):
    lnsr = LNSR(sigma=0.05, inject_layer=1, include_logits=True)
    model = _setup(lnsr, minilm)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    evaluation = _penalty(lnsr, model, rte_batch)
    training = _penalty(lnsr, model.train(), rte_batch)
    assert evaluation > 0
    torch.testing.assert_close(training, evaluation)


def test_penalty_grows_like_sigma_squared(minilm, rte_batch):
    small, double = LNSR(sigma=1e-3), LNSR(sigma=2e-3)
    model = _setup(small, minilm)
    set_up(double, model, RTE, minilm[1])
    ratio = _penalty(double, model, rte_batch) / _penalty(small, model, rte_batch)
    assert ratio.item() == pytest.approx(4.0, rel=0.02)


def _with_noise_injected(model, batch, inject_layer: int, sigma: float, weights: list[float],
                         include_logits: bool) -> torch.Tensor:
    """The published R from two whole forward passes, the second with N(0, σ²) noise added to
    the input of layer inject_layer + 1 by a hook: an independent path to the same number. In
    training both passes start from the same seed, so they draw the same dropout masks."""
    torch.manual_seed(7)
    clean = model(**batch, output_hidden_states=True)
    torch.manual_seed(1)
    noise = sigma * torch.randn_like(clean.hidden_states[inject_layer])
    layer = model.base_model.encoder.layer[inject_layer]
    hook = layer.register_forward_pre_hook(lambda module, args: (args[0] + noise, *args[1:]))
    torch.manual_seed(7)
    noisy = model(**batch, output_hidden_states=True)
    hook.remove()
    tokens = batch["attention_mask"].bool()
    penalty = sum(weights[k - 1] * (noisy.hidden_states[k] - clean.hidden_states[k]).square()
                  .sum(-1)[tokens].mean() for k in range(inject_layer + 1, len(weights) + 1))
    if include_logits:
        penalty = penalty + (noisy.logits - clean.logits).square().sum(-1).mean()
    return penalty


@pytest.mark.parametrize("include_logits, train", [(False, False), (True, False), (True, True)])
def test_penalty_matches_whole_forward_passes_with_the_noise_injected(minilm, rte_batch,
                                                                     include_logits, train):
    weights = [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
    lnsr = LNSR(sigma=0.05, noise="absolute", inject_layer=2, layer_weights=weights,
                include_logits=include_logits)
    model = _setup(lnsr, minilm, train)
    expected = _with_noise_injected(model, rte_batch, 2, 0.05, weights, include_logits)
    torch.testing.assert_close(_penalty(lnsr, model, rte_batch), expected)


TINY = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 40}


@pytest.mark.parametrize("config", [BertConfig(**TINY), RobertaConfig(**TINY),
                                    ElectraConfig(embedding_size=8, **TINY)],
                         ids=["bert", "roberta", "electra"])
@pytest.mark.parametrize("train", [False, True])
def test_tiny_bert_family_models_in_training_and_evaluation(config, train):
    model = {"bert": BertForSequenceClassification, "roberta": RobertaForSequenceClassification,
             "electra": ElectraForSequenceClassification}[config.model_type](config).train(train)
    ids = torch.tensor([[0, 5, 6, 7, 2, 1, 1], [0, 5, 6, 7, 8, 9, 2]])  # 1 pads
    batch = {"input_ids": ids, "attention_mask": (ids != 1).long()}
    lnsr = LNSR(sigma=0.1, noise="absolute", inject_layer=1, include_logits=True)
    set_up(lnsr, model, RTE, frozenset())
    expected = _with_noise_injected(model, batch, 1, 0.1, [1.0] * 3, include_logits=True)
    assert expected > 1e-4
    torch.testing.assert_close(_penalty(lnsr, model, batch), expected)


@pytest.mark.parametrize("inject_layer", [0, 3])
def test_bf16_agrees_with_fp32_at_the_smallest_searched_sigma(minilm, rte_batch, inject_layer):
    sigma = LNSR.search_space(LAYERS)["sigma"].low
    lnsr = LNSR(sigma=sigma, inject_layer=inject_layer)
    model = _setup(lnsr, minilm, train=True)
    computed_in = {}
    for k, layer in enumerate(model.bert.encoder.layer):
        layer.attention.self.query.register_forward_hook(
            lambda module, args, out, k=k: computed_in.__setitem__(k, out.dtype))
    fp32 = _penalty(lnsr, model, rte_batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = _penalty(lnsr, model, rte_batch)
    assert computed_in == {k: torch.bfloat16 if k < inject_layer else torch.float32
                           for k in range(LAYERS)}
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.05)


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
    with pytest.raises(RegbenchError, match="Cannot find the encoder layers"):
        set_up(LNSR(), distilbert, RTE)
    with pytest.raises(RegbenchError, match="inject_layer must be in 0..5"):
        set_up(LNSR(inject_layer=LAYERS), minilm[0], RTE)
    with pytest.raises(RegbenchError, match="one weight per layer"):
        set_up(LNSR(layer_weights=[1.0]), minilm[0], RTE)
    with pytest.raises(RegbenchError, match="noise = 'gaussian' is not allowed; it must be one of"):
        LNSR(noise="gaussian")


def test_defaults_and_search_space():
    assert {k: LNSR.defaults[k] for k in ("lambda", "sigma", "noise", "inject_layer")} == {
        "lambda": 0.3, "sigma": 0.05, "noise": "relative", "inject_layer": 0}
    space = LNSR.search_space(LAYERS)
    assert space == {"lambda": FloatDistribution(0.01, 9.0, log=True),
                     "sigma": FloatDistribution(0.01, 0.2, log=True),
                     "inject_layer": IntDistribution(0, LAYERS - 1)}
    assert set(space) <= set(LNSR.defaults)
    low, high = space["lambda"].low, space["lambda"].high
    assert (low * high) ** 0.5 == pytest.approx(0.3)  # centred on the default, in log scale


def test_default_penalty_gradient_is_of_the_order_of_the_task_loss_gradient(minilm, rte_batch):
    lnsr = LNSR()
    model = _setup(lnsr, minilm, train=True)
    torch.manual_seed(7)
    outputs = model(**rte_batch, output_hidden_states=True)
    torch.manual_seed(1)
    penalty = lnsr.params["lambda"] * lnsr.penalty(rte_batch, outputs)
    parameters = [p for p in model.parameters() if p.requires_grad]

    def norm(loss):
        grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
        return torch.sqrt(sum(g.square().sum() for g in grads if g is not None))

    assert 0.3 <= (norm(penalty) / norm(outputs.loss)).item() <= 3


def test_a_training_run_leaves_nothing_of_lnsr_behind(minilm, rte_batch):
    lnsr = LNSR(inject_layer=2, include_logits=True)
    model, head = minilm
    layers = model.bert.encoder.layer
    state = set_up(lnsr, model, RTE, head, recipe=Recipe(precision="fp32", epochs=0,
                                                          min_steps=10))
    assert all("forward" in vars(layer) for layer in layers[2:])  # the fp32 wrappers
    state.batch = rte_batch
    training_step(state, lnsr)
    lnsr.before_evaluate(state)  # evaluation computes in the run's own precision
    assert not any("forward" in vars(module) for module in model.modules())
    lnsr.after_evaluate(state)
    lnsr.after_training(state)
    lnsr.before_evaluate(state)  # the test's evaluation, after training
    lnsr.after_evaluate(state)
    assert not any("forward" in vars(module) or module._forward_pre_hooks
                   for module in model.modules())
