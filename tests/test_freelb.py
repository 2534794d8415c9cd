"""freelb against Zhu et al.'s algorithm, written out by hand beside the plugin: δ₀, K passes on
the word embeddings + δ, the gradients of L_k / K summed, δ's normalised ascent and its
projection; all K passes under the main pass's dropout masks."""

from __future__ import annotations

import math

import pytest
import torch
from optuna.distributions import FloatDistribution

from regbench.harness import set_up
from regbench.plugins import build
from regbench.registry.freelb import FreeLB
from regbench.tasks import get_task

RTE = get_task("rte")


def _loss_at(model, batch, delta: torch.Tensor) -> torch.Tensor:
    """L with δ added to the token lookup, through the model's own inputs_embeds."""
    inputs = {k: v for k, v in batch.items() if k != "input_ids"}
    lookup = model.bert.embeddings.word_embeddings(batch["input_ids"])
    return model(inputs_embeds=lookup + delta, **inputs).loss


def _by_hand(model, batch, delta0, steps, adv_lr, max_norm):
    """The parameters' summed gradients and the K losses, from δ₀."""
    delta, losses = delta0.clone(), []
    for k in range(steps):
        delta.requires_grad_()
        loss = _loss_at(model, batch, delta)
        losses.append(loss.item())
        (loss / steps).backward()
        if k == steps - 1:
            break
        grad = delta.grad
        norms = torch.stack([g.norm() for g in grad]).clamp_min(1e-8)
        delta = (delta + adv_lr * grad / norms[:, None, None]).detach()
        if max_norm > 0:
            for i in range(len(delta)):
                if delta[i].norm() > max_norm:
                    delta[i] *= max_norm / delta[i].norm()
    return [p.grad.clone() for p in model.parameters()], losses


@pytest.mark.parametrize("options", [{}, {"init_mag": 0.6, "max_norm": 0.15, "adv_lr": 0.2}])
def test_gradients_and_loss_follow_the_algorithm(tiny_bert, tiny_batches, options):
    model, head = tiny_bert  # no dropout: the hand computation sees the same function
    freelb = FreeLB(**options)
    state = set_up(freelb, model, RTE, head)
    state.batch = batch = tiny_batches[1]  # its second sequence ends in padding
    freelb.before_forward(state)
    delta0 = freelb.delta.detach().clone()
    mask = batch["attention_mask"].bool()
    assert torch.all(delta0[~mask] == 0)
    if options:  # U(−1, 1) · init_mag / √(n·d) on the real tokens
        bound = 0.6 / (batch["attention_mask"].sum(1) * 8).float().sqrt()
        assert torch.all(delta0.abs() <= bound[:, None, None]) and delta0.abs().max() > 0
    else:
        assert torch.all(delta0 == 0)
    outputs = model(**batch)
    backward, reported = freelb.loss(model, batch, outputs, outputs.loss)
    backward.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert freelb.delta is None  # nothing left for an evaluation

    model.zero_grad()
    expected, losses = _by_hand(model, batch, delta0, 3, options.get("adv_lr", 0.1),
                                options.get("max_norm", 0.0))
    assert reported.item() == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert len(set(losses)) == 3  # each pass saw another δ
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_all_k_passes_draw_the_main_passs_dropout_masks(minilm, rte_batch):
    """With a vanishing step the K passes see one function: each loss is the main pass's."""
    model, head = minilm
    model.train()
    freelb = FreeLB(adv_lr=1e-9)
    state = set_up(freelb, model, RTE, head)
    state.batch = rte_batch
    freelb.before_forward(state)
    outputs = model(**rte_batch)
    backward, reported = freelb.loss(model, rte_batch, outputs, outputs.loss)
    assert reported.item() == pytest.approx(outputs.loss.item(), rel=1e-5)
    assert (3 * backward).item() == pytest.approx(outputs.loss.item(), rel=1e-5)
    fresh = model(**rte_batch).loss.item()  # a pass of its own draws other masks
    assert not math.isclose(fresh, outputs.loss.item(), rel_tol=1e-3)


def test_registration_defaults_cost_and_search_space():
    freelb = build("freelb")
    assert type(freelb) is FreeLB
    assert freelb.params == {"adv_lr": 0.1, "steps": 3, "init_mag": 0.0, "max_norm": 0.0}
    assert freelb.extra_passes() == 2.0 and FreeLB(steps=1).extra_passes() == 0.0
    assert FreeLB.search_space(6) == {"adv_lr": FloatDistribution(0.02, 0.3, log=True),
                                      "init_mag": FloatDistribution(0.0, 0.6)}
