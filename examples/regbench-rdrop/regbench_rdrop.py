"""R-Drop (Liang et al., NeurIPS 2021): every batch goes through the model twice, under two
dropout masks, and the two predictions are pulled toward each other."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.plugin import Context, Regularizer


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """½ (KL(P‖Q) + KL(Q‖P)) per example, for P and Q the softmax of the two sets of logits."""
    log_p, log_q = logits_a.float().log_softmax(-1), logits_b.float().log_softmax(-1)
    # KL(P‖Q) + KL(Q‖P) = Σ (P − Q)(log P − log Q): one expression, differentiable in both.
    return 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


class RDrop(Regularizer):
    """loss = ½ (ℓ(x; mask₁) + ℓ(x; mask₂)) + α · mean over the batch of D(f(x; mask₁), f(x; mask₂))

    D is the symmetric KL of the paper (with its ½) for classification and the mean squared error
    between the two outputs for regression. The first pass is the harness's own; the second is
    drawn here, in the mode the harness left the model, so without dropout (eval mode, or a
    dropout probability of 0) both passes agree and the loss is the task loss.
    """

    name = "rdrop"
    description = "Two dropout passes per batch; their predictions are pulled together."
    citation = "Liang et al., NeurIPS 2021, R-Drop: Regularized Dropout for Neural Networks"
    defaults = {"alpha": 1.0}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"alpha": FloatDistribution(0.1, 10.0, log=True)}

    def extra_passes(self) -> float:
        return 1.0

    def setup(self, model: torch.nn.Module, context: Context) -> None:
        self.regression = context.task.is_regression

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> torch.Tensor:
        second = model(**batch)
        if self.regression:
            gap = F.mse_loss(outputs.logits.float(), second.logits.float())
        else:
            gap = symmetric_kl(outputs.logits, second.logits).mean()
        return (task_loss + second.loss) / 2 + self.params["alpha"] * gap
