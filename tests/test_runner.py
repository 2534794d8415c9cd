import logging
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import sqlalchemy as sa
import torch
import yaml
from optuna.trial import TrialState

from regbench import runner
from regbench.cli import main
from regbench.errors import RegbenchError
from regbench.harness import RunResult
from regbench.runner import Plan, SuiteRunner, estimate_seconds, task_costs
from regbench.store import Store
from regbench.suite import Cell, load_suite, parse_suite
from regbench.tuning import open_study
from regbench.workers import Claim, Worker

TINY_RECIPE = {"epochs": 1, "min_steps": 0, "batch_size": 8, "max_length": 32, "evaluations": 1}


def tiny_suite(**changes):
    values = {"name": "tiny", "tasks": ["rte"], "sizes": [16], "tuning_seeds": [101],
              "final_seeds": [1, 2], "regularizers": ["vanilla", "weight_decay"],
              "tuning": {"trials": 2, "pruner": "median"}, "recipe": TINY_RECIPE, **changes}
    return parse_suite(values)


def test_suite_runs_tunes_stores_and_resumes(glue_dir, tmp_path, caplog):
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    suite = tiny_suite()
    tally = SuiteRunner(suite, storage, data_dir=glue_dir, progress=False).run()
    assert (tally.executed, tally.cached, tally.failed) == (6, 0, 0)  # 2 trials + 2 × 2 finals

    runs = Store(storage).frame("tiny")
    finals = runs[runs.phase == "final"]
    assert sorted(zip(finals.regularizer, finals.seed, strict=True)) == [
        ("vanilla", 1), ("vanilla", 2), ("weight_decay", 1), ("weight_decay", 2)]
    assert (finals.status == "finished").all() and finals.test_score.between(0, 1).all()
    assert runs.key.is_unique and (runs.phase == "tune").sum() == 2
    # Two trials are random search, which the tuning runs record for the board.
    assert [p["sampler"]["sampler"] for p in runs[runs.phase == "tune"].provenance] == ["qmc"] * 2
    assert "sampler" not in finals.provenance.iloc[0]
    row = finals.iloc[0]
    assert {"regbench", "torch", "transformers", "git_commit", "device"} <= set(row.provenance)
    # On the CPU there is no per-run memory figure to store.
    assert row.seconds > 0 and pd.isna(row.peak_memory_mb) and row.recipe["max_length"] == 32
    # What the board judges the run against, stored with it: RTE's test half of 139, its
    # majority class (entailment, label 0) 73 of them.
    assert row.test_reference["test_size"] == 139 and row.test_reference["label_counts"] == [73, 66]
    assert row.test_reference["constant_scores"]["accuracy"] == pytest.approx(73 / 139)

    plan = Plan.of(suite)
    study = optuna.load_study(study_name=plan.study_name(Cell("weight_decay", "rte", 16)),
                              storage=storage)
    assert len(study.trials) == 2
    assert study.trials[0].params == {"weight_decay": 0.01}  # the plugin's defaults come first
    best = study.best_params["weight_decay"]
    assert set(finals[finals.regularizer == "weight_decay"].params.map(
        lambda p: p["weight_decay"])) == {best}

    again = SuiteRunner(suite, storage, data_dir=glue_dir, progress=False).run()
    assert (again.executed, again.cached) == (0, 4)  # the finished study is not reopened
    assert len(Store(storage).frame("tiny")) == len(runs)

    # A regularizer added under the suite's name trains alone: the others' runs stay as stored.
    grown = tiny_suite(regularizers=["vanilla", "weight_decay", "l2sp"])
    store = Store(storage)
    assert Plan.of(grown).left(store.frame("tiny"), store.study_names()) == {
        Cell("vanilla", "rte", 16): 0, Cell("weight_decay", "rte", 16): 0,
        Cell("l2sp", "rte", 16): 4}
    # A seed more: one run a cell; the tuning is done, though it stored no more runs than trials.
    more_seeds = tiny_suite(final_seeds=[1, 2, 3])
    assert Plan.of(more_seeds).left(store.frame("tiny"), store.study_names()) == {
        Cell("vanilla", "rte", 16): 1, Cell("weight_decay", "rte", 16): 1}
    # Another tuning budget is another study: the tuned cells start afresh, vanilla does not.
    retuned = tiny_suite(tuning={"trials": 3, "pruner": "median"})
    assert Plan.of(retuned).left(store.frame("tiny"), store.study_names()) == {
        Cell("vanilla", "rte", 16): 0, Cell("weight_decay", "rte", 16): 5}
    with caplog.at_level(logging.INFO, logger="regbench.runner"):
        extended = SuiteRunner(grown, storage, data_dir=glue_dir, progress=False).run()
    assert (extended.executed, extended.cached) == (4, 4)  # l2sp's 2 trials and 2 final runs
    assert "3 cells, 10 runs planned, 4 of them to train" in caplog.text


