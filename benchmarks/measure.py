"""What the benchmarks measure, shared by the pytest benchmarks and `benchmarks/gpu.py`: the
harness's training throughput, each built-in regularizer's step time against vanilla's, the runs
an hour of several `regbench run` workers sharing one device, and how close a step runs to the
device's matrix-multiply peak."""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml
from tabulate import tabulate

from regbench.features import TaskData, task_data
from regbench.harness import fine_tune, mixed_precision, set_up, training_step
from regbench.modeling import EMBEDDED_MODEL, load_model, load_tokenizer, set_attention
from regbench.plugins import build, distribution_of, names
from regbench.recipe import Recipe
from regbench.registry.vanilla import Vanilla
from regbench.store import Store, study_storage
from regbench.suite import parse_suite
from regbench.tasks import get_task


def _synchronize(device: torch.device) -> None:
    """A GPU runs behind the host: its queued work must be done before a clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- (a) the harness's training throughput -------------------------------------------------------

def harness_seconds(data: TaskData, recipe: Recipe, device: torch.device | None = None) -> float:
    """The wall time of one vanilla fine-tuning as a tuning run does it: loading the model, the
    steps and one evaluation of the validation half (no test, so no noise-stability measure)."""
    started = time.perf_counter()
    result = fine_tune(data, Vanilla(), seed=1, recipe=recipe, device=device, progress=False,
                       test=False)
    # The evaluation's copy of the logits to the host has waited for every step.
    seconds = time.perf_counter() - started
    if result.status != "finished" or result.steps != recipe.total_steps(len(data.train)):
        raise RuntimeError(f"vanilla run {result.status} after {result.steps} steps: "
                           f"{result.error}")
    return seconds


def best_of_alternating(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Each measure's least seconds over `rounds`, the measures taken in turn within each round
    so that drifting machine load falls on all of them alike."""
    seconds = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            seconds[name].append(measure())
    return {name: min(times) for name, times in seconds.items()}


def harness_examples_per_second(data: TaskData, recipe: Recipe, device: torch.device,
                                rounds: int = 2) -> float:
    """Training examples a second of whole runs (`harness_seconds`), best of `rounds` after a
    warm-up; `len(data.train)` should be a multiple of the batch size, so every batch is full."""
    harness_seconds(data, recipe, device)  # warm-up: first-call costs of every kernel
    best = min(harness_seconds(data, recipe, device) for _ in range(rounds))
    return recipe.total_steps(len(data.train)) * recipe.batch_size / best


# -- (b) the step time of each regularizer against vanilla's --------------------------------------

def rte_batches(glue_dir: str | Path, device: torch.device, recipe: Recipe,
                batches: int) -> tuple[TaskData, list[dict[str, torch.Tensor]]]:
    """The first `batches` × batch size RTE training examples (data seed 0), in batches of the
    recipe's size padded as the harness pads them, on `device`."""
    data = task_data(get_task("rte"), recipe.batch_size * batches, 0, EMBEDDED_MODEL,
                     recipe.max_length, str(glue_dir))
    pad_id = load_tokenizer(EMBEDDED_MODEL).pad_token_id
    return data, [{k: v.to(device) for k, v in data.train.collate(
        list(range(i * recipe.batch_size, (i + 1) * recipe.batch_size)), pad_id).items()}
        for i in range(batches)]


# lnsr at its costliest placement, where it reruns every encoder layer.
OPTIONS = {"lnsr": {"inject_layer": 0}}


def builtins() -> list[str]:
    """Every regularizer regbench itself registers, so a new built-in is measured from the day its
    entry point exists; third-party plugins are left out."""
    return [name for name in names() if distribution_of(name).split()[0] == "regbench"]


@dataclass
class StepCosts:
    seconds: dict[str, float]  # the median over rounds of each regularizer's seconds a step
    errors: dict[str, str] = field(default_factory=dict)  # those that could not be measured

    @property
    def ratios(self) -> dict[str, float]:
        return {name: s / self.seconds["vanilla"] for name, s in self.seconds.items()}


