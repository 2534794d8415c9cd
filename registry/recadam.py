"""RecAdam: anneal from a quadratic pull toward the pretrained weights to the task loss
(regularizers.md, "More methods"), in the authors' optimiser form."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from optuna.distributions import BaseDistribution, FloatDistribution

from regbench.params import Param
from regbench.plugin import Regularizer, State
from regbench.plugin_tools import pretrained_and_head, snapshot


def sigmoid(x: float) -> float:
    """1 / (1 + e^−x), without overflow at either end."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    return math.exp(x) / (1.0 + math.exp(x))


class RecAdam(Regularizer):
    """The objective λ(t)·ℓ_task + (1 − λ(t))·γ/2·Σ_pretrained ‖θ − θ*‖², with

        λ(t) = 1 / (1 + exp(−k·(t/T − t0)))   at the t-th of the run's T steps,

    optimised as the authors' RecAdam optimiser does (Sanyuan-Chen/RecAdam, `RecAdam.step`):
    Adam's moments see the task gradient alone; a pretrained parameter's Adam step is scaled by
    λ(t), then the quadratic's gradient is applied as a plain step of its own,

        θ ← θ − η_t·λ(t)·Adam(g)        θ ← θ − η_t·(1 − λ(t))·γ·(θ − θ*)

    η_t the scheduled learning rate of step t, θ* the weights before the first step. The new head
    (the parameters the checkpoint did not hold; the authors': those outside `bert.`) takes plain
    Adam steps at η_t and no pull. The Adam step is the recipe's torch AdamW, whose ε sits inside
    the bias correction; the authors' copy of an older AdamW adds it outside, a difference of
    ε·(1 − √(1 − β₂ᵗ)) in the denominator, felt only by gradients of the order of ε = 1e-8.

    Through the hooks: the pretrained parameters form the first optimiser group, whose schedule
    carries the factor λ(t) (`schedule` gives each group its own factor); `after_step` applies the
    pull at the head group's rate, the unscaled η_t.

    Both t0 and k are measured in the run's length, so that the anneal takes the same share of
    every run, as it does in the authors' runs: they give k per step and t0 in steps (k 0.1,
    t0 1000 in BERT-base runs of 9,000 steps), and their sigmoid rises from 0.12 to 0.88 in
    40 steps, 0.4% of such a run. Here k is per run: the default 900 is their 0.1 per step over
    9,000 steps, and their grid {0.05, 0.1, 0.2, 0.5, 1} per step becomes [450, 9000]. (Version 1
    took their k per step in runs of a few hundred steps, where the rise took 13% of the run.)
    The pull is stable while η_t·(1 − λ)·γ < 2: with the recipe's rate of 2e-5 and γ = 5000 it
    is 0.1 at most.
    """

    name = "recadam"
    description = ("Anneal with a sigmoid schedule from a quadratic pull toward the pretrained "
                   "weights to the task loss, in the authors' Adam form.")
    citation = ("Chen et al., EMNLP 2020, Recall and Learn: Fine-tuning Deep Pretrained Language "
                "Models with Less Forgetting")
    version = "2"  # 2: k per run, not per step
    # The authors' BERT-base runs: γ (pretrain_cof) 5000, k 0.1 per step and t0 1000 of 9000
    # steps; t0 rounded to a tenth of the run.
    hyperparameters = {"k": Param(900.0, gt=0, le=1e6), "t0": Param(0.1, ge=0, le=1),
                       "gamma": Param(5000.0, ge=0, le=1e7)}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        return {"k": FloatDistribution(450.0, 9000.0, log=True),
                "t0": FloatDistribution(0.01, 0.5, log=True),
                "gamma": FloatDistribution(500.0, 20000.0, log=True)}

    def anneal(self, t: int) -> float:
        """λ(t), t the 1-based index of an optimiser step."""
        return sigmoid(self.params["k"] * (t / self.state.total_steps - self.params["t0"]))

    def setup(self, model: torch.nn.Module, context: State) -> None:
        self.pretrained, self.head = pretrained_and_head(model, context)
        self.anchor = snapshot(self.pretrained)

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        return [{"params": self.pretrained, "weight_decay": 0.0},
                {"params": self.head, "weight_decay": 0.0}]

    def schedule(self, state: State) -> list[Callable[[int], float]]:
        recipe = super().schedule(state)
        # The factor after `step` steps is that of step `step` + 1.
        return [lambda step: recipe(step) * self.anneal(step + 1), recipe]

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module) -> None:
        t = self.state.step
        rate = self.state.lrs[1] * (1.0 - self.anneal(t)) * self.params["gamma"]
        torch._foreach_lerp_(self.pretrained, self.anchor, rate)  # θ − rate·(θ − θ*)
