"""How close a vanilla training step runs to this CPU's matrix-multiply peak: the step's model
FLOPs (6 × non-embedding parameters × padded tokens) over its time, against plain bf16 and fp32
multiplies at the model's own shapes, measured in the same process (`measure.step_efficiency`).
One thread, as each of a CPU suite's workers runs; at the glue-cpu suite's step (8 × 48) and at
16 × 128."""

from __future__ import annotations

import pytest
import torch
from measure import step_efficiency

from regbench.recipe import Recipe

LONG = {"epochs": 0, "min_steps": 1000}  # no measured step at a learning rate of 0
SHAPES = {"8x48": Recipe(batch_size=8, max_length=48, pooling="mean", **LONG),
          "16x128": Recipe(batch_size=16, max_length=128, **LONG)}


@pytest.mark.parametrize("shape", SHAPES)
def test_step_flops_against_the_matmul_peak(benchmark, glue_dir, shape):
    benchmark.group = f"step-efficiency-{shape}"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        measured = benchmark.pedantic(step_efficiency,
                                      args=(glue_dir, torch.device("cpu"), SHAPES[shape]),
                                      rounds=1, iterations=1)
    finally:
        torch.set_num_threads(before)
    peaks = measured[0].peaks
    print(f"\n{shape}: plain multiplies at the model's shapes: bf16 {peaks['bf16'] / 1e9:.0f}, "
          f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s")
    for m in measured:
        benchmark.extra_info[m.precision] = {"step_s": m.step_s, "padded_tokens": m.padded_tokens,
                                             "gflops": m.achieved / 1e9, "fraction": m.fraction,
                                             "peak_gflops": m.peaks[m.precision] / 1e9}
        print(f"  vanilla step in {m.precision}: {m.step_s:.3f} s, {m.padded_tokens:.0f} padded "
              f"tokens, {m.achieved / 1e9:.0f} GFLOP/s of model arithmetic, "
              f"{m.fraction:.1%} of the {m.precision} peak")
        assert m.model_flops > 0 and 0 < m.fraction