def step_costs(glue_dir: str | Path, device: torch.device, recipe: Recipe, batches: int = 4,
               rounds: int = 3, regularizers: list[str] | None = None) -> StepCosts:
    """The harness's own `training_step` of each regularizer (every built-in unless named) on the
    same real RTE batches at the recipe's batch size and max length, interleaved round by round,
    so that drifting load falls on all alike. Each measure sets its regularizer up afresh and
    warms it up with one step: one model alive at a time, as in a run (with fourteen alive at
    once, a 2-core machine's steps slowed down the later the model was built, by up to 20×). A
    regularizer that raises is left out with its error, and the others are measured."""
    task = get_task("rte")
    data, on_device = rte_batches(glue_dir, device, recipe, batches)
    errors: dict[str, str] = {}

    def step(regularizer, state, batch) -> None:
        state.batch = batch
        if not math.isfinite(training_step(state, regularizer)):
            raise RuntimeError("the training loss is not finite")  # a step left half-done

    def timed(name: str) -> float:
        model, head = load_model(EMBEDDED_MODEL, task, seed=1)
        set_attention(model, device)  # as the harness's `prepare`
        model.to(device).train()
        regularizer = build(name, OPTIONS.get(name, {}))
        # The batches are the training split a plugin may read in its setup.
        state = set_up(regularizer, model, task, head, recipe, device, n_train=len(data.train),
                       read_training=lambda: iter(on_device))
        step(regularizer, state, on_device[0])  # warm-up: first-call costs of its kernels
        _synchronize(device)
        started = time.perf_counter()
        for batch in on_device:
            step(regularizer, state, batch)
        _synchronize(device)
        return (time.perf_counter() - started) / batches

    seconds: dict[str, list[float]] = {name: [] for name in regularizers or builtins()}
    for _ in range(rounds):
        for name in [n for n in seconds if n not in errors]:
            try:
                seconds[name].append(timed(name))
            except Exception as err:  # one plugin's failure is a finding, not the end of the rest
                errors[name] = f"{type(err).__name__}: {err}"
    return StepCosts({name: statistics.median(s) for name, s in seconds.items()
                      if name not in errors}, errors)


# -- (c) the runs an hour of several workers on one device ---------------------------------------

def worker_suite(seeds: int = 12, size: int = 256, steps: int = 100, max_length: int = 128,
                 batch_size: int = 16) -> dict:
    """An untuned suite, so that any number of workers do the same runs: RTE at one size, vanilla
    and l2sp (cheap, and l2sp keeps a copy of the weights as the costlier ones keep state), every
    run a final one, as most of a tuned suite's are not but all of an untuned one's are. Twelve
    seeds make 24 runs: 3 for each of 8 workers, the same share for 1, 2, 4 or 8."""
    return {"name": "workers", "tasks": ["rte"], "sizes": [size],
            "final_seeds": list(range(1, seeds + 1)), "regularizers": ["vanilla", "l2sp"],
            "tuning": {"trials": 0},
            "recipe": {"epochs": 1, "min_steps": steps, "batch_size": batch_size,
                       "max_length": max_length, "evaluations": 1}}


@dataclass
class WorkerRate:
    workers: int
    runs: int  # finished
    failed: int
    seconds: float  # from the first start to the last worker's end, start-up included
    runs_per_hour: float
    peak_allocated_mb: float | None  # the largest run's peak of torch's allocations on the GPU
    gpu_memory_mb: float | None  # nvidia-smi's largest figure for one worker process, if any
    gpu_memory_note: str = ""


