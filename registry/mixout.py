"""Mixout: during training, mix each linear weight with its starting value, column by column."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from optuna.distributions import BaseDistribution, FloatDistribution
from torch import nn

from regbench.params import Param
from regbench.plugin import Regularizer, State


class MixLinear(nn.Linear):
    """A linear layer whose weight `W`, in training, is mixed with a fixed target `U`:

        m ~ Bernoulli(1 − p), one draw per input column, per forward pass
        W_mix = ((1 − m) ⊙ U + m ⊙ W − p·U) / (1 − p)  =  U + m ⊙ (W − U) / (1 − p)

    so that E[W_mix] = W. The bias is not mixed, and evaluation uses `W` unchanged. Gradients are
    autograd's through this formula, ∂W_mix/∂W = m / (1 − p); the authors' custom backward omits
    the 1 / (1 − p), so their gradients are smaller by a factor 1 − p.

    The layer adopts the parameters of `linear` (same tensors, same names) and takes their current
    value as `U`.
    """

    def __init__(self, linear: nn.Linear, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"The mixout probability must lie in [0, 1], not {p}.")
        # Built on the meta device: its own fresh weights would be thrown away at once.
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device="meta")
        self.weight = linear.weight
        self.bias = linear.bias
        self.p = p
        self.train(linear.training)
        # Not persistent: the fine-tuned state dict keeps the architecture's keys and loads into
        # the plain model.
        self.register_buffer("target", linear.weight.detach().clone(), persistent=False)

    def mixed_weight(self) -> torch.Tensor:
        """One draw of W_mix, with a fresh mask."""
        if self.p == 0.0:
            return self.weight
        if self.p == 1.0:  # the formula is 0/0 there; its limit is U
            return self.target
        keep = torch.empty(1, self.in_features, device=self.weight.device, dtype=self.weight.dtype)
        scale = keep.bernoulli_(1.0 - self.p).div_(1.0 - self.p)
        return torch.addcmul(self.target, scale, self.weight - self.target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.mixed_weight() if self.training else self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


class Mixout(Regularizer):
    """Swaps every `nn.Linear` of the encoder and the pooler (`model.base_model`) for a
    `MixLinear` that mixes toward the pretrained weight, and, with `mix_head`, those of the task
    head toward their own initialisation, as the authors' Hugging Face example does.

    Dropout is switched off (probability 0) in the same region, as in that example: every
    `nn.Dropout` of the base model (for BERT: the embeddings' dropout, and in each layer the
    attention-probability dropout and the two hidden-state dropouts) and, with `mix_head`, those
    of the head (BERT's dropout before the classifier).
    """

    name = "mixout"
    description = ("Mix each linear weight with its pretrained value at random, column by column, "
                   "during training; dropout off.")
    citation = ("Lee, Cho & Kang, ICLR 2020, Mixout: Effective regularization to finetune "
                "large-scale pretrained language models")
    hyperparameters = {"p": Param(0.7, ge=0, le=1), "mix_head": Param(True)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"p": FloatDistribution(0.1, 0.9)}

    def setup(self, model: torch.nn.Module, context: State) -> None:
        region = model if self.params["mix_head"] else model.base_model
        for parent in list(region.modules()):
            for name, child in parent.named_children():
                if isinstance(child, nn.Dropout):
                    child.p = 0.0
                elif type(child) is nn.Linear:  # exactly: a MixLinear is not wrapped again
                    setattr(parent, name, MixLinear(child, self.params["p"]))
