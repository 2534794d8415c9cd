"""L2-SP: pull the pretrained parameters back toward their starting point."""

from __future__ import annotations

from typing import Any

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Regularizer, State
from regbench.plugin_tools import pretrained_and_head, snapshot, squared_norm


class L2SP(Regularizer):
    """Ω(θ) = α/2 · Σ_pretrained ‖p − p⁰‖² + β/2 · Σ_head ‖p‖², added to the task loss.

    The head is what the checkpoint did not hold (`Context.head_parameters`); p⁰ is a copy of the
    other trainable parameters taken in `setup`, before the first step.

    With `decoupled`, the α term leaves the loss and becomes a pull inside the step, after each
    optimiser update: p ← p − η·α·(p − p⁰) (Zhang et al. 2021), η the scheduled learning rate of
    that step, so the pull follows warmup and decay. The β term stays in the loss in both forms.
    """

    name = "l2sp"
    description = ("Penalise the distance of the pretrained parameters from their starting point, "
                   "and the norm of the new head.")
    citation = ("Li, Grandvalet & Davoine, ICML 2018, Explicit inductive bias for transfer "
                "learning with convolutional networks")
    version = "2"  # 2: the decoupled pull follows the scheduled learning rate
    hyperparameters = {"alpha": Param(0.01, ge=0, le=1e3), "beta": Param(0.01, ge=0, le=1e3),
                       "decoupled": Param(False)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"alpha": FloatDistribution(1e-4, 1.0, log=True),
                "beta": FloatDistribution(1e-4, 1e-1, log=True)}

    def setup(self, model: torch.nn.Module, context: State) -> None:
        self.pretrained, self.head = pretrained_and_head(model, context)
        self.anchor = snapshot(self.pretrained)

    def penalty(self) -> torch.Tensor:
        """Ω at the current parameters; its gradient is α·(p − p⁰) and β·p."""
        head = self.params["beta"] / 2 * squared_norm(self.head)
        if self.params["decoupled"]:
            return head
        drift = squared_norm(torch._foreach_sub(self.pretrained, self.anchor))
        return self.params["alpha"] / 2 * drift + head

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> torch.Tensor:
        return task_loss + self.penalty()

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module) -> None:
        if self.params["decoupled"]:
            # One group (the default's): the rate the step just used.
            rate = self.state.lrs[0] * self.params["alpha"]
            torch._foreach_lerp_(self.pretrained, self.anchor, rate)