def _gpu_memory_by_pid() -> dict[int, float] | str:
    """The GPU memory of each process, as nvidia-smi reads it (the CUDA context and torch's cache
    included), or why it could not be read."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as err:
        return f"nvidia-smi could not run ({type(err).__name__})"
    if listing.returncode:
        return f"nvidia-smi failed: {listing.stderr.strip()[:200]}"
    memory = {}
    for line in listing.stdout.splitlines():
        pid, _, used = line.partition(",")
        try:
            memory[int(pid)] = float(used)
        except ValueError:  # "[N/A]" where the driver keeps it from the container
            continue
    return memory


def _device_env(device: torch.device, workers: int) -> dict[str, str]:
    """A worker's environment: on a CPU its share of the cores, as threads that outnumber the cores
    spin against one another (BENCHMARKS.md); on a GPU the one device every worker shares."""
    if device.type == "cpu":
        return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    index = device.index or 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    # An index counts among the devices already visible to this process, if some are named.
    return {"CUDA_VISIBLE_DEVICES": visible.split(",")[index] if visible else str(index)}


def runs_per_hour(workers: int, url: str, suite: dict, glue_dir: str | Path,
                  device: torch.device | None = None) -> WorkerRate:
    """`workers` processes of `regbench run` share the untuned `suite` through the empty database
    at `url`, all on `device`: the suite's finished runs over the wall time to the last one's end.
    The data's features are cached and the database's tables made before the clock starts."""
    device = device or torch.device("cpu")
    parsed = parse_suite(suite)
    for name in parsed.tasks:
        for size in parsed.sizes:
            task_data(get_task(name), size, parsed.data_seed, parsed.model,
                      parsed.recipe.max_length, str(glue_dir))
    Store(url).engine.dispose()
    study_storage(url).engine.dispose()
    with tempfile.TemporaryDirectory(prefix="regbench-workers-") as folder:
        suite_file = Path(folder) / "suite.yaml"
        suite_file.write_text(yaml.safe_dump(suite))
        command = [sys.executable, "-m", "regbench.cli", "run", "--suite", str(suite_file),
                   "--storage", url, "--data-dir", str(glue_dir), "--heartbeat-timeout", "20",
                   "--device", "cpu" if device.type == "cpu" else "cuda"]
        env = {**os.environ, **_device_env(device, workers)}
        logs = [Path(folder) / f"worker{i}.log" for i in range(workers)]
        memory: dict[int, float] = {}
        note = "" if device.type == "cuda" else "not on a GPU"
        started = time.perf_counter()
        with contextlib.ExitStack() as files:  # a worker's log stays open in the worker alone
            processes = [subprocess.Popen(command, env=env, stderr=subprocess.STDOUT,
                                          stdout=files.enter_context(log.open("w")))
                         for log in logs]
        while any(p.poll() is None for p in processes):
            if device.type == "cuda":
                seen = _gpu_memory_by_pid()
                if isinstance(seen, str):
                    note = seen
                else:
                    for p in processes:
                        memory[p.pid] = max(memory.get(p.pid, 0.0), seen.get(p.pid, 0.0))
            time.sleep(1.0)
        seconds = time.perf_counter() - started
        broken = [(p.returncode, log) for p, log in zip(processes, logs, strict=True)
                  if p.returncode]
        if broken:
            code, log = broken[0]
            raise RuntimeError(f"{len(broken)} of {workers} workers failed; the first exited with "
                               f"{code}:\n{log.read_text()[-3000:]}")
    store = Store(url)
    frame = store.frame(parsed.name)
    store.engine.dispose()
    finished = int((frame.status == "finished").sum())
    if device.type == "cuda" and not note and not any(memory.values()):
        note = "nvidia-smi listed none of the workers' processes"
    return WorkerRate(
        workers=workers, runs=finished, failed=len(frame) - finished, seconds=seconds,
        runs_per_hour=finished / seconds * 3600,
        peak_allocated_mb=float(frame.peak_memory_mb.max()) if device.type == "cuda" else None,
        gpu_memory_mb=max(memory.values()) if any(memory.values()) else None,
        gpu_memory_note=note)


# -- (d) how close a vanilla step runs to the machine's matrix-multiply peak ----------------------

def linear_shapes(config, tokens: int) -> list[tuple[int, int, int]]:
    """(rows, inner, outer) of every matrix multiply of one encoder layer's linear maps, forward,
    for `tokens` rows: query, key, value, the attention output, the feed-forward up and down."""
    hidden, inner = config.hidden_size, config.intermediate_size
    return [(tokens, hidden, hidden)] * 4 + [(tokens, hidden, inner), (tokens, inner, hidden)]


def matmul_peak(device: torch.device, dtype: torch.dtype, shapes: list[tuple[int, int, int]],
                repeats: int = 5, inner: int = 10) -> float:
    """FLOPs a second of plain matrix multiplies in `dtype` at `shapes` (one layer's linear maps,
    `linear_shapes`), best of `repeats` timings of `inner` passes: what this device does at the
    model's own shapes when nothing but multiplies runs."""
    operands = [(torch.randn(m, k, device=device, dtype=dtype),
                 torch.randn(n, k, device=device, dtype=dtype)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes) * inner

    def passes() -> float:
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(inner):
            for x, w in operands:
                torch.nn.functional.linear(x, w)
        _synchronize(device)
        return time.perf_counter() - started

    passes()  # warm-up: the kernels' first calls
    return flops / min(passes() for _ in range(repeats))


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """The weights a token's arithmetic runs through: all but the embedding tables."""
    embeddings = {id(p) for p in model.base_model.embeddings.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


@dataclass
class StepEfficiency:
    precision: str  # what the step computed in: "bf16" (autocast) or "fp32"
    step_s: float  # vanilla's median seconds a step
    padded_tokens: float  # a step's batch size × padded width, mean over the batches
    model_flops: float  # 6 × non-embedding parameters × padded tokens, a step
    peaks: dict[str, float]  # FLOPs a second of plain multiplies at the model's shapes, by dtype

    @property
    def achieved(self) -> float:
        return self.model_flops / self.step_s

    @property
    def fraction(self) -> float:
        """The step's model arithmetic a second over the peak of its own precision."""
        return self.achieved / self.peaks[self.precision]


def step_efficiency(glue_dir: str | Path, device: torch.device, recipe: Recipe,
                    batches: int = 4, rounds: int = 3) -> list[StepEfficiency]:
    """A vanilla step's model FLOPs a second against this device's bf16 and fp32 matrix-multiply
    peak at the model's own shapes, measured in the same process, for the step in bf16 autocast
    (where the device computes bf16 natively) and in fp32. Model FLOPs: 6 × non-embedding
    parameters × padded tokens, the usual count of a forward and backward pass (attention's own
    products left out). The peaks are taken before and after the steps, the best kept."""
    _, on_device = rte_batches(glue_dir, device, recipe, batches)
    tokens = statistics.fmean(b["input_ids"].numel() for b in on_device)
    model, _ = load_model(EMBEDDED_MODEL, get_task("rte"), seed=1)
    flops = 6 * non_embedding_parameters(model) * tokens
    shapes = linear_shapes(model.config, round(tokens))
    del model
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    peaks = {name: matmul_peak(device, dtype, shapes) for name, dtype in dtypes.items()}
    precisions = ["fp32"] + (["bf16"] if mixed_precision("auto", device) else [])
    steps = {p: step_costs(glue_dir, device, replace(recipe, precision=p), batches,
                           rounds, ["vanilla"]).seconds["vanilla"] for p in precisions}
    peaks = {name: max(peaks[name], matmul_peak(device, dtype, shapes))
             for name, dtype in dtypes.items()}
    return [StepEfficiency(p, steps[p], tokens, flops, peaks) for p in precisions]


# -- (e) where a run's time goes -----------------------------------------------------------------

def run_breakdown(glue_dir: str | Path, device: torch.device, options: tuple[str, ...] = (),
                  tree: Path | None = None) -> dict:
    """`breakdown.py`'s figures of one worker process on `device` (its `options`: suite, task,
    size...), run from `tree`, an older checkout of regbench, if given, else this one. On a CPU
    the process gets one thread, as each of a CPU suite's workers."""
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if device.type == "cpu"
                            else _device_env(device, 1))}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("breakdown.py")), "--t0", repr(time.time()),
         "--data-dir", str(glue_dir), "--device", "cpu" if device.type == "cpu" else "cuda",
         *options], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.splitlines()[-1])


def breakdown_table(results: dict[str, dict], run: str) -> str:
    """The parts of `run` (a label of `breakdown.py`'s runs) in each of `results` (`run_breakdown`
    figures by a name), in seconds and as shares of the run."""
    parts = list(next(iter(results.values()))["runs"][run]["parts"])
    rows = []
    for part in [*parts, "total"]:
        row = [part]
        for result in results.values():
            figures = result["runs"][run]
            seconds = figures["total"] if part == "total" else figures["parts"][part]
            row += [seconds, seconds / figures["total"]]
        rows.append(row)
    headers = ["part"] + [f"{v} {unit}" for v in results for unit in ("s", "share")]
    return tabulate(rows, headers=headers, floatfmt=".3f")
