"""Stochastic Weight Averaging (Izmailov et al., UAI 2018) for regbench: from `swa_start` on, the
run trains at an SWA learning rate, averages its weights every `c` steps, and every evaluation
sees the average."""

from __future__ import annotations

from collections.abc import Callable

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.errors import RegbenchError
from regbench.params import Param
from regbench.plugin import Regularizer, State
from regbench.plugin_tools import averaged_tensors, snapshot, swap


class SWA(Regularizer):
    """Of a run of T steps, the first S = ⌊swa_start · T⌋ follow the recipe's schedule. From
    there the rate is the SWA rate α₂ = swa_lr × the recipe's learning rate: constant, or cyclic,
    falling in each cycle of c steps from the recipe's peak α₁ to α₂,

        α(i) = (1 − τ(i))·α₁ + τ(i)·α₂,   τ(i) = ((i − 1) mod c + 1) / c   (SWA step i = 1, 2, …)

    and the weights after step S and after every c steps from there are averaged with equal
    weights (for the cyclic rate: at the end of each cycle, where the rate is lowest):

        θ_SWA = mean(θ_S, θ_{S+c}, θ_{S+2c}, …)

    Every evaluation from step S on, the test included, sees θ_SWA; training goes on from θ.
    Before step S an evaluation sees the weights themselves.

    SWA's BatchNorm step (recomputing the running statistics for θ_SWA with a pass over the data)
    has nothing to do in BERT-family models: their LayerNorm keeps no statistics. A model with
    BatchNorm layers is refused rather than evaluated with statistics of other weights.
    """

    name = "swa"
    description = ("Average the weights of the run's last stretch, trained at a constant or "
                   "cyclic SWA learning rate, and evaluate the average.")
    citation = ("Izmailov et al., UAI 2018, Averaging Weights Leads to Wider Optima and Better "
                "Generalization")
    version = "1"  # part of every run's identity: raise it whenever a change alters results
    hyperparameters = {
        "swa_start": Param(0.75, ge=0, lt=1, help="share of the run's steps before averaging"),
        "swa_lr": Param(0.5, gt=0, le=100,
                        help="the SWA rate, as a factor of the recipe's learning rate"),
        "lr_schedule": Param("constant", choices=("constant", "cyclic")),
        "c": Param(1, ge=1, le=10_000,
                   help="steps between two averaged weights; the cycle's length"),
    }

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"swa_start": FloatDistribution(0.5, 0.9),
                "swa_lr": FloatDistribution(0.1, 1.0, log=True)}

    def setup(self, model: torch.nn.Module, state: State) -> None:
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise RegbenchError(f"swa does not recompute BatchNorm statistics, which "
                                f"{type(model).__name__} keeps; use a model without BatchNorm.")
        self.start = int(self.params["swa_start"] * state.total_steps)
        self.live = averaged_tensors(model)
        self.average: list[torch.Tensor] | None = None
        self.count = 0
        if self.start == 0:
            self.record()

    def schedule(self, state: State) -> Callable[[int], float]:
        recipe = super().schedule(state)
        low, c = self.params["swa_lr"], self.params["c"]
        cyclic = self.params["lr_schedule"] == "cyclic"

        def factor(step: int) -> float:  # the factor of step `step` + 1
            if step < self.start:
                return recipe(step)
            if not cyclic:
                return low
            tau = ((step - self.start) % c + 1) / c
            return (1 - tau) + tau * low

        return factor

    def after_step(self, model: torch.nn.Module) -> None:
        since = self.state.step - self.start
        if since >= 0 and since % self.params["c"] == 0:
            self.record()

    @torch.no_grad()
    def record(self) -> None:
        """Add the current weights to the average."""
        self.count += 1
        if self.average is None:
            self.average = snapshot(self.live)
        else:
            torch._foreach_lerp_(self.average, self.live, 1.0 / self.count)

    def before_evaluate(self, state: State) -> None:
        if self.average is not None:
            swap(self.live, self.average)

    def after_evaluate(self, state: State) -> None:
        if self.average is not None:
            swap(self.live, self.average)
