"""The regularizer contract: what the harness asks of a plugin, and nothing more.

A regularizer is a class. The harness builds one per run with its hyperparameters, then calls
these hooks, in this order; a plugin overrides only the ones it needs:

1. `setup(model, context)`: the model is built, the optimiser is not (swap modules, snapshot
   weights, build a teacher).
2. `param_groups(model)`: the optimiser's parameter groups (weight decay and the like).
3. `loss(model, batch, outputs, task_loss)`: for every training batch, turn the task loss into the
   training loss. `outputs` is the main forward pass; it holds `hidden_states` when the class sets
   `needs_hidden_states`.
4. `after_step(model)`: after every optimiser step.

The harness owns everything else: data, the loop, the schedule, clipping, devices and evaluation.
A class declares its `defaults` (hyperparameters and options), the `search_space` the tuner explores
(a subset of the defaults' keys) and its `extra_passes` per step, for planning and the leaderboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from optuna.distributions import BaseDistribution

from regbench.errors import RegbenchError
from regbench.tasks import Task


@dataclass(frozen=True)
class Context:
    """What a plugin may need to know about the run when the model is built."""

    task: Task
    head_parameters: frozenset[str]  # names of the parameters the checkpoint did not hold
    device: torch.device


class Regularizer:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    defaults: ClassVar[dict[str, Any]] = {}
    needs_hidden_states: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise RegbenchError(
                f"Regularizer {self.name!r} has no parameter {', '.join(sorted(unknown))}; "
                f"its parameters are: {allowed}."
            )
        self.params: dict[str, Any] = {**self.defaults, **params}

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        """The hyperparameters the tuner explores; `num_layers` is the encoder's depth."""
        return {}

    def extra_passes(self) -> float:
        """Extra forward-and-backward passes per step, in units of a whole model's pass."""
        return 0.0

    def setup(self, model: torch.nn.Module, context: Context) -> None:
        pass

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": 0.0}]

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> torch.Tensor:
        return task_loss

    def after_step(self, model: torch.nn.Module) -> None:
        pass
