"""The one fine-tuning loop. Regularizers change it only through the hooks of `regbench.plugin`."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from regbench.errors import RegbenchError
from regbench.features import Examples, TaskData, evaluation_batches, training_batches
from regbench.metrics import compute_metrics, predictions_from_logits
from regbench.modeling import EMBEDDED_MODEL, load_model, load_tokenizer, set_attention
from regbench.noise_stability import noise_stability
from regbench.plugin import Loss, Regularizer, State
from regbench.plugin_tools import (
    ComputedInFP32,
    autocast,
    caught_pooled,
    model_parts,
    plugin_generator,
)
from regbench.recipe import Recipe
from regbench.tasks import Task

log = logging.getLogger(__name__)
FUSED_ADAMW = ("cpu", "cuda")  # the devices regbench is built for; torch fuses on more


@dataclass
class RunResult:
    status: str  # "finished", or "diverged" when the training loss stopped being finite
    validation: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    error: str | None = None
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, validation score)
    noise_stability: dict | None = None  # regbench.noise_stability, for a run that was tested
    step_seconds: list[float] = field(default_factory=list)  # each of the `steps`, for costing


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    usable = {"cpu": True, "cuda": torch.cuda.is_available(),
              "mps": torch.backends.mps.is_available()}
    if device is None or device.type not in usable:
        raise RegbenchError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.")
    if not usable[device.type]:
        raise RegbenchError(f"Device {name!r} asked for, but this machine has none; "
                            "use --device cpu or auto.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RegbenchError(f"Device {name!r} asked for, but only {torch.cuda.device_count()} "
                            "CUDA GPUs are visible (numbered from 0).")
    return device


def mixed_precision(precision: str, device: torch.device) -> bool:
    """Whether a run of this precision setting computes in bf16 on `device`."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported()
                                     or torch.cpu._is_amx_tile_supported())


@torch.no_grad()
def evaluate(model: torch.nn.Module, examples: Examples, task, pad_id: int, batch_size: int,
             device: torch.device, bf16: bool = False) -> dict[str, float]:
    model.eval()
    logits = np.empty((len(examples), task.num_labels), dtype=np.float32)
    # One autocast region for the whole pass: autocast keeps its bf16 copy of each weight until
    # the region closes, so the weights are cast once a pass, not once a batch.
    with autocast(device, bf16):
        for indices in evaluation_batches(examples.lengths, batch_size):
            batch = {k: v.to(device) for k, v in examples.collate(indices, pad_id).items()
                     if k != "labels"}
            logits[indices] = model(**batch).logits.float().cpu().numpy()
    model.train()
    return compute_metrics(task, predictions_from_logits(task, logits), examples.labels)


def _on(device: torch.device, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def set_up(regularizer: Regularizer, model: torch.nn.Module, task: Task,
           head: frozenset[str] = frozenset(), recipe: Recipe | None = None,
           device: torch.device | None = None, n_train: int = 0,
           read_training: Callable[[], Iterator[dict[str, torch.Tensor]]] | None = None,
           seed: int = 0) -> State:
    """A run's state for `model` (already on `device`): the regularizer bound to it and set up,
    then the optimiser and the schedule built, for a training split of `n_train` examples and
    the run's `seed`."""
    recipe = recipe or Recipe()
    device = device or torch.device("cpu")
    state = State(task=task, model=model, head_parameters=head, device=device, recipe=recipe,
                  total_steps=recipe.total_steps(n_train),
                  steps_per_epoch=max(1, math.ceil(n_train / recipe.batch_size)),
                  bf16=mixed_precision(recipe.precision, device), read_training=read_training,
                  seed=seed, generator=plugin_generator(seed, device))
    regularizer.state = state
    regularizer.setup(model, state)
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", 0)  # 0: not a known shape
    state.fp32 = ComputedInFP32(model_parts(model, regularizer.fp32_parts(depth)), device)
    state.fp32.on()
    model.zero_grad(set_to_none=True)  # the first step starts from none, whatever setup ran
    # torch's fused kernel, as the Trainer uses: its default loop over one tensor at a time took
    # a third of a small step on a CPU (22.7M weights, batches of 8).
    state.optimizer = torch.optim.AdamW(regularizer.param_groups(model), lr=recipe.learning_rate,
                                        fused=device.type in FUSED_ADAMW or None)
    state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer,
                                                         regularizer.schedule(state))
    return state


def prepare(data: TaskData, regularizer: Regularizer, seed: int, model: str = EMBEDDED_MODEL,
            recipe: Recipe | None = None, device: torch.device | None = None) -> State:
    """Everything before the first step: the model with a fresh head (from `seed`) on the
    device, and `set_up`."""
    recipe = recipe or Recipe()
    device = device or pick_device()
    torch.manual_seed(seed)
    network, head = load_model(model, data.task, seed, recipe.pooling)
    set_attention(network, device)
    network.to(device).train()
    pad_id = load_tokenizer(model).pad_token_id

    def read_training():
        # Its own generator, seeded as the loop's: the batches of the first epoch, and the
        # loop's order untouched.
        order = torch.Generator().manual_seed(seed)
        for indices in training_batches(data.train.lengths, recipe.batch_size, order,
                                        recipe.group_by_length):
            yield _on(device, data.train.collate(indices, pad_id))

    return set_up(regularizer, network, data.task, head, recipe, device, len(data.train),
                  read_training, seed)


