"""R-Drop: every batch goes through the model twice, under two dropout masks, and the two
predictions are pulled toward each other (regularizers.md, "More methods")."""

from __future__ import annotations

from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Regularizer, State
from regbench.registry.smart import divergence

REDUCTIONS = ("sum", "mean")


class RDrop(Regularizer):
    """The paper's loss ℓ₁ + ℓ₂ + α · D, D = ½ (KL(P₁‖P₂) + KL(P₂‖P₁)), as the authors' GLUE code
    computes it (R-Drop's `BertForSequenceClassification.bert_kl`): the cross-entropies averaged
    over the batch, D summed over it; then halved,

        loss = ½ (ℓ₁ + ℓ₂) + α/2 · Σ over the batch of D(f(x; mask₁), f(x; mask₂))

    The half keeps the task term at vanilla's scale, which matters under the shared recipe's
    gradient clipping; α keeps the meaning of that code, whose BERT runs use α = 0.5, the default.
    The authors' README snippet and RoBERTa code weigh the same sum against the *mean* of the two
    cross-entropies, so their α is half of this one (their RoBERTa's 0.7 is 1.4 here).

    `reduction: mean` averages D over the batch instead: version 1's form, where α is B times
    the default form's at batches of B (α = 8 at 16 is the authors' 0.5).

    D is the symmetric KL of the paper for classification; for regression, where the task loss is
    the squared error (the negative log-likelihood of a Gaussian of variance ½), D is the same
    symmetric KL between those Gaussians, (o₁ − o₂)². The authors' STS-B code averages that gap
    over the batch at a weight of 1 against ℓ₁ + ℓ₂: `reduction: mean` with α = 1 here.

    The first pass is the harness's own; the second runs here in the mode the harness left the
    model, so without dropout (eval mode, or a dropout probability of 0) both passes agree and the
    loss is the task loss. Gradients flow through both passes and both sides of D.
    """

    name = "rdrop"
    version = "2"  # 2: D summed over the batch, as the authors' code; α's default theirs, 0.5
    description = "Two dropout passes per batch; the symmetric KL between their predictions."
    citation = "Liang et al., NeurIPS 2021, R-Drop: Regularized Dropout for Neural Networks"
    hyperparameters = {"alpha": Param(0.5, ge=0, le=1e3),
                       "reduction": Param("sum", choices=REDUCTIONS)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        # Two decades centred on the authors' 0.5; the paper's GLUE grid is {0.1, 0.5, 1}.
        return {"alpha": FloatDistribution(0.05, 5.0, log=True)}

    def extra_passes(self) -> float:
        return 1.0

    def setup(self, model: torch.nn.Module, state: State) -> None:
        self.regression = state.task.is_regression

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> torch.Tensor:
        second = model(**batch)
        gap = divergence(outputs.logits, second.logits, self.regression)
        gap = gap.sum() if self.params["reduction"] == "sum" else gap.mean()
        if not self.regression:
            gap = gap / 2  # smart's ℓ_s adds the two directions; the paper averages them
        return (task_loss + second.loss) / 2 + self.params["alpha"] / 2 * gap
