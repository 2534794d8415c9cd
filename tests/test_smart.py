"""smart against its definition in regularizers.md: ℓ_s, the ascent, the loss terms, the teacher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from regbench.harness import set_up
from regbench.modeling import load_model
from regbench.registry.smart import Smart, adversarial_perturbation, divergence, unit_inf_norm
from regbench.tasks import get_task

RTE = get_task("rte")


def _setup(smart: Smart, minilm) -> torch.nn.Module:
    model, head = minilm
    set_up(smart, model, RTE, head)
    return model


def _inputs(batch):
    return {k: v for k, v in batch.items() if k not in ("input_ids", "labels")}


def test_symmetric_kl_matches_a_hand_computation():
    # p = (1/4, 3/4), q = (1/2, 1/2): Σ (p − q)(log p − log q) = ¼·ln 2 + ¼·ln(3/2) = ln(3)/4
    value = divergence(torch.tensor([[0.0, math.log(3.0)]]), torch.zeros(1, 2), regression=False)
    assert value.item() == pytest.approx(math.log(3.0) / 4, rel=1e-6)


def test_symmetric_kl_is_zero_for_equal_logits_and_positive_otherwise():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.allclose(divergence(a, a, False), torch.zeros(5), atol=1e-7)
    # Equal up to a constant shift: the same distribution.
    assert torch.allclose(divergence(a, a + 2.0, False), torch.zeros(5), atol=1e-6)
    both_ways = (F.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="none")
                 + F.kl_div(a.log_softmax(-1), b.log_softmax(-1), log_target=True,
                            reduction="none")).sum(-1)
    assert (divergence(a, b, False) > 0).all()
    torch.testing.assert_close(divergence(a, b, False), both_ways)
    torch.testing.assert_close(divergence(a, b, False), divergence(b, a, False))


def test_regression_uses_the_squared_error():
    value = divergence(torch.tensor([[1.5], [0.0]]), torch.tensor([[0.5], [-2.0]]), regression=True)
    torch.testing.assert_close(value, torch.tensor([1.0, 4.0]))


def test_one_ascent_step_follows_the_formula_with_a_unit_inf_norm_per_token(minilm, rte_batch):
    model, _ = minilm
    model.eval()
    inputs = _inputs(rte_batch)
    embeds = model.get_input_embeddings()(rte_batch["input_ids"]).detach()
    clean = model(**rte_batch).logits.detach()
    torch.manual_seed(1)
    delta = adversarial_perturbation(model, embeds, inputs, clean, regression=False, sigma=1e-5,
                                     eta=1e-3, steps=1)
    assert all(p.grad is None for p in model.parameters())  # the ascent differentiates δ alone
    torch.testing.assert_close(delta.abs().amax(-1), torch.ones(delta.shape[:-1]))

    torch.manual_seed(1)
    start = (1e-5 * torch.randn_like(embeds)).requires_grad_()
    ascent = divergence(model(inputs_embeds=embeds + start, **inputs).logits, clean, False).sum()
    (grad,) = torch.autograd.grad(ascent, start)
    step = start.detach() + 1e-3 * grad
    torch.testing.assert_close(delta, step / step.abs().amax(-1, keepdim=True))


def test_ascent_raises_the_divergence_above_random_directions(minilm, rte_batch):
    model, _ = minilm
    model.eval()
    inputs = _inputs(rte_batch)
    embeds = model.get_input_embeddings()(rte_batch["input_ids"])
    clean = model(**rte_batch).logits

    def divergence_at(delta):
        with torch.no_grad():
            return divergence(model(inputs_embeds=embeds + delta, **inputs).logits, clean,
                              False).sum()

    # ℓ_s is flat at δ = 0, so with the default η the step barely moves δ₀: a large η lets the
    # gradient decide the direction, which must then be an ascent one.
    delta = adversarial_perturbation(model, embeds, inputs, clean, False, 1e-5, eta=1e4, steps=1)
    random = [divergence_at(unit_inf_norm(torch.randn_like(delta))) for _ in range(3)]
    assert divergence_at(delta) > 5 * max(random)


def test_loss_without_teacher_is_task_loss_plus_lambda_times_the_adversarial_term(minilm,
                                                                                 rte_batch):
    smart = Smart(teacher=False, lambda_s=2.5)
    model = _setup(smart, minilm)
    assert smart.teacher is None
    model.eval()  # no dropout: the two computations below see the same function
    outputs = model(**rte_batch)
    outputs.logits.retain_grad()
    torch.manual_seed(1)
    loss = smart.loss(model, rte_batch, outputs, outputs.loss)

    torch.manual_seed(1)
    inputs = _inputs(rte_batch)
    embeds = model.get_input_embeddings()(rte_batch["input_ids"])
    delta = adversarial_perturbation(model, embeds, inputs, outputs.logits, False, 1e-5, 1e-3, 1)
    perturbed = model(inputs_embeds=embeds + delta, **inputs).logits
    expected = outputs.loss + 2.5 * divergence(perturbed, outputs.logits, False).mean()
    torch.testing.assert_close(loss, expected)
    # The adversarial term alone sends gradient into the clean logits: both sides are
    # differentiated in the final term.
    (loss - outputs.loss).backward()
    assert outputs.logits.grad.abs().sum() > 0


def test_regression_tasks_get_the_squared_error(stsb_data):
    # On one output the symmetric KL is zero whatever the logits: only the squared error is not.
    stsb = get_task("stsb")
    model, head = load_model("minilm", stsb, seed=0)
    smart = Smart(teacher=False)
    set_up(smart, model, stsb, head)
    model.eval()
    batch = stsb_data.train.collate(list(range(8)), pad_id=0)
    outputs = model(**batch)
    torch.manual_seed(1)
    # float32 loss minus float32 loss: the difference keeps about four significant digits
    adversarial = smart.loss(model, batch, outputs, outputs.loss) - outputs.loss
    torch.manual_seed(1)
    inputs = _inputs(batch)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    delta = adversarial_perturbation(model, embeds, inputs, outputs.logits, True, 1e-5, 1e-3, 1)
    perturbed = model(inputs_embeds=embeds + delta, **inputs).logits
    expected = (perturbed - outputs.logits).square().mean()
    assert expected > 0
    assert adversarial.item() == pytest.approx(expected.item(), rel=1e-3)


def test_teacher_term_is_mu_times_the_divergence_to_the_teacher(minilm, rte_batch):
    on, off = Smart(mu=3.0), Smart(teacher=False)
    model = _setup(on, minilm)
    set_up(off, model, RTE, minilm[1])
    with torch.no_grad():  # move the student away from its teacher
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=1e-2)
    model.eval()
    outputs = model(**rte_batch)
    losses = []
    for smart in (on, off):
        torch.manual_seed(1)
        losses.append(smart.loss(model, rte_batch, outputs, outputs.loss))
    teacher_logits = on.teacher(**rte_batch).logits
    term = 3.0 * divergence(outputs.logits, teacher_logits, False).mean()
    assert term > 0
    torch.testing.assert_close(losses[0] - losses[1], term)


def test_perturbed_passes_train_like_the_main_pass_and_the_teacher_stays_frozen(minilm,
                                                                               rte_batch):
    smart = Smart()
    model = _setup(smart, minilm)
    model.train()
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    outputs = model(**rte_batch)
    smart.loss(model, rte_batch, outputs, outputs.loss).backward()
    assert modes == [True] * 3  # main pass, one ascent step, the final perturbed pass
    assert not smart.teacher.training
    assert all(not p.requires_grad and p.grad is None for p in smart.teacher.parameters())


def test_teacher_follows_the_momentum_update_exactly(minilm):
    smart = Smart(beta=0.9)
    model = _setup(smart, minilm)
    for _ in range(2):
        before = [p.detach().clone() for p in smart.teacher.parameters()]
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        smart.after_step(model)
        pairs = zip(smart.teacher.parameters(), model.parameters(), strict=True)
        for old, (new, student) in zip(before, pairs, strict=True):
            torch.testing.assert_close(new, 0.9 * old + 0.1 * student)


def test_declares_its_cost_and_search_space():
    assert Smart().extra_passes() == pytest.approx(2 + 1 / 3)
    assert Smart(teacher=False, K=2).extra_passes() == 3
    assert set(Smart.search_space(6)) == {"lambda_s", "mu"}
    assert set(Smart.search_space(6)) <= set(Smart.defaults)
