"""Decoupled weight decay toward zero, with the usual BERT exemptions."""

from __future__ import annotations

from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Regularizer


def _is_layer_norm(module: torch.nn.Module) -> bool:
    # Some models ship their own LayerNorm class (T5LayerNorm, for one) that does not subclass
    # nn.LayerNorm, so the class name is checked as well as the type.
    return isinstance(module, torch.nn.LayerNorm) or "LayerNorm" in type(module).__name__


class WeightDecay(Regularizer):
    name = "weight_decay"
    description = ("Decoupled weight decay toward zero (AdamW), on every parameter but biases and "
                   "LayerNorm weights.")
    citation = "Loshchilov & Hutter, ICLR 2019, Decoupled Weight Decay Regularization"
    hyperparameters = {"weight_decay": Param(0.01, ge=0, le=1e4)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"weight_decay": FloatDistribution(1e-4, 0.3, log=True)}

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        decayed, exempt, seen = [], [], set()
        for module in model.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if not parameter.requires_grad or id(parameter) in seen:  # tied weights recur
                    continue
                seen.add(id(parameter))
                if name == "bias" or _is_layer_norm(module):
                    exempt.append(parameter)
                else:
                    decayed.append(parameter)
        return [{"params": decayed, "weight_decay": self.params["weight_decay"]},
                {"params": exempt, "weight_decay": 0.0}]
