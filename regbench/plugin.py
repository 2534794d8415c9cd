"""The regularizer contract: what the harness asks of a plugin, and nothing more.

A regularizer is a class. The harness builds one per run with its hyperparameters, binds the run's
`State` to it as `self.state`, then calls its hooks at these points of the one training loop (a
plugin overrides only those it needs; the README's "Writing a regularizer" has the table):

    setup(model, state)            once: the model is built, the optimiser is not; may read
                                   `state.training_batches()`
    param_groups(model)            once: the optimiser's groups (a group may set its own `lr`)
    schedule(state)                once: the learning-rate factor of each step (one for all
                                   groups, or a list with one per group)
    each step:
      before_forward(state)        `state.batch` is set; `state.step` counts the steps taken;
                                   every gradient is None
      loss(model, batch, outputs, task_loss)   the training loss (a tensor or a `Loss`); may
                                   run forward and backward passes of its own
      before_optimizer_step(state) after backward and clipping: the gradients are final
      after_step(model)            after the optimiser's step; `state.lrs` are the rates it used
    before_evaluate(state), after_evaluate(state)   around every evaluation: the evaluated weights
    after_training(state)          once, after the last step and before the test: undo `setup`

What the loop guarantees within a step (held by tests/test_plugin_api.py):

- Gradients. Every parameter's `.grad` is None when a step begins: the harness clears them after
  `setup` (which may run backward passes of its own) and after every optimiser step. Within a
  step, backward passes add up: those `loss` runs itself, then the harness's backward of what
  `loss` returns. `before_optimizer_step` sees that sum, clipped to the recipe's
  `max_grad_norm` (one norm over all parameters), and may change it; the optimiser steps on it.
- `loss` may therefore take gradients itself: several forward-and-backward passes accumulated
  (FreeLB), or a gradient at other weights (SAM: move to w + ε, backward, move back). It returns
  one tensor, reported and backpropagated, or a `Loss(backward, reported)`: `backward` None when
  it ran every backward pass itself; `reported` is what the progress bar shows and what the
  divergence check reads (a non-finite one stops the run before any backward of the harness).
- `task_loss` is `outputs.loss`, the model's own loss on the main pass over `batch`: the mean
  cross-entropy over the batch for classification, the mean squared error for regression, with
  dropout on (the model is in training mode). `outputs` also holds `logits`, `hidden_states`
  (with `needs_hidden_states`) and `pooled`, the features the head read.
- Precision. The main pass and `loss` (its own passes and backward passes included) run in the
  run's autocast context (`plugin_tools.autocast`: bf16 where `state.bf16`); the parts of the
  model a plugin names in `fp32_parts` compute in fp32 in training, evaluations in the run's own
  precision.
- Randomness. The global generator, seeded with the run's seed, draws dropout; a plugin's draws
  from it shift the masks of everything after them. `state.generator` is the plugin's own, and
  `plugin_tools.drawn_apart` and `replayed` draw apart from the run's stream or repeat it.

A class declares its `hyperparameters` (each one's default, type and range; a run's values are
`self.params`), the `search_space` the tuner explores (Optuna distributions over some of them),
the parts of the model it needs in fp32 (`fp32_parts`) and its cost: `extra_passes` per step (or
`step_cost`, a step's time against vanilla's, which may be below 1), and, once, `setup_passes`
over the batched training split and `setup_example_passes` of single examples. A class written
against the first version of this contract, with a `defaults` dict and the hooks `setup`,
`param_groups`, `loss` and `after_step`, still runs: its parameters' types come from the
defaults, their ranges from the search space.

This module imports no torch, so that suites and listings can read declarations cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from optuna.distributions import BaseDistribution

from regbench.errors import RegbenchError
from regbench.params import Param
from regbench.recipe import Recipe
from regbench.tasks import Task

if TYPE_CHECKING:
    import torch

    from regbench.plugin_tools import ComputedInFP32

@dataclass(eq=False)
class State:
    """The run as the hooks see it: one object for the whole run, kept current by the harness.

    `step` counts the optimiser steps taken: in `before_forward`, `loss` and
    `before_optimizer_step` of the t-th step it is t − 1, in `after_step` it is t.
    """

    task: Task
    model: torch.nn.Module
    head_parameters: frozenset[str]  # the parameters the checkpoint did not hold
    device: torch.device
    recipe: Recipe = field(default_factory=Recipe)
    seed: int = 0  # the run's: it fixed the head, the data order and dropout
    # A plugin's own random draws in the loop, seeded from `seed` apart from dropout's stream and
    # the head's, on `device` (`torch.randn(..., generator=state.generator, device=state.device)`).
    generator: torch.Generator | None = None
    total_steps: int = 0
    steps_per_epoch: int = 1
    bf16: bool = False  # whether the forward passes run under bf16 autocast
    fp32: ComputedInFP32 | None = None  # the plugin's `fp32_parts`, as the harness applies them
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    step: int = 0
    batch: dict[str, torch.Tensor] | None = None
    # The main forward pass of the current step: the model's outputs (`loss`, `logits`,
    # `hidden_states` if asked for) and `pooled`, the features the head read (one vector per
    # example; None for a model regbench does not know the head of).
    outputs: Any = None
    # One epoch of the training split in the harness's padded batches, on the device, in an
    # order of its own: reading it leaves the run's data order alone. Never a dev half.
    read_training: Callable[[], Iterator[dict[str, torch.Tensor]]] | None = None

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def lrs(self) -> list[float]:
        """Each parameter group's learning rate for the current step."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def training_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.read_training is None:
            raise RegbenchError("This state has no training split to read.")
        return self.read_training()


