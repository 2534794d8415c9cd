"""BSS: batch spectral shrinkage, a penalty on the smallest singular values of the batch's
features (Chen et al., NeurIPS 2019)."""

from __future__ import annotations

from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.errors import RegbenchError
from regbench.params import Param
from regbench.plugin import Regularizer


def spectral_shrinkage(features: torch.Tensor, k: int) -> torch.Tensor:
    """Σ_{i=1..k} σ²₋ᵢ: the squares of the k smallest singular values of `features` (examples ×
    dimensions), in fp32 (all of them when there are fewer than k)."""
    with torch.autocast(features.device.type, enabled=False):
        singular = torch.linalg.svdvals(features.float())  # in descending order
    return singular[-k:].square().sum()


class BSS(Regularizer):
    """loss = task loss + η · Σ_{i=1..k} σ²₋ᵢ(F)

    F is the batch's feature matrix (B examples × d), the features the task head reads
    (`outputs.pooled`): the model's pooled output before the head's dropout, whichever the
    recipe's pooling (BERT's pooler on [CLS], or the mean of the tokens); σ₋ᵢ is its i-th
    smallest singular value, of the min(B, d) it has. Gradients flow into the encoder through the
    singular values (σᵢ²'s gradient in F, 2σᵢ·uᵢvᵢᵀ, is exact while they are distinct).

    The defaults are the paper's and its code's, for images and for BERT on GLUE alike
    (thuml/Batch-Spectral-Shrinkage, `run_glue_BSS.py`: η = 0.001 on the pooled output, k = 1).
    The search covers two decades each side of η.
    """

    name = "bss"
    description = ("Batch spectral shrinkage: penalise the smallest singular values of the "
                   "batch's pooled features.")
    citation = ("Chen et al., NeurIPS 2019, Catastrophic Forgetting Meets Negative Transfer: "
                "Batch Spectral Shrinkage for Safe Transfer Learning")
    hyperparameters = {"eta": Param(1e-3, ge=0, le=1e3), "k": Param(1, ge=1, le=1024)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"eta": FloatDistribution(1e-5, 1e-1, log=True)}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> torch.Tensor:
        if outputs.pooled is None:
            raise RegbenchError(f"bss reads the features the head reads, and regbench does not "
                                f"know where {type(model).__name__}'s head reads them; use a "
                                "BERT, RoBERTa or ELECTRA model.")
        return task_loss + self.params["eta"] * spectral_shrinkage(outputs.pooled,
                                                                   self.params["k"])
