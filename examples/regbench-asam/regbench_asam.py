"""Adaptive Sharpness-Aware Minimization (Kwon et al., ICML 2021) for regbench: each step's
gradient is taken at the worst weights of a neighbourhood scaled to the weights' own size, and the
step is taken from where the weights were. Written with regbench's public API alone."""

from __future__ import annotations

from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Loss, Regularizer, State
from regbench.plugin_tools import replayed, rng_state, snapshot


class ASAM(Regularizer):
    """Each step, from the weights w and the batch's loss L:

        g = ∇L(w),   T = |w| + η for a weight, 1 for a bias (elementwise)
        ε = ρ · T²g / ‖Tg‖₂
        the optimiser's step from w with the gradient ∇L(w + ε)

    With `adaptive` off, T = 1 and ε = ρ · g / ‖g‖₂: SAM (Foret et al., ICLR 2021), the built-in
    `sam`. As the authors' code (SamsungLabs/ASAM, `ASAM.ascent_step`), "weight" is any
    parameter whose name says so (LayerNorm's and the embeddings' included), ‖·‖₂ is over all of
    them, and the defaults are theirs: ρ = 0.5, η = 0.01.

    The pass at w + ε draws the main pass's dropout masks, so that L is one function of w; the
    run reports L(w).
    """

    name = "asam"
    description = ("Adaptive sharpness-aware minimisation: the step from w with the gradient at "
                   "the worst weights of a neighbourhood scaled by |w|.")
    citation = ("Kwon et al., ICML 2021, ASAM: Adaptive Sharpness-Aware Minimization for "
                "Scale-Invariant Learning of Deep Neural Networks")
    version = "1"
    hyperparameters = {
        "rho": Param(0.5, gt=0, help="the neighbourhood's radius"),
        "eta": Param(0.01, ge=0, help="added to |w|, so that a zero weight still moves"),
        "adaptive": Param(True, help="false: SAM's neighbourhood, a ball of radius rho"),
    }

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"rho": FloatDistribution(0.1, 2.0, log=True)}

    def extra_passes(self) -> float:
        return 1.0  # the pass at w + ε, forward and backward

    def setup(self, model: torch.nn.Module, state: State) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.weights = [p for _, p in named]
        self.adapted = [self.params["adaptive"] and "weight" in n for n, _ in named]
        self.kept = snapshot(self.weights)  # w, while w + ε is in place

    def before_forward(self, state: State) -> None:
        self.masks = rng_state(state.device)  # the main pass's dropout, replayed at w + ε

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> Loss:
        # `loss` may run backward passes of its own: every gradient is None when it starts.
        task_loss.backward()
        rho, eta = self.params["rho"], self.params["eta"]
        with torch.no_grad():
            scales = [p.abs() + eta if adapted else 1.0  # T
                      for p, adapted in zip(self.weights, self.adapted, strict=True)]
            scaled = [(torch.zeros_like(p) if p.grad is None else p.grad) * t  # Tg
                      for p, t in zip(self.weights, scales, strict=True)]
            factor = rho / (torch.sqrt(sum(s.square().sum() for s in scaled)) + 1e-16)
            for p, kept, s, t in zip(self.weights, self.kept, scaled, scales, strict=True):
                kept.copy_(p)
                p.add_(s * t * factor)  # ρ · T²g / ‖Tg‖
                p.grad = None  # what the harness backpropagates next is the pass at w + ε alone
        with replayed(self.masks, self.state.device):
            perturbed = model(**batch).loss
        return Loss(backward=perturbed, reported=task_loss.detach())

    @torch.no_grad()
    def before_optimizer_step(self, state: State) -> None:
        # After backward and clipping: the gradient is ∇L(w + ε); the step goes from w.
        for p, kept in zip(self.weights, self.kept, strict=True):
            p.copy_(kept)
