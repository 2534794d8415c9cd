"""R3F: a fine-tuning loss that keeps predictions still under tiny random noise on the embeddings
(regularizers.md, "More methods")."""

from __future__ import annotations

from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Regularizer, State
from regbench.registry.smart import EmbeddingOutput, divergence, logits_at

NOISE_KINDS = ("uniform", "normal")


class R3F(Regularizer):
    """loss = task loss + λ · mean over the batch of ℓ_s(f(e), f(e + z))

    e is the embedding layer's output in the main pass (caught as smart catches it), z noise of
    scale ε: uniform on [−ε, ε] (the default, as the authors' fairseq criterion) or normal
    N(0, ε²). ℓ_s is the symmetric KL between the two predictive distributions, both sides
    differentiated as in the authors' criterion, or the squared error for regression. As in that
    criterion, the noisy pass starts from a detached copy of the embeddings: its gradient reaches
    the encoder and head, not the embedding layer. The definition perturbs the embedding output,
    where fairseq adds the noise to the token lookup; at ε = 1e-5 either is far below a token's
    norm (about 10 for MiniLM after its LayerNorm).

    The noisy pass runs in the mode the harness left the model: in training it draws its own
    dropout, as the authors' second forward pass does.
    """

    name = "r3f"
    description = ("Symmetric KL between the predictions with and without tiny noise on the "
                   "embedding output.")
    citation = ("Aghajanyan et al., ICLR 2021, Better Fine-Tuning by Reducing Representational "
                "Collapse")
    hyperparameters = {"lambda": Param(1.0, ge=0, le=1e3), "eps": Param(1e-5, ge=0, le=1),
                       "noise": Param("uniform", choices=NOISE_KINDS)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        # The paper's grid for λ is {0.1, 0.5, 1, 5}; its ε stays at 1e-5.
        return {"lambda": FloatDistribution(0.1, 5.0, log=True)}

    def extra_passes(self) -> float:
        return 1.0

    def setup(self, model: torch.nn.Module, context: State) -> None:
        self.regression = context.task.is_regression
        self.embedded = EmbeddingOutput(model)

    def before_forward(self, state: State) -> None:
        self.embedded.arm()

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        eps = self.params["eps"]
        if self.params["noise"] == "uniform":
            return torch.empty_like(like).uniform_(-eps, eps)
        return torch.randn_like(like) * eps

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> torch.Tensor:
        embedded = self.embedded.take().detach()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        noisy = logits_at(model, inputs, embedded + self.noise(embedded))
        gap = divergence(outputs.logits, noisy, self.regression).mean()
        return task_loss + self.params["lambda"] * gap

    def after_training(self, state: State) -> None:
        self.embedded.close()