def test_force_reruns_stored_runs(glue_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    suite = tiny_suite(regularizers=["vanilla"], final_seeds=[1])
    SuiteRunner(suite, storage, data_dir=glue_dir, progress=False).run()
    first = Store(storage).frame().finished_at.iloc[0]
    tally = SuiteRunner(suite, storage, data_dir=glue_dir, force=True, progress=False).run()
    assert tally.executed == 1 and len(Store(storage).frame()) == 1
    assert Store(storage).frame().finished_at.iloc[0] > first


RAISING = """
from optuna.distributions import FloatDistribution
from regbench.plugin import Regularizer

class Plugin(Regularizer):
    name = "raising"
    defaults = {"strength": 1.0}

    @classmethod
    def search_space(cls, num_layers):
        return {"strength": FloatDistribution(0.1, 1.0)}

    def loss(self, model, batch, outputs, task_loss):
        raise RuntimeError("plugin bug")
"""

DIVERGING = """
from regbench.plugin import Regularizer

class Plugin(Regularizer):
    name = "diverging"

    def loss(self, model, batch, outputs, task_loss):
        return task_loss * float("inf")
"""


def test_failures_are_stored_and_the_suite_goes_on(glue_dir, tmp_path, installed, dist_info):
    for name, source in (("raising", RAISING), ("diverging", DIVERGING)):
        (tmp_path / f"regbench_{name}.py").write_text(source)
        dist_info(tmp_path, f"regbench-{name}", {name: f"regbench_{name}:Plugin"})
    installed(tmp_path)
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    suite = tiny_suite(regularizers=["raising", "diverging", "vanilla"], final_seeds=[1])
    runner = SuiteRunner(suite, storage, data_dir=glue_dir, progress=False)
    # The other studies run to their end; then the one that cannot give a result fails the run.
    with pytest.raises(RegbenchError, match=r"suite tiny: 1 of 3 studies cannot give a result: "
                       r"raising on rte, N=16: no tuning trial completed\."):
        runner.run()
    tally = runner.tally
    runs = Store(storage).frame()
    raising = runs[runs.regularizer == "raising"]
    assert list(raising.phase) == ["tune", "tune"] and (raising.status == "failed").all()
    assert "plugin bug" in raising.error.iloc[0]  # the traceback is kept
    study = optuna.load_study(study_name=Plan.of(suite).study_name(Cell("raising", "rte", 16)),
                              storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    diverging = runs[runs.regularizer == "diverging"]
    assert list(diverging.status) == ["diverged"] and "inf" in diverging.error.iloc[0]
    assert runs[runs.regularizer == "vanilla"].status.tolist() == ["finished"]
    assert tally.failed == 3


def test_another_setup_gets_a_study_of_its_own():
    plan, other = Plan.of(tiny_suite()), Plan.of(tiny_suite(recipe={**TINY_RECIPE, "epochs": 2}))
    cell = Cell("weight_decay", "rte", 16)
    assert plan.study_name(cell).startswith("tiny/weight_decay/rte/16/")
    assert plan.study_name(cell) != other.study_name(cell)


@pytest.mark.parametrize("change", [{"trials": 3}, {"pruner": "hyperband"}, {"sampler_seed": 1}])
def test_other_tuning_settings_get_a_study_of_their_own(change):
    cell = Cell("weight_decay", "rte", 16)
    tuning = {"trials": 2, "pruner": "median", "sampler_seed": 0}
    name = Plan.of(tiny_suite(tuning=tuning)).study_name(cell)
    assert Plan.of(tiny_suite()).study_name(cell) == name  # the same settings, spelt out
    assert Plan.of(tiny_suite(tuning={**tuning, **change})).study_name(cell) != name


GOOD = [0.55, 0.60, 0.64, 0.66]
# weight_decay -> the validation scores of tuning seeds 101 and 102 at their four evaluations.
CURVES = {
    0.01: [GOOD, [0.53, 0.58, 0.63, 0.65]],  # the defaults
    0.02: [[0.56, 0.61, 0.65, 0.67], [0.54, 0.59, 0.64, 0.66]],
    0.3: [[0.50, 0.51, 0.52, 0.52]] * 2,  # bad on every seed
    0.2: [[0.57, 0.62, 0.66, 0.68], [0.45, 0.46, 0.47, 0.47]],  # a lucky first seed
    0.05: [[0.56, 0.62, 0.66, 0.68], [0.55, 0.60, 0.65, 0.67]],  # good on both
}


def _tuning_study(tmp_path, monkeypatch, request, trials: int):
    """A real study of weight_decay on two tuning seeds with four evaluations each, whose runs
    report the scores of CURVES, run by a worker holding the trial's claim; `tell(weight_decay)`
    runs one trial and gives it back."""
    suite = tiny_suite(regularizers=["weight_decay"], tuning_seeds=[101, 102],
                       tuning={"trials": trials, "pruner": "median"},
                       recipe={**TINY_RECIPE, "evaluations": 4})
    runner = SuiteRunner(suite, f"sqlite:///{tmp_path / 'tune.db'}", device="cpu",
                         progress=False)
    cell = Cell("weight_decay", "rte", 16)

    def run_one(phase, cell, params, seed, trial=None, on_evaluate=None):
        curve = CURVES[params["weight_decay"]][seed - 101]
        for k, score in enumerate(curve, start=1):
            on_evaluate(k * 4, score)
        return {"status": "finished", "validation_score": curve[-1], "error": None}

    monkeypatch.setattr(runner, "run_one", run_one)
    runner.worker = Worker(runner.store.engine)
    request.addfinalizer(runner.worker.close)
    assert runner.worker.claim("claim") is Claim.OURS
    study = open_study(runner.studies, runner.plan.study_name(cell), suite.tuning, 4, 2)

    def tell(weight_decay: float) -> optuna.trial.FrozenTrial:
        study.enqueue_trial({"weight_decay": weight_decay})
        trial = study.ask()
        runner._run_trial(cell, study, trial, "claim", {}, runner.plan.space(cell))
        return study.trials[trial.number]

    return tell


def test_the_pruner_compares_running_means_at_the_same_point_of_training(tmp_path, monkeypatch,
                                                                         request):
    tell = _tuning_study(tmp_path, monkeypatch, request, trials=10)
    defaults = tell(0.01)
    # Seed 101's scores at steps 1-4, then the mean of both seeds' at steps 5-8.
    assert defaults.intermediate_values == pytest.approx(
        {1: 0.55, 2: 0.60, 3: 0.64, 4: 0.66, 5: 0.54, 6: 0.59, 7: 0.635, 8: 0.655})
    assert tell(0.02).state == TrialState.COMPLETE
    # Below the median of the two completed trials (0.645) at step 3, the first past warmup.
    bad = tell(0.3)
    assert bad.state == TrialState.PRUNED and bad.last_step == 3
    # Best of all on its first seed, but its running mean falls to 0.51 at step 5, against 0.54
    # and 0.55: judged by its best value so far, it would have carried seed 101's 0.68.
    lucky = tell(0.2)
    assert lucky.state == TrialState.PRUNED and lucky.last_step == 5
    assert lucky.intermediate_values[5] == pytest.approx(0.51)
    good = tell(0.05)
    assert good.state == TrialState.COMPLETE and good.value == pytest.approx(0.675)


def test_a_small_budget_is_not_decided_by_one_comparison_with_the_defaults(tmp_path,
                                                                             monkeypatch, request):
    tell = _tuning_study(tmp_path, monkeypatch, request, trials=2)
    tell(0.01)
    assert tell(0.3).state == TrialState.COMPLETE  # below the defaults all along, yet run out


def test_plan_counts_runs():
    plan = Plan.of(tiny_suite(sizes=[16, 32], tuning_seeds=[101, 102]))
    assert len(plan.cells) == 4 and len(plan.tuned) == 2  # vanilla has nothing to tune
    assert plan.total_runs() == 2 * 2 * 2 + 4 * 2
    assert plan.runs(Cell("weight_decay", "rte", 16)) == 2 * 2 + 2  # trials × seeds + finals
    assert plan.runs(Cell("vanilla", "rte", 16)) == 2


def test_zero_trials_tune_nothing():
    plan = Plan.of(tiny_suite(tuning={"trials": 0}))
    assert not plan.tuned and plan.total_runs() == 2 * 2


def _timed_runs(monkeypatch, first_call: float = 60.0) -> list[int]:
    """Runs whose first step takes 2 s (it allocates the optimiser's state) and every other 0.5 s,
    with 3 s besides; the first run of the process pays for the kernels' first calls too. The
    steps of every run are recorded."""
    steps = []

    def fine_tune(data, regularizer, seed, model, recipe, device, **_):
        steps.append(recipe.total_steps(len(data.train)))
        slow = first_call if len(steps) == 1 else 0.0
        step_seconds = [2.0] + [0.5] * (steps[-1] - 1)
        return RunResult("finished", steps=steps[-1], seconds=slow + 3.0 + sum(step_seconds),
                         step_seconds=step_seconds)

    monkeypatch.setattr(runner, "fine_tune", fine_tune)
    return steps


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_task_costs_split_a_run_into_its_steps_and_a_fixed_cost(monkeypatch, glue_dir, device):
    steps = _timed_runs(monkeypatch)
    suite = tiny_suite(tasks=["rte", "stsb"])
    costs = task_costs(suite, torch.device(device), str(glue_dir))
    # A step costs what the steady ones do; the first step's extra 1.5 s is paid once a run.
    assert costs == {"rte": pytest.approx((0.5, 4.5)), "stsb": pytest.approx((0.5, 4.5))}
    # An untimed run first; on a GPU, longer runs, as its steps are short against the noise.
    assert steps == ([8, 8, 8] if device == "cpu" else [30, 30, 30])


def test_estimate_scales_the_steps_by_each_regularizers_cost():
    plan = Plan.of(tiny_suite(regularizers=["vanilla", "lnsr", "weight_decay", "childtuning_d"],
                              recipe={**TINY_RECIPE, "min_steps": 40}))
    seconds = estimate_seconds(plan, costs={"rte": (0.5, 3.0)},
                               step_costs={"vanilla": 1.0, "lnsr": 1.8})
    assert seconds[Cell("vanilla", "rte", 16)] == pytest.approx(3.0 + 40 * 0.5)
    assert seconds[Cell("lnsr", "rte", 16)] == pytest.approx(3.0 + 40 * 0.5 * 1.8)
    # Not measured: its declared cost, no extra pass.
    assert seconds[Cell("weight_decay", "rte", 16)] == pytest.approx(3.0 + 40 * 0.5)
    # A pass over the 16 examples in batches of 8 at setup: two steps' worth.
    assert seconds[Cell("childtuning_d", "rte", 16)] == pytest.approx(3.0 + (40 + 2) * 0.5)


def test_the_estimate_prices_the_layers_a_plugin_keeps_in_fp32_at_fp32_speed():
    plan = Plan.of(tiny_suite(regularizers={"vanilla": {}, "hype": {},
                                            "lnsr": {"inject_layer": 3}},
                              recipe={**TINY_RECIPE, "min_steps": 40, "precision": "bf16"}))
    seconds = estimate_seconds(plan, "cpu", costs={"rte": (0.5, 3.0)}, fp32_costs={"rte": 1.5})
    assert seconds[Cell("vanilla", "rte", 16)] == pytest.approx(3.0 + 40 * 0.5)
    # Every layer (and the head) in fp32: a bf16 run's hype steps at fp32's speed.
    assert seconds[Cell("hype", "rte", 16)] == pytest.approx(3.0 + 40 * 1.5)
    # Layers 3–5 of 6 in fp32, and one extra pass: 2 × (half at 0.5 s, half at 1.5 s).
    assert seconds[Cell("lnsr", "rte", 16)] == pytest.approx(3.0 + 40 * 2 * 1.0)
    # In an fp32 run nothing changes precision, and nothing more is measured.
    plan = Plan.of(tiny_suite(regularizers=["vanilla", "hype"],
                              recipe={**TINY_RECIPE, "min_steps": 40, "precision": "fp32"}))
    seconds = estimate_seconds(plan, "cpu", costs={"rte": (1.5, 3.0)})
    assert seconds[Cell("hype", "rte", 16)] == pytest.approx(3.0 + 40 * 1.5)


def test_dry_run_says_which_device_and_precision_it_estimates(monkeypatch, glue_dir, tmp_path,
                                                              capsys, caplog):
    caplog.set_level(logging.INFO, logger="regbench")
    _timed_runs(monkeypatch)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["rte"], "sizes": [16], "final_seeds": [1, 2],
                                    "regularizers": ["vanilla"],
                                    "recipe": {**TINY_RECIPE, "precision": "fp32"}}))
    assert main(["run", "--suite", str(path), "--dry-run", "--device", "cpu", "--data-dir",
                 str(glue_dir), "--storage", f"sqlite:///{tmp_path / 'tiny.db'}"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"2 runs, 0 of them done: about 0 minutes for the other 2 with one worker "
                     r"on cpu \(.+, \d+ threads?\) in fp32", out)
    assert not (tmp_path / "tiny.db").exists()
    # A new suite's store is not an error.
    assert f"nothing stored yet in sqlite:///{tmp_path / 'tiny.db'}" in caplog.text
    assert "no such file" not in caplog.text


def test_dry_run_counts_the_runs_already_stored(monkeypatch, glue_dir, tmp_path, capsys):
    path, storage = tmp_path / "tiny.yaml", f"sqlite:///{tmp_path / 'tiny.db'}"
    suite = {"tasks": ["rte"], "sizes": [16], "final_seeds": [1, 2], "regularizers": ["vanilla"],
             "recipe": TINY_RECIPE}
    path.write_text(yaml.safe_dump(suite))
    common = ["--suite", str(path), "--device", "cpu", "--data-dir", str(glue_dir),
              "--storage", storage]
    assert main(["run", *common, "--seeds", "1"]) == 0
    # The suite grows by a seed and a tuned regularizer: only vanilla's first seed is stored.
    path.write_text(yaml.safe_dump({**suite, "regularizers": ["vanilla", "weight_decay"],
                                    "tuning_seeds": [101], "tuning": {"trials": 2}}))
    _timed_runs(monkeypatch)
    capsys.readouterr()
    assert main(["run", *common, "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith(("vanilla", "weight_decay"))}
    assert rows["vanilla"][3:7] == ["0", "0", "2", "1"]  # trials, tuning, final runs, done
    assert rows["weight_decay"][3:7] == ["2", "2", "2", "0"]
    assert "6 runs, 1 of them done: about 0 minutes for the other 5 with one worker" in out


def _write_suite(tmp_path, seeds):
    path = tmp_path / "killme.yaml"
    path.write_text(f"tasks: [rte]\nsizes: [16]\nregularizers: [weight_decay]\n"
                    f"final_seeds: {seeds}\ntuning_seeds: [101, 102]\n"
                    "tuning: {trials: 2, pruner: none}\n"
                    "recipe: {epochs: 1, min_steps: 0, batch_size: 8, max_length: 32, "
                    "evaluations: 1}\n")
    return path


def _stored(engine, phase) -> int:
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(
                f"select count(*) from regbench_runs where phase = '{phase}' "
                "and status = 'finished'")).scalar()
    except sa.exc.OperationalError:  # the store or its table is not there yet
        return 0


@pytest.mark.parametrize("sig, phase", [(signal.SIGKILL, "tune"), (signal.SIGKILL, "final"),
                                        (signal.SIGINT, "final")])
def test_a_killed_suite_resumes_without_loss_or_duplicates(glue_dir, tmp_path, watcher, sig,
                                                           phase):
    """Kill a real suite once its first run of `phase` is stored (during the second tuning run,
    or during the final runs), run the same command again, and count."""
    seeds = [1, 2, 3]
    suite, db = _write_suite(tmp_path, seeds), tmp_path / "killme.db"
    watched = watcher(f"sqlite:///{db}")
    command = [sys.executable, "-m", "regbench.cli", "run", "--suite", str(suite),
               "--storage", f"sqlite:///{db}", "--data-dir", str(glue_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A process started in the background by a shell ignores SIGINT, and so would its children:
    # the suite gets the default, as from a terminal.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while _stored(watched, phase) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    tuned, finals = _stored(watched, "tune"), _stored(watched, "final")
    assert tuned + finals < 4 + len(seeds), "the kill should land in the middle of the suite"
    if sig == signal.SIGINT:
        assert process.returncode == 130 and "run the same command to resume" in err

    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    # Every run stored before the kill is used again, none trained twice.
    assert f"{4 + len(seeds) - tuned - finals} runs trained" in out
    runs = Store(f"sqlite:///{db}").frame()
    assert runs.key.is_unique and (runs.status == "finished").all()
    assert sorted(runs[runs.phase == "final"].seed) == seeds
    study = optuna.load_study(study_name=Plan.of(load_suite(str(suite))).study_name(
        Cell("weight_decay", "rte", 16)), storage=f"sqlite:///{db}")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 2  # the budget, whatever was cut off
    assert len(runs[runs.phase == "tune"]) == 4  # two trials of two seeds, none trained twice


SETUP_FAILS = """
from regbench.errors import RegbenchError
from regbench.plugin import Regularizer

class Plugin(Regularizer):
    name = "{name}"

    def setup(self, model, state):
        raise {error}
"""


@pytest.mark.parametrize("error, message, stored", [
    # A bug of every seed: all are tried, the other study runs to its end, then the verdict.
    ('ValueError("needs a GPU of 80 GB")', r"^suite tiny: 1 of 2 studies cannot give a result: "
     r"failing on rte, N=16: every final run failed with ValueError: needs a GPU of 80 GB\.",
     ["vanilla", "vanilla", "failing", "failing"]),
    # A problem of the setup, which every run would meet: the suite stops at the first.
    ('RegbenchError("set FAILING_HOME to its weights")',
     r"^failing on rte, N=16, seed 1: set FAILING_HOME to its weights$", ["vanilla", "vanilla"]),
])
def test_a_study_that_cannot_give_a_result_fails_the_suite(error, message, stored, glue_dir,
                                                           tmp_path, install_plugin):
    install_plugin("regbench-failing", "failing", SETUP_FAILS.format(name="failing", error=error))
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    suite = tiny_suite(regularizers=["vanilla", "failing"], tuning={"trials": 0})
    with pytest.raises(RegbenchError, match=message):
        SuiteRunner(suite, storage, data_dir=glue_dir, progress=False).run()
    runs = Store(storage).frame()
    assert list(runs.regularizer) == stored  # what was trained before stays stored
