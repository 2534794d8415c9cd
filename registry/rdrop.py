"""R-Drop: every batch goes through the model twice, under two dropout masks, and the two
predictions are pulled toward each other (regularizers.md, "More methods")."""

from __future__ import annotations

from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Regularizer, State
from regbench.registry.smart import divergence


class RDrop(Regularizer):
    """The paper's per-example loss ℓ₁ + ℓ₂ + α · ½ (KL(P₁‖P₂) + KL(P₂‖P₁)), halved and averaged
    over the batch:

        loss = ½ (ℓ₁ + ℓ₂) + α/2 · mean over the batch of D(f(x; mask₁), f(x; mask₂))

    The half keeps the task term at vanilla's scale, which matters under the shared recipe's
    gradient clipping, while `alpha` keeps the paper's meaning (its GLUE runs use 0.1 to 1). The
    authors' README snippet weighs the KL by α against the *mean* of the two cross-entropies, so
    its α is half of this one.

    D is the symmetric KL of the paper, ½ (KL(P₁‖P₂) + KL(P₂‖P₁)), for classification; for
    regression, where the task loss is the squared error (the negative log-likelihood of a
    Gaussian of variance ½), D is the same symmetric KL between those Gaussians, (o₁ − o₂)²: the
    squared gap that the authors' STS-B code adds.

    The first pass is the harness's own; the second runs here in the mode the harness left the
    model, so without dropout (eval mode, or a dropout probability of 0) both passes agree and the
    loss is the task loss. Gradients flow through both passes and both sides of D.
    """

    name = "rdrop"
    description = "Two dropout passes per batch; the symmetric KL between their predictions."
    citation = "Liang et al., NeurIPS 2021, R-Drop: Regularized Dropout for Neural Networks"
    hyperparameters = {"alpha": Param(1.0, ge=0, le=1e3)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"alpha": FloatDistribution(0.1, 10.0, log=True)}

    def extra_passes(self) -> float:
        return 1.0

    def setup(self, model: torch.nn.Module, state: State) -> None:
        self.regression = state.task.is_regression

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> torch.Tensor:
        second = model(**batch)
        gap = divergence(outputs.logits, second.logits, self.regression).mean()
        if not self.regression:
            gap = gap / 2  # smart's ℓ_s adds the two directions; the paper averages them
        return (task_loss + second.loss) / 2 + self.params["alpha"] / 2 * gap