def training_step(state: State, regularizer: Regularizer) -> float:
    """One optimiser step on `state.batch`; returns the training loss (a `Loss`'s `reported`). A
    non-finite loss changes nothing: the caller decides what a diverged run means."""
    model = state.model
    regularizer.before_forward(state)
    with autocast(state.device, state.bf16):
        with caught_pooled(model) as pooled:
            state.outputs = model(**state.batch,
                                  output_hidden_states=regularizer.needs_hidden_states)
        state.outputs.pooled = pooled[0] if pooled else None
        loss = regularizer.loss(model, state.batch, state.outputs, state.outputs.loss)
    backward, reported = loss if isinstance(loss, Loss) else (loss, loss)
    value = reported.item()  # the one host sync of a step
    if not math.isfinite(value):
        return value
    if backward is not None:
        backward.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), state.recipe.max_grad_norm)
    regularizer.before_optimizer_step(state)
    state.optimizer.step()
    model.zero_grad(set_to_none=True)  # every parameter's, optimised or not: the next step's own
    state.step += 1
    regularizer.after_step(model)
    state.scheduler.step()
    state.outputs = None  # its activations are not needed past the step
    return value


def _finite_weights(model: torch.nn.Module) -> bool:
    with torch.no_grad():
        return bool(torch.stack([p.abs().amax() for p in model.parameters()]).isfinite().all())


@contextlib.contextmanager
def evaluated_weights(state: State, regularizer: Regularizer) -> Iterator[torch.nn.Module]:
    """The model, holding the weights the regularizer chooses to have evaluated."""
    regularizer.before_evaluate(state)
    state.fp32.off()
    try:
        yield state.model
    finally:
        state.fp32.on()
        regularizer.after_evaluate(state)


def fine_tune(data: TaskData, regularizer: Regularizer, seed: int, model: str = EMBEDDED_MODEL,
              recipe: Recipe | None = None, device: torch.device | None = None,
              on_evaluate: Callable[[int, float], None] | None = None,
              progress: bool = True, test: bool = True) -> RunResult:
    """Fine-tune `model` on `data.train` with `regularizer`, evaluate on both dev halves.

    `seed` fixes the head's initialisation, the data order and dropout. `on_evaluate(step, score)`
    receives each intermediate validation score and may raise to stop the run (a pruner does).
    `test=False` leaves the test half alone, as tuning must.
    """
    started = time.perf_counter()
    state = prepare(data, regularizer, seed, model, recipe, device)
    recipe, task, total = state.recipe, data.task, state.total_steps
    pad_id = load_tokenizer(model).pad_token_id
    # Intermediate evaluations serve a pruner; without one, only the last is needed.
    checkpoints = {math.ceil(total * k / recipe.evaluations)
                   for k in range(1, recipe.evaluations + 1)} if on_evaluate else {total}
    order = torch.Generator().manual_seed(seed)
    validation = data.validation_sample(recipe.validation_size)
    result = RunResult(status="finished")

    def batches():
        while True:
            yield from training_batches(data.train.lengths, recipe.batch_size, order,
                                        recipe.group_by_length)

    with tqdm(total=total, desc=f"{regularizer.name} {task.name} seed {seed}",
              disable=not progress, leave=False, unit="step") as bar:
        for step, indices in enumerate(batches(), start=1):
            state.batch = _on(state.device, data.train.collate(indices, pad_id))
            stepped = time.perf_counter()
            value = training_step(state, regularizer)
            stepped = time.perf_counter() - stepped
            # The weights are checked where they are scored: a step can leave them non-finite
            # with a finite loss (an overflowing gradient, a plugin's update), and the last
            # step's loss never shows it.
            if not math.isfinite(value) or (step in checkpoints
                                            and not _finite_weights(state.model)):
                result.status = "diverged"
                result.error = (f"training loss became {value} at step {step} of {total}"
                                if not math.isfinite(value) else
                                f"weights became non-finite by step {step} of {total}")
                log.warning("%s: %s", regularizer.name, result.error)
                break
            bar.update()
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            result.steps = step
            result.step_seconds.append(stepped)
            if step in checkpoints:
                with evaluated_weights(state, regularizer) as network:
                    result.validation = evaluate(network, validation, task, pad_id,
                                                 recipe.eval_batch_size, state.device, state.bf16)
                result.history.append((step, result.validation[task.metric]))
                if on_evaluate is not None:
                    on_evaluate(step, result.validation[task.metric])
            if step == total:
                break
    state.batch = None
    regularizer.after_training(state)
    state.fp32.close()
    if result.status == "finished" and test:
        with evaluated_weights(state, regularizer) as network:
            result.test = evaluate(network, data.test, task, pad_id, recipe.eval_batch_size,
                                   state.device, state.bf16)
            result.noise_stability = noise_stability(network, data.test, pad_id, state.device)
    result.seconds = time.perf_counter() - started
    return result
