"""rdrop against the authors' loss, ℓ₁ + ℓ₂ + α · Σ_batch ½ (KL(P₁‖P₂) + KL(P₂‖P₁)), halved (or
the batch mean of the KL): known values, the real model's two dropout passes for classification
and regression, no dropout."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from optuna.distributions import FloatDistribution

from regbench.harness import set_up
from regbench.modeling import load_model
from regbench.plugins import build
from regbench.registry.rdrop import RDrop
from regbench.tasks import get_task


class SecondPass(torch.nn.Module):
    """A model whose every call returns the given logits and loss: the plugin's second pass."""

    def __init__(self, logits: list[list[float]], loss: float) -> None:
        super().__init__()
        self.logits, self.task_loss = torch.tensor(logits), torch.tensor(loss)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # for the optimiser set_up builds

    def forward(self, **batch):
        return SimpleNamespace(logits=self.logits, loss=self.task_loss)


def _paper_loss(first, second, regression: bool, alpha: float) -> torch.Tensor:
    """½ (ℓ₁ + ℓ₂ + α · Σ_batch D), D the two KL directions averaged (torch's own KL), or for
    regression the squared gap between the two outputs."""
    a, b = first.logits.double(), second.logits.double()
    if regression:
        gap = (a - b).square().sum(-1)
    else:
        log_p, log_q = a.log_softmax(-1), b.log_softmax(-1)
        kl_pq = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
        kl_qp = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
        gap = (kl_pq + kl_qp) / 2
    return (first.loss + second.loss + alpha * gap.sum()) / 2


def test_known_values_for_classification_and_regression():
    # P = (1/4, 3/4), Q = (1/2, 1/2): ½ (KL(P‖Q) + KL(Q‖P)) = ½ Σ (p − q)(ln p − ln q) = ln(3)/8;
    # the second example's two passes agree: D = 0. Summed over the batch: ln(3)/8, averaged:
    # ln(3)/16.
    first = torch.tensor([[0.0, math.log(3.0)], [1.0, 2.0]])
    for reduction, gap in (("sum", math.log(3) / 8), ("mean", math.log(3) / 16)):
        regularizer = RDrop(alpha=2.0, reduction=reduction)
        second = SecondPass([[0.0, 0.0], [1.0, 2.0]], loss=math.log(2.0))
        set_up(regularizer, second, get_task("rte"))
        loss = regularizer.loss(second, {}, SimpleNamespace(logits=first),
                                torch.tensor(math.log(4)))
        assert loss.item() == pytest.approx((math.log(4) + math.log(2) + 2.0 * gap) / 2,
                                            rel=1e-6)

    # Outputs 1 and 3, then 0 and 1: squared gaps of 4 and 1, the symmetric KL of two Gaussians
    # of variance ½.
    for reduction, gap in (("sum", 5.0), ("mean", 2.5)):
        regularizer = RDrop(alpha=0.5, reduction=reduction)
        second = SecondPass([[3.0], [1.0]], loss=0.5)
        set_up(regularizer, second, get_task("stsb"))
        loss = regularizer.loss(second, {}, SimpleNamespace(logits=torch.tensor([[1.0], [0.0]])),
                                torch.tensor(0.25))
        assert loss.item() == pytest.approx((0.25 + 0.5 + 0.5 * gap) / 2, rel=1e-6)


def test_the_default_is_the_authors_bert_glue_loss_halved():
    """R-Drop's `bert_kl`: CE₁ + CE₂ + 0.5 · (Σ KL(P₁‖P₂) + Σ KL(P₂‖P₁)) / 2, torch's KL summed
    over the batch and the classes, written as they write it."""
    labels = torch.tensor([0, 1, 1, 0])
    logits = [torch.randn(4, 2), torch.randn(4, 2)]
    losses = [F.cross_entropy(z, labels) for z in logits]
    regularizer = RDrop()
    second = SecondPass(logits[1].tolist(), loss=losses[1].item())
    set_up(regularizer, second, get_task("rte"))
    loss = regularizer.loss(second, {}, SimpleNamespace(logits=logits[0]), losses[0])
    p, q = logits[0].log_softmax(-1), logits[1].log_softmax(-1)
    kl = F.kl_div(p, q.exp(), reduction="none").sum()
    reverse_kl = F.kl_div(q, p.exp(), reduction="none").sum()
    authors = losses[0] + losses[1] + 0.5 * (kl + reverse_kl) / 2.0
    torch.testing.assert_close(loss, authors / 2)


def test_without_dropout_the_loss_is_the_task_loss(minilm, rte_batch):
    model, head = minilm
    model.eval()
    regularizer = RDrop(alpha=5.0)
    set_up(regularizer, model, get_task("rte"), head)
    outputs = model(**rte_batch)
    torch.testing.assert_close(regularizer.loss(model, rte_batch, outputs, outputs.loss),
                               outputs.loss)


@pytest.mark.parametrize("task_name", ["rte", "stsb"])
def test_with_dropout_the_loss_and_its_gradient_follow_the_paper(task_name, request):
    task = get_task(task_name)
    model, head = load_model("minilm", task, seed=0)
    model.train()
    batch = request.getfixturevalue(f"{task_name}_data").train.collate(list(range(4)), pad_id=0)
    regularizer = RDrop(alpha=0.7)  # D summed over the batch
    set_up(regularizer, model, task, head)
    first = model(**batch)
    rng = torch.get_rng_state()
    loss = regularizer.loss(model, batch, first, first.loss)
    torch.set_rng_state(rng)  # the plugin's second pass again: the same dropout masks
    second = model(**batch)
    assert not torch.allclose(first.logits, second.logits)  # another dropout mask

    expected = _paper_loss(first, second, task.is_regression, alpha=0.7)
    assert expected > (first.loss + second.loss) / 2  # the gap counts
    torch.testing.assert_close(loss.double(), expected)
    # Gradients flow through both passes and both sides of D, as through the expression above.
    weight = model.bert.encoder.layer[5].output.dense.weight
    (grad,) = torch.autograd.grad(loss, weight, retain_graph=True)
    torch.testing.assert_close(grad, torch.autograd.grad(expected.float(), weight)[0])


def test_registration_defaults_cost_and_search_space():
    regularizer = build("rdrop")
    assert type(regularizer) is RDrop
    assert regularizer.params == {"alpha": 0.5, "reduction": "sum"}
    assert regularizer.extra_passes() == 1.0 and regularizer.setup_passes() == 0.0
    assert RDrop.search_space(6) == {"alpha": FloatDistribution(0.05, 5.0, log=True)}
