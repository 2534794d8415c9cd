"""NoisyTune: a little uniform noise on the pretrained weights before fine-tuning
(regularizers.md, "More methods")."""

from __future__ import annotations

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Regularizer, State
from regbench.plugin_tools import drawn_apart


class NoisyTune(Regularizer):
    """Before training, each pretrained parameter tensor W becomes

        W + U(−λ/2, λ/2) · std(W)

    one uniform draw per element, std(W) the tensor's own (sample) standard deviation before the
    noise. Which tensors: every parameter the checkpoint held, biases and LayerNorm vectors
    included, as the authors' code perturbs every named parameter of the pretrained model; the
    new task head is left out, being freshly drawn already (and a one-output head has no std).
    `matrices_only` restricts the noise to tensors of two or more dimensions, the paper's
    "parameter matrices" taken literally. The draws are a function of the run's seed and leave
    the run's dropout masks those of vanilla.
    """

    name = "noisytune"
    description = ("Perturb each pretrained weight tensor with uniform noise scaled by its own "
                   "standard deviation, once, before fine-tuning.")
    citation = ("Wu et al., ACL 2022, NoisyTune: A Little Noise Can Help You Finetune Pretrained "
                "Language Models Better")
    hyperparameters = {"lambda": Param(0.15, ge=0, le=10), "matrices_only": Param(False)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        # Around the paper's 0.15, from no noise to twice it.
        return {"lambda": FloatDistribution(0.0, 0.3)}

    def setup(self, model: torch.nn.Module, state: State) -> None:
        intensity = self.params["lambda"]
        with drawn_apart(state.device), torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in state.head_parameters or (self.params["matrices_only"]
                                                     and parameter.dim() < 2):
                    continue
                spread = intensity * parameter.std()
                parameter.add_((torch.rand_like(parameter) - 0.5) * spread)
