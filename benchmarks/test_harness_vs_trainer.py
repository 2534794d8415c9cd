"""Training throughput of the harness against the Hugging Face Trainer: same model, data (RTE,
N = 256), batch size, max length and optimiser steps, run side by side in one process, each
timed from loading the model to the end of one pass over the validation half, as a tuning run.
Two shapes: the glue-cpu suite's (batches of 8 at max length 48, mean pooling) and 16 × 128. The
Trainer runs twice: with its defaults, and with every option a user would switch on to match the
harness (batches by length, fused AdamW, the harness's attention kernel, bf16 where the harness
computes in it; the harness does not compile, so neither does the Trainer): the fair comparison."""

from __future__ import annotations

import dataclasses
import time

import datasets
import pytest
import torch
from measure import best_of_alternating, harness_seconds
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from regbench.features import task_data
from regbench.harness import mixed_precision
from regbench.modeling import load_model, load_tokenizer, set_attention
from regbench.recipe import Recipe
from regbench.tasks import get_task

N_TRAIN, STEPS, ROUNDS = 256, 32, 2
SHAPES = {"8x48": Recipe(epochs=1, min_steps=0, batch_size=8, max_length=48, pooling="mean",
                         evaluations=1),
          "16x128": Recipe(epochs=2, min_steps=0, batch_size=16, max_length=128, evaluations=1)}


def _grouping(group_by_length: bool) -> dict:
    """The Trainer's batching by length: a flag before transformers 5, a sampling strategy since."""
    if "train_sampling_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}:
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length}


def _dataset(examples) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"input_ids": examples.input_ids,
                                       "token_type_ids": examples.token_type_ids,
                                       "labels": examples.labels})


def _trainer_seconds(data, recipe: Recipe, tmp_path, matched: bool) -> float:
    started = time.perf_counter()
    cpu = torch.device("cpu")
    model, _ = load_model("minilm", data.task, seed=1, pooling=recipe.pooling)
    options = {}
    if matched:
        set_attention(model, cpu)
        options = {**_grouping(True), "optim": "adamw_torch_fused"}
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=recipe.batch_size, max_steps=STEPS,
        per_device_eval_batch_size=recipe.eval_batch_size,
        learning_rate=recipe.learning_rate, warmup_steps=int(recipe.warmup_ratio * STEPS),
        lr_scheduler_type="linear", max_grad_norm=recipe.max_grad_norm, weight_decay=0.0,
        seed=1, report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="no",
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
        bf16=mixed_precision(recipe.precision, cpu), **options)  # as the harness does
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(data.train),
                      data_collator=DataCollatorWithPadding(load_tokenizer("minilm")))
    trainer.train()
    trainer.predict(_dataset(data.validation))
    return time.perf_counter() - started


@pytest.mark.parametrize("shape", SHAPES)
def test_harness_vs_trainer(benchmark, glue_dir, tmp_path, shape):
    benchmark.group = f"throughput-{shape}"
    recipe = SHAPES[shape]
    assert recipe.total_steps(N_TRAIN) == STEPS
    data = task_data(get_task("rte"), N_TRAIN, 0, "minilm", recipe.max_length, glue_dir)
    examples = STEPS * recipe.batch_size
    harness_seconds(data, recipe)  # warm-up: first-call costs of torch's kernels
    seconds = best_of_alternating(
        {"trainer": lambda: _trainer_seconds(data, recipe, tmp_path, matched=False),
         "trainer_matched": lambda: _trainer_seconds(data, recipe, tmp_path, matched=True),
         "harness": lambda: harness_seconds(data, recipe)}, ROUNDS)
    rate = {name: examples / best for name, best in seconds.items()}
    benchmark.extra_info.update({f"{name}_examples_per_s": r for name, r in rate.items()})
    benchmark.extra_info.update({"speedup": rate["harness"] / rate["trainer"],
                                 "fair_speedup": rate["harness"] / rate["trainer_matched"]})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n{shape}: harness {rate['harness']:.1f} ex/s, Trainer {rate['trainer']:.1f} ex/s "
          f"({rate['harness'] / rate['trainer']:.2f}x), Trainer matched "
          f"{rate['trainer_matched']:.1f} ex/s ({rate['harness'] / rate['trainer_matched']:.2f}x)")
