"""The training recipe shared by every regularizer: plain data, no deep-learning stack, so that
suites and boards can read it without loading torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from regbench.errors import RegbenchError

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class Recipe:
    """The training recipe shared by every regularizer (protocol.md). A suite may change it; a
    regularizer may not."""

    learning_rate: float = 2e-5
    batch_size: int = 16
    epochs: int = 3
    # Few-sample runs fail when they take too few steps (Mosbach et al. 2021), so small training
    # sets get more epochs until this many optimiser steps are reached.
    min_steps: int = 300
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    group_by_length: bool = True
    evaluations: int = 4  # validation passes spread over training; the pruner sees each one
    eval_batch_size: int = 64
    # bf16 autocast, as the Trainer's `bf16` flag. "auto" takes it wherever the device computes
    # bf16 natively (recent GPUs, CPUs with AVX512-BF16 or AMX), where it halves a run's time.
    precision: str = "auto"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise RegbenchError(f"Recipe precision {self.precision!r} is not one of "
                                f"{', '.join(PRECISIONS)}.")

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise RegbenchError(f"Unknown recipe key(s) {', '.join(sorted(unknown))}; "
                                f"the recipe has: {', '.join(sorted(known))}.")
        return cls(**values)

    def as_dict(self) -> dict:
        return asdict(self)

    def total_steps(self, n_train: int) -> int:
        return max(self.epochs * math.ceil(n_train / self.batch_size), self.min_steps)
