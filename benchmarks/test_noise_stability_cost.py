"""What the noise-stability measure adds to a final run: the measure alone against a whole final
run of the quickstart's recipe (STS-B, N = 64, 50 steps of 8, validation sample, test half,
and the measure itself), side by side in one process."""

from __future__ import annotations

import time

import pytest
import torch
from measure import best_of_alternating

from regbench.features import task_data
from regbench.harness import fine_tune
from regbench.modeling import load_model, load_tokenizer
from regbench.noise_stability import noise_stability
from regbench.registry.vanilla import Vanilla
from regbench.suite import load_suite
from regbench.tasks import get_task

RECIPE = load_suite("quickstart").recipe
ROUNDS = 3


@pytest.mark.benchmark(group="noise-stability")
def test_noise_stability_share_of_a_final_run(benchmark, glue_dir):
    task = get_task("stsb")
    data = task_data(task, 64, 0, "minilm", RECIPE.max_length, glue_dir)
    pad_id = load_tokenizer("minilm").pad_token_id
    device = torch.device("cpu")
    # The measure's cost does not depend on the weights: a fresh model stands for a trained one.
    model, _ = load_model("minilm", task, seed=1, pooling=RECIPE.pooling)

    def measure() -> float:
        started = time.perf_counter()
        noise_stability(model, data.test, pad_id, device)
        return time.perf_counter() - started

    def run() -> float:
        started = time.perf_counter()
        result = fine_tune(data, Vanilla(), seed=1, recipe=RECIPE, progress=False)
        assert result.status == "finished" and result.noise_stability is not None
        return time.perf_counter() - started

    measure(), run()  # warm-up: first-call costs of torch's kernels
    seconds = best_of_alternating({"measure": measure, "run": run}, ROUNDS)
    share = seconds["measure"] / seconds["run"]
    benchmark.extra_info.update({"measure_s": seconds["measure"], "run_s": seconds["run"],
                                 "share": share})
    benchmark.pedantic(measure, rounds=1, iterations=1)
    print(f"\nnoise stability {seconds['measure']:.2f} s of a {seconds['run']:.1f} s final run "
          f"({share:.1%})")
