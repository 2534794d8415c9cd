"""The training recipe shared by every regularizer: plain data, no deep-learning stack, so that
suites and boards can read it without loading torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from regbench.errors import RegbenchError
from regbench.params import check_fields, declared, from_mapping

PRECISIONS = ("auto", "bf16", "fp32")
POOLINGS = ("cls", "mean")


@dataclass(frozen=True)
class Recipe:
    """The training recipe shared by every regularizer (protocol.md). A suite may change it; a
    regularizer may not. Every value is checked when a recipe is made."""

    learning_rate: float = declared(2e-5, gt=0, le=1)
    batch_size: int = declared(16, ge=1, le=4096)
    epochs: int = declared(3, ge=0, le=1000)
    # Few-sample runs fail when they take too few steps (Mosbach et al. 2021), so small training
    # sets get more epochs until this many optimiser steps are reached.
    min_steps: int = declared(300, ge=0, le=1_000_000)
    warmup_ratio: float = declared(0.1, ge=0, lt=1)
    max_grad_norm: float = declared(1.0, gt=0, le=1e6)
    # A pair needs three special tokens and a word of each sentence.
    max_length: int = declared(128, ge=8, le=65536)
    group_by_length: bool = declared(True)
    # Validation passes over training; the pruner sees each.
    evaluations: int = declared(4, ge=1, le=1000)
    eval_batch_size: int = declared(64, ge=1, le=4096)
    # Examples of the validation half scored for tuning and pruning, a stratified sample; 0 for
    # all. The test half is always scored whole.
    validation_size: int = declared(0, ge=0, le=10_000_000)
    # bf16 autocast, as the Trainer's `bf16` flag. "auto" takes it wherever the device computes
    # bf16 natively (recent GPUs, CPUs with AVX512-BF16 or AMX), where it halves a run's time.
    precision: str = declared("auto", choices=PRECISIONS)
    # What the task head reads: BERT's pooler on [CLS], or the mean of the real tokens, as
    # sentence-embedding models (the embedded MiniLM) were trained to be read.
    pooling: str = declared("cls", choices=POOLINGS)

    def __post_init__(self):
        check_fields(self, "Recipe")
        if not self.epochs and not self.min_steps:
            raise RegbenchError("Recipe epochs and min_steps are both 0: a run would take no "
                                "step. Set either to at least 1.")

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        return from_mapping(cls, values, "recipe")

    def as_dict(self) -> dict:
        return asdict(self)

    def total_steps(self, n_train: int) -> int:
        return max(self.epochs * math.ceil(n_train / self.batch_size), self.min_steps)

    def lr_factor(self, step: int, total: int) -> float:
        """The learning rate's factor after `step` of `total` steps: linear warmup over the first
        `warmup_ratio` of the steps, then linear decay to 0 (the Hugging Face linear schedule)."""
        warmup = int(self.warmup_ratio * total)
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
