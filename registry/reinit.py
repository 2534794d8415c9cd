"""Re-init: the top k encoder layers and the pooler start again from the model's own
initialiser (regularizers.md, "More methods")."""

from __future__ import annotations

import torch
from optuna.distributions import BaseDistribution, IntDistribution

from regbench.modeling import encoder_layers
from regbench.params import Param
from regbench.plugin import Regularizer, State
from regbench.plugin_tools import drawn_apart


class Reinit(Regularizer):
    """Before training, every module of the top `k` encoder layers and of the pooler is
    initialised afresh by the model's own `_init_weights` (for BERT: linear and embedding weights
    ~ N(0, initializer_range²), biases 0, LayerNorm weights 1 and biases 0), as Zhang et al.'s code
    does.

    The pooler goes with the layers, as in the paper's Re-init; with `k` = 0 it stays pretrained
    too, so that `k` = 0 is vanilla. `pooler: false` re-initialises the layers alone (the authors'
    code has the two as separate flags). The draws are a function of the run's seed and leave the
    run's dropout masks those of vanilla.
    """

    name = "reinit"
    description = "Re-initialise the top k encoder layers and the pooler before fine-tuning."
    citation = "Zhang et al., ICLR 2021, Revisiting Few-sample BERT Fine-tuning"
    hyperparameters = {"k": Param(1, ge=0, le=lambda layers: layers // 2), "pooler": Param(True)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"k": IntDistribution(0, num_layers // 2)}

    def setup(self, model: torch.nn.Module, state: State) -> None:
        layers = encoder_layers(model)
        k = self.check_params(self.params, len(layers))["k"]
        if k == 0:
            return
        regions = list(layers[len(layers) - k:])
        pooler = getattr(model.base_model, "pooler", None)
        if self.params["pooler"] and pooler is not None:
            regions.append(pooler)
        with drawn_apart(state.device), torch.no_grad():
            for region in regions:
                for module in region.modules():
                    for parameter in module.parameters(recurse=False):
                        # transformers ≥ 5 skips the tensors it loaded from the checkpoint
                        vars(parameter).pop("_is_hf_initialized", None)
                    model._init_weights(module)