Context = State  # the name the first version of the contract gave `setup`'s second argument


class Loss(NamedTuple):
    """What `loss` may return in place of one tensor: `backward`, what the harness
    backpropagates (None when `loss` ran every backward pass itself), and `reported`, the step's
    training loss as the run reports it (the progress bar, and the divergence check: a run whose
    reported loss is not finite stops). SAM, say, reports L(w) and backpropagates nothing, having
    taken its gradient at w + ε in `loss`."""

    backward: torch.Tensor | None
    reported: torch.Tensor


class Regularizer:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    hyperparameters: ClassVar[dict[str, Param] | None] = {}  # None: inferred from `defaults`
    defaults: ClassVar[dict[str, Any]] = {}  # derived from `hyperparameters`, or given
    needs_hidden_states: ClassVar[bool] = False
    state: State  # bound by the harness before `setup`

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "hyperparameters" in cls.__dict__:
            cls.defaults = {key: param.default for key, param in cls.hyperparameters.items()}
        elif "defaults" in cls.__dict__:
            cls.hyperparameters = None

    @classmethod
    def declaration(cls, layers: int | None = None) -> dict[str, Param]:
        """Each parameter's declaration: the class's own, or inferred from its defaults and its
        search space (at `layers`, or a 12-layer encoder when the depth is not known)."""
        if cls.hyperparameters is not None:
            return cls.hyperparameters
        space = cls.search_space(layers or 12)
        return {key: Param.inferred(default, space.get(key))
                for key, default in cls.defaults.items()}

    @classmethod
    def check_params(cls, params: dict[str, Any], layers: int | None = None) -> dict[str, Any]:
        """Every parameter's value, the defaults filled in and each value checked against its
        declaration; a `RegbenchError` naming the parameter, the value and what is allowed."""
        declared = cls.declaration(layers)
        unknown = sorted(set(params) - set(declared))
        if unknown:
            allowed = ", ".join(sorted(declared)) or "none"
            raise RegbenchError(f"Regularizer {cls.name!r} has no parameter "
                                f"{', '.join(unknown)}; its parameters are: {allowed}.")
        values = {**cls.defaults, **params}
        for key, param in declared.items():
            values[key] = param.validate(values[key], f"Regularizer {cls.name!r}: {key}", layers)
        return values

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = self.check_params(params)

    @classmethod
    def search_space(cls, num_layers: int) -> dict[str, BaseDistribution]:
        """The hyperparameters the tuner explores; `num_layers` is the encoder's depth."""
        return {}

    def extra_passes(self) -> float:
        """Extra forward-and-backward passes per step, in units of a whole model's pass."""
        return 0.0

    def step_cost(self) -> float:
        """A step's time as a multiple of a vanilla step's: `1 + extra_passes()` unless a plugin
        says otherwise. It may be below 1, for a method that spares work (frozen layers take no
        backward pass); it must be above 0."""
        return 1.0 + self.extra_passes()

    def setup_passes(self) -> float:
        """Forward-and-backward passes over the whole training split in the harness's batches
        (`state.training_batches()`), once, in `setup`."""
        return 0.0

    def setup_example_passes(self) -> float:
        """Forward-and-backward passes of one example at a time, per training example, once, in
        `setup` (a Fisher information of per-example gradients: 1). The dry run prices each as
        a step at batch size 1, which costs far more per example than a batched pass."""
        return 0.0

    def fp32_parts(self, layers: int) -> tuple[str, ...]:
        """The parts of the model that compute in fp32 in training whatever the run's precision,
        in a model of `layers` encoder layers: "model" (all of it), "embeddings", "layer.K"
        (encoder layer K, from 0), "head" (what turns the last hidden state into logits). bf16
        keeps 8 bits of mantissa: a perturbation below ~0.4% of a value is rounded away.

        The harness applies them after `setup` (`state.fp32`), for every training pass, the
        plugin's own passes in `loss` included; evaluations compute in the run's own precision.
        The run's key and its stored provenance hold them, and the board says which."""
        return ()

    # -- hooks, in the order the harness calls them -----------------------------------------------
    def setup(self, model: torch.nn.Module, context: State) -> None:
        pass

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": 0.0}]

    def schedule(self, state: State) -> Callable[[int], float] | list[Callable[[int], float]]:
        """The factor on each group's learning rate after `step` steps: the recipe's. A list
        gives each group of `param_groups` its own factor, in their order."""
        return partial(state.recipe.lr_factor, total=state.total_steps)

    def before_forward(self, state: State) -> None:
        pass

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: Any,
             task_loss: torch.Tensor) -> torch.Tensor | Loss:
        """The training loss: one tensor, reported and backpropagated, or a `Loss`."""
        return task_loss

    def before_optimizer_step(self, state: State) -> None:
        pass

    def after_step(self, model: torch.nn.Module) -> None:
        pass

    def before_evaluate(self, state: State) -> None:
        pass

    def after_evaluate(self, state: State) -> None:
        pass

    def after_training(self, state: State) -> None:
        pass
