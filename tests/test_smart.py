"""smart against its definition in regularizers.md: ℓ_s, where δ lands, the ascent, the loss terms
(the adversarial one as mt-dnn computes it), the teacher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from regbench.errors import RegbenchError
from regbench.harness import set_up
from regbench.modeling import load_model
from regbench.registry import smart as smart_module
from regbench.registry.smart import (
    Smart,
    adversarial_perturbation,
    divergence,
    stable_kl,
    unit_inf_norm,
)
from regbench.tasks import get_task

RTE = get_task("rte")
MNLI = get_task("mnli")  # three labels: a KL over more than two classes
TINY = {"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 16, "max_position_embeddings": 40, "num_labels": 3,
        "initializer_range": 0.5}  # far from 0.02: logits that differ enough to compare


def _tiny(kind: str) -> torch.nn.Module:
    """A tiny BERT-family classifier built in code; ELECTRA's embeddings narrower than its
    encoder, so that its `embeddings_project` is in play."""
    return {"bert": lambda: BertForSequenceClassification(BertConfig(**TINY)),
            "roberta": lambda: RobertaForSequenceClassification(RobertaConfig(**TINY)),
            "electra": lambda: ElectraForSequenceClassification(ElectraConfig(embedding_size=6,
                                                                              **TINY)),
            }[kind]()


def _tiny_batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[0, 5, 6, 7, 2, 1, 1], [0, 5, 6, 7, 8, 9, 2], [0, 11, 12, 2, 1, 1, 1]])
    mask = (ids != 1).long()  # 1 pads (RoBERTa's pad id; the others only see the mask)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2, 1])}


def _logits_from_the_embedding_output(model, batch, embedded: torch.Tensor) -> torch.Tensor:
    """f(e) computed by hand from the embedding output: the encoder called on it directly (after
    ELECTRA's projection), then the classification head, in eval mode."""
    base = model.base_model
    h = base.embeddings_project(embedded) if hasattr(base, "embeddings_project") else embedded
    additive_mask = (1.0 - batch["attention_mask"][:, None, None, :].float()) * -1e9
    sequence = base.encoder(h, attention_mask=additive_mask).last_hidden_state
    if isinstance(model, BertForSequenceClassification):
        return model.classifier(base.pooler(sequence))
    return model.classifier(sequence)


def _mt_dnn_symmetric_kl(input_logits, target_logits) -> torch.Tensor:
    """mt-dnn's SymKlCriterion as its formula reads: KL(sg(q)‖p) + KL(sg(p)‖q), batch mean."""
    p_log, q_log = input_logits.log_softmax(-1), target_logits.log_softmax(-1)
    return (F.kl_div(p_log, q_log.exp().detach(), reduction="batchmean")
            + F.kl_div(q_log, p_log.exp().detach(), reduction="batchmean"))


def _setup(smart: Smart, minilm) -> torch.nn.Module:
    model, head = minilm
    set_up(smart, model, RTE, head)
    return model


def _main_pass(smart: Smart, model, batch):
    smart.before_forward(smart.state)
    return model(**batch)


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


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


def test_detached_targets_keep_the_value_and_give_mt_dnn_gradients():
    a, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    ours = divergence(a, b, False, detached_targets=True).mean()
    ours_grads = torch.autograd.grad(ours, (a, b))
    reference = _mt_dnn_symmetric_kl(a, b)
    torch.testing.assert_close(ours, reference)
    for ours_grad, reference_grad in zip(ours_grads, torch.autograd.grad(reference, (a, b)),
                                         strict=True):
        torch.testing.assert_close(ours_grad, reference_grad)
    # Each side's gradient is p − q over the batch: half the full symmetric KL's near agreement.
    p, q = a.softmax(-1).detach(), b.softmax(-1).detach()
    torch.testing.assert_close(ours_grads[0], (p - q) / 4)
    near = b.detach() + 1e-3 * torch.randn(4, 3)
    near.requires_grad_()
    full = torch.autograd.grad(divergence(near, b.detach(), False).sum(), near)[0]
    detached = torch.autograd.grad(divergence(near, b.detach(), False, True).sum(), near)[0]
    torch.testing.assert_close(full, 2 * detached, rtol=0.02, atol=1e-9)


def test_regression_uses_the_squared_error_on_both_sides():
    a = torch.tensor([[1.5], [0.0]], requires_grad=True)
    b = torch.tensor([[0.5], [-2.0]], requires_grad=True)
    for detached in (False, True):  # mt-dnn's MseCriterion detaches neither side
        value = divergence(a, b, regression=True, detached_targets=detached)
        torch.testing.assert_close(value, torch.tensor([1.0, 4.0]))
        grad_a, grad_b = torch.autograd.grad(value.sum(), (a, b))
        torch.testing.assert_close(grad_a, torch.tensor([[2.0], [4.0]]))
        torch.testing.assert_close(grad_b, -grad_a)


@pytest.mark.parametrize("kind", ["bert", "roberta", "electra"])
def test_adversarial_term_perturbs_the_embedding_output_as_mt_dnn(kind, monkeypatch):
    """With δ fixed, R_s and its gradients equal a computation by hand: the encoder called on
    e + δ, and mt-dnn's symmetric KL with detached targets."""
    model = _tiny(kind).eval()  # no dropout: both computations see the same function
    batch = _tiny_batch()
    smart = Smart(teacher=False, lambda_s=2.5)
    set_up(smart, model, MNLI, frozenset())
    width = model.config.embedding_size if kind == "electra" else model.config.hidden_size
    delta = torch.randn(3, 7, width).requires_grad_()
    monkeypatch.setattr(smart_module, "adversarial_perturbation", lambda *args: delta)

    outputs = _main_pass(smart, model, batch)
    outputs.logits.retain_grad()
    adversarial = smart.loss(model, batch, outputs, torch.zeros(()))  # the term alone
    adversarial.backward()

    clean = outputs.logits.detach().requires_grad_()
    expected_delta = delta.detach().clone().requires_grad_()
    embedded = model.base_model.embeddings(input_ids=batch["input_ids"])
    perturbed = _logits_from_the_embedding_output(model, batch, embedded + expected_delta)
    expected = 2.5 * _mt_dnn_symmetric_kl(clean, perturbed)
    expected.backward()
    assert expected > 1e-3
    torch.testing.assert_close(adversarial, expected)
    torch.testing.assert_close(outputs.logits.grad, clean.grad)
    torch.testing.assert_close(delta.grad, expected_delta.grad)


@pytest.mark.parametrize("kind", ["bert", "electra"])
def test_one_ascent_step_follows_the_formula_with_a_unit_inf_norm_per_token(kind):
    model = _tiny(kind).eval()
    batch = _tiny_batch()
    inputs = _inputs(batch)
    embedded = model.base_model.embeddings(input_ids=batch["input_ids"]).detach()
    clean = model(**inputs).logits.detach()
    torch.manual_seed(1)
    delta = adversarial_perturbation(model, embedded, inputs, clean, regression=False,
                                     sigma=1e-2, eta=1e-3, steps=1)
    assert all(p.grad is None for p in model.parameters())  # the ascent differentiates δ alone
    torch.testing.assert_close(delta.abs().amax(-1), torch.ones(delta.shape[:-1]))

    torch.manual_seed(1)
    start = (1e-2 * torch.randn_like(embedded)).requires_grad_()
    p_log = _logits_from_the_embedding_output(model, batch, embedded + start).log_softmax(-1)
    q_log = clean.log_softmax(-1)
    ascent = ((p_log.exp() - q_log.exp()) * (p_log - q_log)).sum()
    (grad,) = torch.autograd.grad(ascent, start)
    step = start.detach() + 1e-3 * grad
    torch.testing.assert_close(delta, step / step.abs().amax(-1, keepdim=True))


def _mt_dnn_odds(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """mt-dnn's −log(1/(x + ε) − 1 + ε), rewritten: log((x + ε) / (1 − (1 − ε)(x + ε)))."""
    return ((x + eps) / (1 - (1 - eps) * (x + eps))).log()


def test_stable_kl_matches_a_hand_computation_and_its_gradient_flows_through_p_alone():
    # p = (1/4, 3/4), q = (1/2, 1/2), ε = 0: r(p) = (−ln 3, ln 3), r(q) = 0, so
    # 2 Σ p (r(p) − r(q)) = 2 (−¼ + ¾) ln 3 = ln 3. With a = 2 (r(p) − r(q)) constant, the
    # gradient in the logits is p ⊙ (a − Σ p a) = (−¾ ln 3, ¾ ln 3).
    logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    value = stable_kl(logits, torch.zeros(1, 2), eps=0.0)  # in fp32, as mt-dnn's
    assert value.item() == pytest.approx(math.log(3.0), rel=1e-6)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    torch.testing.assert_close(grad, torch.tensor([[-0.75, 0.75]]) * math.log(3.0))
    # mt-dnn's ε = 1e-6, on three classes, against the formula rewritten.
    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    p, q = a.softmax(-1), b.softmax(-1)
    expected = (2 * p * (_mt_dnn_odds(p) - _mt_dnn_odds(q))).sum(-1)
    torch.testing.assert_close(stable_kl(a, b), expected.float())


def test_mt_dnn_ascent_climbs_stable_kl_and_divides_by_the_norm_plus_epsilon():
    model = _tiny("bert").eval()
    batch = _tiny_batch()
    inputs = _inputs(batch)
    embedded = model.base_model.embeddings(input_ids=batch["input_ids"]).detach()
    clean = model(**inputs).logits.detach()
    torch.manual_seed(1)
    delta = adversarial_perturbation(model, embedded, inputs, clean, False, 1e-5, 1e-3, 1,
                                     ascend_stable_kl=True, norm_eps=1e-6)

    torch.manual_seed(1)
    start = (1e-5 * torch.randn_like(embedded)).requires_grad_()
    p = _logits_from_the_embedding_output(model, batch, embedded + start).softmax(-1)
    q = clean.softmax(-1)
    ascent = (2 * p * (_mt_dnn_odds(p.detach()) - _mt_dnn_odds(q))).sum()
    (grad,) = torch.autograd.grad(ascent, start)
    step = start.detach() + 1e-3 * grad
    torch.testing.assert_close(delta, step / (step.abs().amax(-1, keepdim=True) + 1e-6))
    # Not the symmetric KL's direction, and each token's ∞-norm below 1.
    torch.manual_seed(1)
    symmetric = adversarial_perturbation(model, embedded, inputs, clean, False, 1e-5, 1e-3, 1,
                                         norm_eps=1e-6)
    assert not torch.allclose(delta, symmetric)
    assert (delta.abs().amax(-1) < 0.99).all()


def _clean_pass(minilm, batch):
    """MiniLM in eval mode, the batch's inputs, its embedding output and its logits."""
    model, _ = minilm
    model.eval()
    inputs = _inputs(batch)
    embedded = model.bert.embeddings(input_ids=batch["input_ids"],
                                     token_type_ids=batch["token_type_ids"])
    return model, inputs, embedded, model(**inputs).logits


def test_mt_dnn_options_shrink_minilms_perturbation_to_its_measured_norm(minilm, rte_batch):
    """δ's per-token ∞-norm m/(m + 1e-6), m a few times 1e-5, δ₀'s: 0.96–0.98 measured, where
    the default's is 1."""
    model, inputs, embedded, clean = _clean_pass(minilm, rte_batch)
    delta = adversarial_perturbation(model, embedded, inputs, clean, False, 1e-5, 1e-3, 1,
                                     ascend_stable_kl=True, norm_eps=1e-6)
    norms = delta.abs().amax(-1)
    assert 0.94 < norms.min() and norms.max() < 0.985


def _hooks(model) -> set[tuple[str, int]]:
    return {(name, key) for name, module in model.named_modules()
            for key in (*module._forward_hooks, *module._forward_pre_hooks)}


def test_the_main_pass_embedding_output_is_caught_once_and_no_hook_outlives_training(minilm,
                                                                                      rte_batch):
    smart = Smart()
    model = _setup(smart, minilm)
    model.train()
    model(**rte_batch, output_hidden_states=True)  # not armed: nothing caught
    assert smart.embedded.output is None
    transformers_own = _hooks(model)  # transformers keeps hooks that record hidden states
    smart.before_forward(smart.state)
    outputs = model(**rte_batch, output_hidden_states=True)
    # The encoder's input, dropout of the embeddings included.
    assert torch.equal(smart.embedded.output, outputs.hidden_states[0])
    assert _hooks(model) == transformers_own  # the perturbed passes are not caught
    smart.loss(model, rte_batch, outputs, outputs.loss)
    assert smart.embedded.output is None  # not kept past the step
    smart.before_forward(smart.state)  # armed for a pass that never comes
    smart.after_training(smart.state)
    assert _hooks(model) == transformers_own


def test_ascent_raises_the_divergence_above_random_directions(minilm, rte_batch):
    model, inputs, embedded, clean = _clean_pass(minilm, rte_batch)

    def divergence_at(delta):
        with torch.no_grad():
            return divergence(smart_module.logits_at(model, inputs, embedded + delta), clean,
                              False).sum()

    # ℓ_s is flat at δ = 0, so with the default η the step barely moves δ₀: a large η lets the
    # gradient decide the direction, which must then be an ascent one.
    delta = adversarial_perturbation(model, embedded, inputs, clean, False, 1e-5, eta=1e4,
                                     steps=1)
    random = [divergence_at(unit_inf_norm(torch.randn_like(delta))) for _ in range(3)]
    assert divergence_at(delta) > 5 * max(random)


@pytest.mark.parametrize("options", [{}, {"norm_eps": 1e-6, "ascent": "stable_kl"}])
def test_loss_without_teacher_is_task_loss_plus_lambda_times_the_adversarial_term(minilm,
                                                                                 rte_batch,
                                                                                 options):
    smart = Smart(teacher=False, lambda_s=2.5, **options)
    model = _setup(smart, minilm)
    assert smart.teacher is None
    model.eval()  # no dropout: the two computations below see the same function
    outputs = _main_pass(smart, model, rte_batch)
    torch.manual_seed(1)
    loss = smart.loss(model, rte_batch, outputs, outputs.loss)

    torch.manual_seed(1)
    inputs = _inputs(rte_batch)
    embedded = model.bert.embeddings(input_ids=rte_batch["input_ids"],
                                     token_type_ids=rte_batch["token_type_ids"])
    delta = adversarial_perturbation(model, embedded, inputs, outputs.logits, False, 1e-5, 1e-3,
                                     1, options.get("ascent") == "stable_kl",
                                     options.get("norm_eps", 0.0))
    perturbed = smart_module.logits_at(model, inputs, embedded + delta)
    expected = outputs.loss + 2.5 * _mt_dnn_symmetric_kl(outputs.logits, perturbed)
    torch.testing.assert_close(loss, expected)


def test_regression_tasks_get_the_squared_error(stsb_data):
    # On one output the symmetric KL is zero whatever the logits: only the squared error is not.
    stsb = get_task("stsb")
    model, head = load_model("minilm", stsb, seed=0)
    smart = Smart(teacher=False)
    set_up(smart, model, stsb, head)
    model.eval()
    batch = stsb_data.train.collate(list(range(8)), pad_id=0)
    outputs = _main_pass(smart, model, batch)
    torch.manual_seed(1)
    # A task loss of 0 leaves the term alone: a difference of two losses in float32 would
    # keep few of its digits.
    adversarial = smart.loss(model, batch, outputs, torch.zeros(()))
    torch.manual_seed(1)
    inputs = _inputs(batch)
    embedded = model.bert.embeddings(input_ids=batch["input_ids"],
                                     token_type_ids=batch["token_type_ids"])
    delta = adversarial_perturbation(model, embedded, inputs, outputs.logits, True, 1e-5, 1e-3, 1)
    perturbed = smart_module.logits_at(model, inputs, embedded + delta)
    expected = F.mse_loss(outputs.logits, perturbed)
    assert expected > 0
    torch.testing.assert_close(adversarial, expected)


def test_teacher_term_is_mu_times_the_divergence_to_the_teacher(minilm, rte_batch):
    on, off = Smart(mu=3.0), Smart(teacher=False)
    model = _setup(on, minilm)
    set_up(off, model, RTE, minilm[1])
    with torch.no_grad():  # move the student away from its teacher
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=1e-2)
    model.eval()
    losses = []
    for smart in (on, off):
        outputs = _main_pass(smart, model, rte_batch)
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
    outputs = _main_pass(smart, model, rte_batch)
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


def test_rejects_models_without_an_embedding_layer():
    gpt2 = GPT2ForSequenceClassification(GPT2Config(vocab_size=32, n_embd=8, n_layer=1,
                                                    n_head=2))
    with pytest.raises(RegbenchError, match="cannot find the embedding layer"):
        set_up(Smart(), gpt2, RTE)


def test_declares_its_cost_and_search_space():
    assert Smart().params["norm_eps"] == 0.0 and Smart().params["ascent"] == "symmetric_kl"
    assert Smart().extra_passes() == pytest.approx(2 + 1 / 3)
    assert Smart(teacher=False, K=2).extra_passes() == 3
    assert set(Smart.search_space(6)) == {"lambda_s", "mu"}
    assert set(Smart.search_space(6)) <= set(Smart.defaults)
