"""SAM: sharpness-aware minimisation, the step taken with the gradient at the worst nearby weights
(Foret et al., ICLR 2021)."""

from __future__ import annotations

from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Loss, Regularizer, State
from regbench.plugin_tools import replayed, rng_state, snapshot


class SAM(Regularizer):
    """Each step, from the weights w and the batch's loss L_B:

        ε̂ = ρ · g / ‖g‖₂,   g = ∇L_B(w)          (the paper's ε̂ for p = 2)
        the optimiser's step from w with the gradient ∇L_B(w + ε̂)

    g is the main pass's gradient, taken in `loss`; the weights then move to w + ε̂ and the
    batch goes through the model again, and that pass's loss is what the harness
    backpropagates. `before_optimizer_step` (after backward and clipping) puts w back, exactly,
    from a copy, so that AdamW steps from w. ‖g‖₂ is over every trainable parameter, the head
    included; m-sharpness (ε̂ per slice of the batch) is left out: one ε̂ per batch.

    The pass at w + ε̂ replays the main pass's dropout masks: L_B is one function of the
    weights, the one whose gradient g gave the direction. The loss reported (the progress bar,
    the divergence check) is L_B(w), the main pass's; its gradient is that of L_B(w + ε̂).

    ρ's default 0.05 is the paper's most frequent choice; its grid is {0.01, 0.02, 0.05, 0.1,
    0.2, 0.5}, the search range. Cost: the second forward and backward, and one copy of the
    weights in memory.
    """

    name = "sam"
    description = ("Sharpness-aware minimisation: the step from w with the gradient at "
                   "w + ρ·g/‖g‖, the batch's worst nearby weights to first order.")
    citation = ("Foret et al., ICLR 2021, Sharpness-Aware Minimization for Efficiently Improving "
                "Generalization")
    hyperparameters = {"rho": Param(0.05, gt=0, le=100)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"rho": FloatDistribution(0.01, 0.5, log=True)}

    def extra_passes(self) -> float:
        return 1.0

    def setup(self, model: torch.nn.Module, state: State) -> None:
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.kept = snapshot(self.parameters)  # w, while w + ε̂ is in place

    def before_forward(self, state: State) -> None:
        self.dropout = rng_state(state.device)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> Loss:
        grads = torch.autograd.grad(task_loss, self.parameters, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g
                 for p, g in zip(self.parameters, grads, strict=True)]
        norm = torch.stack(torch._foreach_norm(grads)).norm()
        with torch.no_grad():
            torch._foreach_copy_(self.kept, self.parameters)
            torch._foreach_add_(self.parameters, torch._foreach_mul(grads, self.params["rho"]
                                                                    / (norm + 1e-12)))
        with replayed(self.dropout, self.state.device):
            sharp = model(**batch).loss
        return Loss(backward=sharp, reported=task_loss.detach())

    @torch.no_grad()
    def before_optimizer_step(self, state: State) -> None:
        torch._foreach_copy_(self.parameters, self.kept)
