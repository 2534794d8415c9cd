"""ChildTuning-D: only the encoder parameters with the most Fisher information on the training
examples are updated (regularizers.md, "More methods")."""

from __future__ import annotations

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.modeling import encoder_layers
from regbench.params import Param
from regbench.plugin import Regularizer, State
from regbench.plugin_tools import autocast


def fisher_information(model: torch.nn.Module, parameters: list[torch.nn.Parameter],
                       state: State) -> list[torch.Tensor]:
    """Σ over one epoch of training batches of each parameter's squared gradient of the batch's
    task loss, each tensor's gradient first clipped to the recipe's norm, in the model's mode."""
    fisher = [torch.zeros_like(p) for p in parameters]
    max_norm = state.recipe.max_grad_norm
    for batch in state.training_batches():
        with autocast(state.device, state.bf16):
            loss = model(**batch).loss
        loss.backward()
        for f, p in zip(fisher, parameters, strict=True):
            # As the authors' code does: each tensor clipped on its own, which caps what one
            # batch adds to that tensor's scores.
            grad = p.grad * (max_norm / (p.grad.norm() + 1e-6)).clamp(max=1.0)
            f.add_(grad.square())
        model.zero_grad(set_to_none=True)
    return fisher


def top_share(scores: list[torch.Tensor], share: float) -> list[torch.Tensor]:
    """Masks of the elements at or above one threshold over all `scores`: the `share` of them
    with the highest scores, and any tied at the threshold."""
    flat = torch.cat([s.flatten() for s in scores])
    keep = max(1, round(share * flat.numel()))
    threshold = flat.kthvalue(flat.numel() - keep + 1).values
    return [s >= threshold for s in scores]


class ChildTuningD(Regularizer):
    """Before training, the Fisher information of each encoder parameter on the training split:

        F_i = Σ_batches clip(∂ℓ_B/∂θ_i)²

    and a mask M_i = [F_i ≥ the threshold that keeps the top share p of the encoder], one global
    threshold as the authors'. Each step, after clipping and before the optimiser's step, every
    encoder gradient becomes g_i · M_i / p; parameters outside the encoder update as usual.

    Choices, after the authors' code (AliceMind's ChildTuning, `calculate_fisher`):
    - the encoder is the transformer layers (`base_model.encoder.layer`, their `'layer' in name`):
      the embeddings, the pooler and the head are outside the mask;
    - F comes from batch gradients (the mean loss of each of the harness's training batches, one
      epoch), in training mode (dropout on), each tensor's gradient clipped to the recipe's
      `max_grad_norm` on its own; they average over batches where this sums, the same mask;
    - ties at the threshold are kept, so the kept share is p or a little more.
    The definition scales the kept gradients by 1/p; the authors' optimiser does not in its D mode.
    Under Adam, a constant factor on a gradient changes the step only through ε.
    """

    name = "childtuning_d"
    description = ("Update only the share p of encoder parameters with the highest Fisher "
                   "information on the training set, their gradients scaled by 1/p.")
    citation = ("Xu et al., EMNLP 2021, Raise a Child in Large Language Model: Towards Effective "
                "and Generalizable Fine-tuning")
    # p: the authors' script runs ChildTuning-D at 0.3; the paper searches {0.1, 0.2, 0.3}.
    hyperparameters = {"p": Param(0.3, gt=0, le=1)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"p": FloatDistribution(0.1, 0.3)}

    def setup_passes(self) -> float:
        return 1.0

    def setup(self, model: torch.nn.Module, context: State) -> None:
        self.parameters = [p for p in encoder_layers(model).parameters() if p.requires_grad]
        share = self.params["p"]
        masks = top_share(fisher_information(model, self.parameters, context), share)
        self.scales = [mask.to(p.dtype) / share
                       for mask, p in zip(masks, self.parameters, strict=True)]

    @torch.no_grad()
    def before_optimizer_step(self, state: State) -> None:
        torch._foreach_mul_([p.grad for p in self.parameters], self.scales)
