"""r3f against its definition: the noise's law and scale, the loss as the authors' criterion
computes it, where gradients go, and nothing left behind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from regbench.harness import set_up
from regbench.registry.r3f import R3F
from regbench.registry.smart import embedding_layer
from regbench.tasks import get_task

RTE, STSB = get_task("rte"), get_task("stsb")


def _loss(r3f: R3F, model, batch):
    r3f.before_forward(r3f.state)
    outputs = model(**batch)
    return outputs, r3f.loss(model, batch, outputs, outputs.loss)


def _fixed_noise(r3f: R3F, monkeypatch) -> list[torch.Tensor]:
    """Every noise draw of scale ε along one fixed pattern, recorded."""
    drawn = []

    def noise(like):
        z = torch.linspace(-1, 1, like.numel()).reshape(like.shape) * r3f.params["eps"]
        drawn.append(z)
        return z

    monkeypatch.setattr(r3f, "noise", noise)
    return drawn


def test_the_loss_is_the_task_loss_plus_lambda_times_the_symmetric_kl(minilm, rte_batch,
                                                                     monkeypatch):
    """Eval mode, so both passes are deterministic; the noisy logits from a hand-made pass: the
    model's embedding output replaced by e + z with a forward hook of the test's own."""
    model, head = minilm
    r3f = R3F(**{"lambda": 0.7, "eps": 1.0})  # ε large enough to move a fresh head's logits
    set_up(r3f, model, RTE, head)
    model.eval()
    drawn = _fixed_noise(r3f, monkeypatch)
    outputs, loss = _loss(r3f, model, rte_batch)
    inputs = {k: v for k, v in rte_batch.items() if k != "labels"}
    with torch.no_grad():
        hook = embedding_layer(model).register_forward_hook(lambda m, a, out: out + drawn[0])
        noisy = model(**inputs).logits
        hook.remove()
    p, q = outputs.logits.log_softmax(-1), noisy.log_softmax(-1)
    symmetric_kl = (F.kl_div(q, p.exp(), reduction="batchmean")
                    + F.kl_div(p, q.exp(), reduction="batchmean"))
    assert symmetric_kl.item() > 1e-6
    torch.testing.assert_close(loss, outputs.loss + 0.7 * symmetric_kl, rtol=1e-4, atol=1e-7)


def test_regression_takes_the_squared_error(minilm, stsb_data, monkeypatch):
    from regbench.modeling import load_model

    model, head = load_model("minilm", STSB, seed=0)
    r3f = R3F(eps=1.0)
    set_up(r3f, model, STSB, head)
    model.eval()
    drawn = _fixed_noise(r3f, monkeypatch)
    batch = stsb_data.train.collate(list(range(8)), pad_id=0)
    outputs, loss = _loss(r3f, model, batch)
    with torch.no_grad():
        hook = embedding_layer(model).register_forward_hook(lambda m, a, out: out + drawn[0])
        noisy = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        hook.remove()
    expected = outputs.loss + (outputs.logits - noisy).square().sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_the_noise_has_the_stated_law_and_scale(kind):
    r3f = R3F(noise=kind, eps=1e-5)
    z = r3f.noise(torch.zeros(200, 384))
    if kind == "uniform":
        assert z.abs().max() <= 1e-5 and z.std().item() == pytest.approx(1e-5 / 3**0.5, rel=0.02)
    else:
        assert z.std().item() == pytest.approx(1e-5, rel=0.02)
    assert abs(z.mean().item()) < 1e-7


def test_the_noisy_pass_reaches_the_encoder_not_the_embedding_layer(minilm, rte_batch):
    """The penalty through its noisy side alone (the clean logits held constant): gradients in
    the encoder, none in the embedding layer, as the authors' detached noisy embeddings give."""
    model, head = minilm
    r3f = R3F(eps=1.0)
    set_up(r3f, model, RTE, head)
    model.eval()
    r3f.before_forward(r3f.state)
    outputs = model(**rte_batch)
    outputs.logits = outputs.logits.detach()
    r3f.loss(model, rte_batch, outputs, torch.zeros(())).backward()
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in embedding_layer(model).parameters())
    assert not embedding_layer(model)._forward_hooks  # nothing armed after the step


def test_nothing_outlives_training(minilm):
    model, head = minilm
    r3f = R3F()
    state = set_up(r3f, model, RTE, head)
    r3f.before_forward(state)  # armed for a pass that never came
    r3f.after_training(state)
    assert not embedding_layer(model)._forward_hooks


def test_declares_its_cost_and_search_space():
    assert R3F().extra_passes() == 1.0
    assert set(R3F.search_space(6)) == {"lambda"}
