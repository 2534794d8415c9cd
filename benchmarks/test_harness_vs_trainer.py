"""Training throughput of the harness against the Hugging Face Trainer: same model, data (RTE,
N = 256, max length 128), batch size and optimiser steps, run side by side in one process, each
timed from loading the model to the end of one pass over the validation half, as a tuning run.
The Trainer runs twice: with its defaults, and batching by length as the harness does, for a fair
comparison."""

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
from regbench.modeling import load_model, load_tokenizer
from regbench.recipe import Recipe
from regbench.tasks import get_task

N_TRAIN, STEPS, ROUNDS = 256, 32, 2
RECIPE = Recipe(epochs=2, min_steps=0, batch_size=16, max_length=128, evaluations=1)


def _grouping(group_by_length: bool) -> dict:
    """The Trainer's batching by length: a flag before transformers 5, a sampling strategy since."""
    if "train_sampling_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}:
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length}


def _dataset(examples) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"input_ids": examples.input_ids,
                                       "token_type_ids": examples.token_type_ids,
                                       "labels": examples.labels})


def _trainer_seconds(data, tmp_path, group_by_length: bool) -> float:
    started = time.perf_counter()
    model, _ = load_model("minilm", data.task, seed=1)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=RECIPE.batch_size, max_steps=STEPS,
        per_device_eval_batch_size=RECIPE.eval_batch_size,
        learning_rate=RECIPE.learning_rate, warmup_steps=int(RECIPE.warmup_ratio * STEPS),
        lr_scheduler_type="linear", max_grad_norm=RECIPE.max_grad_norm, weight_decay=0.0,
        seed=1, report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="no",
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
        **_grouping(group_by_length),
        bf16=mixed_precision(RECIPE.precision, torch.device("cpu")))  # as the harness does
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(data.train),
                      data_collator=DataCollatorWithPadding(load_tokenizer("minilm")))
    trainer.train()
    trainer.predict(_dataset(data.validation))
    return time.perf_counter() - started


@pytest.mark.benchmark(group="throughput")
def test_harness_vs_trainer(benchmark, glue_dir, tmp_path):
    data = task_data(get_task("rte"), N_TRAIN, 0, "minilm", RECIPE.max_length, glue_dir)
    examples = STEPS * RECIPE.batch_size
    harness_seconds(data, RECIPE)  # warm-up: first-call costs of torch's kernels
    seconds = best_of_alternating(
        {"trainer": lambda: _trainer_seconds(data, tmp_path, group_by_length=False),
         "trainer_grouped": lambda: _trainer_seconds(data, tmp_path, group_by_length=True),
         "harness": lambda: harness_seconds(data, RECIPE)}, ROUNDS)
    rate = {name: examples / best for name, best in seconds.items()}
    benchmark.extra_info.update({f"{name}_examples_per_s": r for name, r in rate.items()})
    benchmark.extra_info.update({"speedup": rate["harness"] / rate["trainer"],
                                 "fair_speedup": rate["harness"] / rate["trainer_grouped"]})
    benchmark.pedantic(harness_seconds, args=(data, RECIPE), rounds=1, iterations=1)
    print(f"\nharness {rate['harness']:.1f} ex/s, Trainer {rate['trainer']:.1f} ex/s "
          f"({rate['harness'] / rate['trainer']:.2f}x), Trainer grouped by length "
          f"{rate['trainer_grouped']:.1f} ex/s ({rate['harness'] / rate['trainer_grouped']:.2f}x)")
