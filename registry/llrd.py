"""Layer-wise learning-rate decay: the lower a layer, the smaller its learning rate
(regularizers.md, "More methods")."""

from __future__ import annotations

from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.modeling import encoder_layers
from regbench.params import Param
from regbench.plugin import Regularizer


class LLRD(Regularizer):
    """The parameters at depth l learn at base · decay^(T − l), base the recipe's learning rate,
    for an encoder of L layers: the embeddings are at l = 0, the i-th transformer layer at l = i,
    and the rest (the pooler, the task head) at l = T, the base rate. Where T is:

    - `top_layer: base` (the default, regularizers.md's form and Sun et al.'s, η^(l−1) = ξ·η^l
      from the top layer's η^L = base): T = L, the top layer learns at the base rate with the
      head;
    - `top_layer: decayed` (Zhang et al.'s code, revisit-bert-finetuning's
      `get_optimizer_grouped_parameters`: the pooler and classifier at base, then one factor of
      `decay` per layer from the top down, the embeddings last): T = L + 1, every layer one power
      of `decay` lower than in the default, the top layer at base · decay and the embeddings at
      base · decay^(L + 1). At decay 0.95 each encoder rate is 5% below the default's.

    One optimiser group per depth, each with its own `lr`; the recipe's warmup and decay
    multiply every group's rate alike, and no weight decay is added, as in vanilla. `decay` = 1
    is vanilla in both forms. The default 0.95 is Sun et al.'s best for BERT-base at a base rate
    of 2e-5.
    """

    name = "llrd"
    description = ("Layer-wise learning-rate decay: layer l of L learns at base · decay^(L − l), "
                   "the embeddings lowest.")
    citation = ("Howard & Ruder, ACL 2018, Universal Language Model Fine-tuning for Text "
                "Classification; Sun et al., CCL 2019, How to Fine-Tune BERT for Text "
                "Classification")
    version = "2"  # 2: the option top_layer
    hyperparameters = {"decay": Param(0.95, gt=0, le=1),
                       "top_layer": Param("base", choices=("base", "decayed"))}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"decay": FloatDistribution(0.5, 1.0)}

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        layers = encoder_layers(model)
        top = len(layers) + (self.params["top_layer"] == "decayed")  # T: learns at the base rate
        depth = {id(p): 0 for p in model.base_model.embeddings.parameters()}
        depth.update({id(p): i for i, layer in enumerate(layers, start=1)
                      for p in layer.parameters()})
        by_depth: list[list[torch.nn.Parameter]] = [[] for _ in range(top + 1)]
        for parameter in model.parameters():  # each tied tensor once
            if parameter.requires_grad:
                by_depth[depth.get(id(parameter), top)].append(parameter)
        base, decay = self.state.recipe.learning_rate, self.params["decay"]
        return [{"params": params, "lr": base * decay ** (top - i), "weight_decay": 0.0}
                for i, params in enumerate(by_depth) if params]
