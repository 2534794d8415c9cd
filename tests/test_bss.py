"""bss against Chen et al.'s penalty, η · Σ_{i≤k} σ²₋ᵢ(F): known singular values, the value and
gradient against the eigenvalues of F·Fᵀ, and the features it reads, the pooled ones the head
reads, under both poolings."""

from __future__ import annotations

import pytest
import torch
from optuna.distributions import FloatDistribution

from regbench.harness import set_up
from regbench.modeling import load_model
from regbench.plugin_tools import caught_pooled
from regbench.plugins import build
from regbench.registry.bss import BSS, spectral_shrinkage
from regbench.tasks import get_task

RTE = get_task("rte")


def _smallest_eigenvalues(features: torch.Tensor, k: int) -> torch.Tensor:
    """Σ of the k smallest eigenvalues of F·Fᵀ (B × B), in float64: the σ²₋ᵢ of F, for B ≤ d."""
    features = features.double()
    return torch.linalg.eigvalsh(features @ features.T)[:k].sum()


def test_known_singular_values():
    # Orthogonal rows of norms 3, 2 and ½: singular values 3, 2, ½.
    features = torch.zeros(3, 5)
    features[0, 0], features[1, 3], features[2, 1] = 3.0, -2.0, 0.5
    assert spectral_shrinkage(features, 1).item() == pytest.approx(0.25)
    assert spectral_shrinkage(features, 2).item() == pytest.approx(4.25)
    assert spectral_shrinkage(features, 5).item() == pytest.approx(13.25)  # all there are


@pytest.mark.parametrize("k", [1, 3])
def test_value_and_gradient_match_the_eigenvalues_of_the_gram_matrix(k):
    features = torch.randn(6, 10, requires_grad=True)
    penalty = spectral_shrinkage(features, k)
    expected = _smallest_eigenvalues(features, k)
    torch.testing.assert_close(penalty.double(), expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(penalty, features)
    (reference,) = torch.autograd.grad(expected, features)
    torch.testing.assert_close(grad, reference.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_penalty_is_on_the_pooled_features_the_head_reads(pooling, rte_batch):
    model, head = load_model("minilm", RTE, seed=0, pooling=pooling)
    model.eval()  # no dropout: the pooled features below are the main pass's
    bss = BSS(eta=0.5)
    set_up(bss, model, RTE, head)
    with caught_pooled(model) as caught:  # as the harness hands them to the hooks
        outputs = model(**rte_batch)
    outputs.pooled = caught[0]
    loss = bss.loss(model, rte_batch, outputs, outputs.loss)
    inputs = {k: v for k, v in rte_batch.items() if k != "labels"}
    pooled = model.bert(**inputs).pooler_output
    if pooling == "mean":  # by hand: the mean of the real tokens' last hidden states
        hidden = model.bert(**inputs).last_hidden_state
        mask = rte_batch["attention_mask"].unsqueeze(-1).float()
        torch.testing.assert_close(pooled, (hidden * mask).sum(1) / mask.sum(1))
    term = 0.5 * _smallest_eigenvalues(pooled, 1)
    assert term > 0
    torch.testing.assert_close((loss - outputs.loss).double(), term, rtol=1e-4, atol=1e-7)


def test_registration_defaults_cost_and_search_space():
    bss = build("bss")
    assert type(bss) is BSS and bss.params == {"eta": 1e-3, "k": 1}
    assert bss.extra_passes() == 0.0 and bss.setup_passes() == 0.0
    assert BSS.search_space(6) == {"eta": FloatDistribution(1e-5, 1e-1, log=True)}
