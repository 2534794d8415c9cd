"""EMA: an exponential moving average of the weights, evaluated in place of the last weights
(regularizers.md, "More methods")."""

from __future__ import annotations

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Regularizer, State
from regbench.plugin_tools import averaged_tensors, snapshot, swap


class EMA(Regularizer):
    """θ̄ ← β·θ̄ + (1 − β)·θ after every optimiser step, from θ̄ = θ⁰ (the weights the run starts
    with); every evaluation, the test included, sees θ̄, and training goes on from θ.

    The average starts at θ⁰ rather than at the first step's weights, so θ⁰ keeps a weight of
    β^T after T steps. β = 0.99 averages over about the last 1 / (1 − β) = 100 steps, the last
    third of a 300-step run, where the decaying rate makes the weights settle, and leaves θ⁰
    (with its random head) 0.99³⁰⁰ ≈ 5% of the average. The search stops at 0.995 (22% at
    300 steps): above it the average of a few hundred steps is mostly the starting point.
    Kingma & Ba's form starts from 0 and divides by 1 − β^t, which drops θ⁰ altogether; at the
    default the two differ by that 5%.
    """

    name = "ema"
    description = ("Evaluate an exponential moving average of the weights, updated after every "
                   "step, in place of the last weights.")
    citation = ("Polyak & Juditsky, SIAM J. Control Optim. 1992, Acceleration of stochastic "
                "approximation by averaging; the exponential form: Kingma & Ba, ICLR 2015, Adam, "
                "section 7.2")
    hyperparameters = {"beta": Param(0.99, ge=0, lt=1)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"beta": FloatDistribution(0.9, 0.995)}

    def setup(self, model: torch.nn.Module, context: State) -> None:
        self.live = averaged_tensors(model)
        self.average = snapshot(self.live)

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module) -> None:
        torch._foreach_lerp_(self.average, self.live, 1.0 - self.params["beta"])

    def before_evaluate(self, state: State) -> None:
        swap(self.live, self.average)

    def after_evaluate(self, state: State) -> None:
        swap(self.live, self.average)
