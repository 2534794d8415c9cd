"""The one fine-tuning loop. Regularizers change it only through the hooks of `regbench.plugin`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from regbench.errors import RegbenchError
from regbench.features import Examples, TaskData, evaluation_batches, training_batches
from regbench.metrics import compute_metrics, predictions_from_logits
from regbench.modeling import EMBEDDED_MODEL, load_model, load_tokenizer
from regbench.plugin import Context, Regularizer
from regbench.recipe import Recipe

log = logging.getLogger(__name__)

@dataclass
class RunResult:
    status: str  # "finished", or "diverged" when the training loss stopped being finite
    validation: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    error: str | None = None
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, validation score)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RegbenchError(f"Device {name!r} asked for, but no CUDA GPU is visible; "
                            "use --device cpu or auto.")
    return torch.device(name)


def mixed_precision(precision: str, device: torch.device) -> bool:
    """Whether a run of this precision setting computes in bf16 on `device`."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported()
                                     or torch.cpu._is_amx_tile_supported())


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def evaluate(model: torch.nn.Module, examples: Examples, task, pad_id: int, batch_size: int,
             device: torch.device, bf16: bool = False) -> dict[str, float]:
    model.eval()
    logits = np.empty((len(examples), task.num_labels), dtype=np.float32)
    for indices in evaluation_batches(examples.lengths, batch_size):
        batch = {k: v.to(device) for k, v in examples.collate(indices, pad_id).items()
                 if k != "labels"}
        with _autocast(device, bf16):
            logits[indices] = model(**batch).logits.float().cpu().numpy()
    model.train()
    return compute_metrics(task, predictions_from_logits(task, logits), examples.labels)


def training_step(network: torch.nn.Module, regularizer: Regularizer,
                  optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
                  max_grad_norm: float, bf16: bool = False) -> float:
    """One optimiser step on `batch`; returns the training loss. A non-finite loss changes
    nothing: the caller decides what a diverged run means."""
    with _autocast(batch["input_ids"].device, bf16):
        outputs = network(**batch, output_hidden_states=regularizer.needs_hidden_states)
        loss = regularizer.loss(network, batch, outputs, outputs.loss)
    value = loss.item()  # the one host sync of a step
    if not math.isfinite(value):
        return value
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    regularizer.after_step(network)
    return value


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
    recipe = recipe or Recipe()
    device = device or pick_device()
    task = data.task
    torch.manual_seed(seed)
    network, head = load_model(model, task, seed)
    network.to(device).train()
    pad_id = load_tokenizer(model).pad_token_id
    regularizer.setup(network, Context(task, head, device))
    optimizer = torch.optim.AdamW(regularizer.param_groups(network), lr=recipe.learning_rate)
    total = recipe.total_steps(len(data.train))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(recipe.warmup_ratio * total), total)
    # Intermediate evaluations serve a pruner; without one, only the last is needed.
    checkpoints = {math.ceil(total * k / recipe.evaluations)
                   for k in range(1, recipe.evaluations + 1)} if on_evaluate else {total}
    order = torch.Generator().manual_seed(seed)
    bf16 = mixed_precision(recipe.precision, device)
    result = RunResult(status="finished")

    def batches():
        while True:
            yield from training_batches(data.train.lengths, recipe.batch_size, order,
                                        recipe.group_by_length)

    with tqdm(total=total, desc=f"{regularizer.name} {task.name} seed {seed}",
              disable=not progress, leave=False, unit="step") as bar:
        for step, indices in enumerate(batches(), start=1):
            batch = {k: v.to(device) for k, v in data.train.collate(indices, pad_id).items()}
            value = training_step(network, regularizer, optimizer, batch, recipe.max_grad_norm,
                                  bf16)
            if not math.isfinite(value):
                result.status = "diverged"
                result.error = f"training loss became {value} at step {step} of {total}"
                log.warning("%s: %s", regularizer.name, result.error)
                break
            scheduler.step()
            bar.update()
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            result.steps = step
            if step in checkpoints:
                result.validation = evaluate(network, data.validation, task, pad_id,
                                             recipe.eval_batch_size, device, bf16)
                result.history.append((step, result.validation[task.metric]))
                if on_evaluate is not None:
                    on_evaluate(step, result.validation[task.metric])
            if step == total:
                break
    if result.status == "finished" and test:
        result.test = evaluate(network, data.test, task, pad_id, recipe.eval_batch_size, device,
                               bf16)
    result.seconds = time.perf_counter() - started
    return result
