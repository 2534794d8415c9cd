"""A property of the command line, beside the table of known cases (test_bad_inputs.py): for
any suite and flags generated from what regbench declares (each key's and option's type and
range, the tasks, the regularizers), including values just past the bounds, far past them and of
the wrong type, `regbench` exits 0 or 2 within seconds, prints no traceback, and the store it was
given keeps every run it had. In process, and without training: the commands are the dry run
(its time estimate's two timed runs replaced by fixed costs), `results` and `leaderboard`."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import timedelta

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from regbench import runner
from regbench.cli import main
from regbench.leaderboard import references_of
from regbench.params import Param
from regbench.plugins import get_regularizer, names
from regbench.recipe import Recipe
from regbench.store import Store
from regbench.suite import SEED, SIZE, Tuning

DEPTH = 6  # the embedded MiniLM's, for bounds that depend on it
# Tasks whose data is at hand and small enough to tokenise once for the whole test, one whose
# data is missing, and one that does not exist.
TASKS = ["rte", "stsb", "wnli", "nosuch"]
NAME = "generated"
TRIALS = next(Param(f.default, **f.metadata) for f in dataclasses.fields(Tuning)
              if f.name == "trials")


def allowed(param: Param) -> st.SearchStrategy:
    """A value `param` allows."""
    kind, bounds = param.type, param.bounds(DEPTH)
    if param.choices is not None:
        return st.sampled_from(param.choices)
    if kind is bool:
        return st.booleans()
    if kind is int:
        low = bounds.get("ge", bounds.get("gt", -1) + 1)
        high = bounds.get("le", bounds.get("lt", 2**31) - 1)
        return st.integers(low, min(high, low + 1000))
    if kind is float:
        return st.floats(bounds.get("ge", bounds.get("gt", 0.0)),
                         bounds.get("le", bounds.get("lt", 1e6)), allow_nan=False,
                         exclude_min="gt" in bounds, exclude_max="lt" in bounds)
    if kind is list and param.items is not None:
        return st.lists(allowed(param.items), max_size=DEPTH + 1)
    return st.just(param.default)


def refused(param: Param) -> st.SearchStrategy:
    """A value a careless user might write for `param` instead: just past a bound or far past
    it, or of another type."""
    edges = [bound + step for bound in param.bounds(DEPTH).values()
             for step in (-1, 1, 10**20)]
    wrong = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.floats(),
                      st.lists(st.integers(), max_size=2), st.integers(-(2**70), 2**70))
    return st.one_of(st.sampled_from(edges), wrong) if edges else wrong


def values(param: Param) -> st.SearchStrategy:
    return st.one_of(allowed(param), refused(param))


def declared(kind: type) -> dict[str, Param]:
    """The declarations of a dataclass of `declared` fields (`Tuning`, `Recipe`)."""
    found = {f.name: Param(f.default, **f.metadata) for f in dataclasses.fields(kind)}
    if kind is Recipe:  # tokenising once per max length: two lengths keep the test in seconds
        found["max_length"] = Param(32, choices=(32, 64))
    return found


def section(kind: type) -> st.SearchStrategy:
    """A mapping of some of a declared dataclass's keys, each allowed."""
    params = declared(kind)
    return st.sets(st.sampled_from(sorted(params)), max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({key: allowed(params[key]) for key in keys}))


@st.composite
def regularizers(draw):
    chosen = draw(st.lists(st.sampled_from(names()), min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        return chosen  # a list: each at its defaults
    options = {}
    for name in chosen:
        params = get_regularizer(name).declaration(DEPTH)
        keys = draw(st.sets(st.sampled_from(sorted(params)), max_size=2)) if params else set()
        options[name] = {key: draw(allowed(params[key])) for key in keys}
    return options


@st.composite
def suites(draw) -> dict:
    """A suite regbench accepts, then up to two mistakes in it: a value refused by its
    declaration, a key left out, a key that is not one, a task or regularizer unknown."""
    suite = {"name": NAME,
             "tasks": draw(st.lists(st.sampled_from(TASKS[:2]), min_size=1, max_size=2,
                                    unique=True)),
             "sizes": draw(st.lists(st.integers(1, 64), min_size=1, max_size=2, unique=True)),
             "regularizers": draw(regularizers()),
             "final_seeds": draw(st.lists(st.integers(0, 50), min_size=1, max_size=3,
                                          unique=True)),
             "tuning_seeds": draw(st.lists(st.integers(100, 150), min_size=1, max_size=2,
                                           unique=True)),
             "data_seed": draw(allowed(SEED)), "tuning": draw(section(Tuning)),
             "recipe": draw(section(Recipe))}
    per_key = {"sizes": SIZE, "final_seeds": SEED, "tuning_seeds": SEED}
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(suite)))
        mistake = draw(st.sampled_from(["value", "missing", "unknown key", "name"]))
        if mistake == "missing":
            suite.pop(key, None)
        elif mistake == "unknown key":
            suite[f"{key}s"] = suite.get(key)
        elif mistake == "name" and key in ("tasks", "regularizers"):
            suite[key] = [*suite[key], draw(st.sampled_from(["nosuch", *TASKS[2:]]))]
        elif key in per_key:
            suite[key] = draw(st.lists(values(per_key[key]), max_size=3))
        elif key in ("tuning", "recipe"):
            params = declared(Tuning if key == "tuning" else Recipe)
            name = draw(st.sampled_from([*sorted(params), "unknown"]))
            suite[key] = {**suite[key], name: draw(refused(params[name]) if name in params
                                                   else st.integers())}
        elif key == "data_seed":
            suite[key] = draw(refused(SEED))
        else:
            suite[key] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=3)))
    return suite


def flag_values(param: Param) -> st.SearchStrategy:
    return values(param).map(lambda v: str(v).lower() if isinstance(v, bool) else str(v))


def flags(store: str, out: str) -> st.SearchStrategy:
    """Some of the flags of `run --dry-run`, `results` and `leaderboard`, each at most once."""
    listed = st.lists(flag_values(SIZE), min_size=1, max_size=3).map(",".join)
    storage = st.sampled_from([store, store, "sqlite://", "sqlite:///", "notaurl",
                               f"{store}?timeout=x"])
    command = st.sampled_from([["run", "--dry-run"], ["results"], ["leaderboard", "--out", out]])
    optional = {"--tasks": st.lists(st.sampled_from(TASKS), min_size=1, max_size=2).map(",".join),
                "--sizes": listed, "--seeds": listed,
                "--trials": flag_values(TRIALS),
                "--heartbeat-timeout": st.sampled_from(["1", "300", "1e300", "nan", "-1"]),
                "--csv": st.sampled_from([f"{out}.csv", store.removeprefix("sqlite:///")]),
                "--force": st.just(None)}
    allowed = {"run": ["--tasks", "--sizes", "--seeds", "--trials", "--heartbeat-timeout"],
               "results": ["--csv", "--force"], "leaderboard": ["--force"]}

    @st.composite
    def line(draw):
        words = draw(command)
        words += ["--storage", draw(storage)]
        for flag in draw(st.sets(st.sampled_from(allowed[words[0]]))):
            value = draw(optional[flag])
            words += [flag] if value is None else [flag, value]
        return words

    return line()


def _stored(path) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute("select * from regbench_runs order by key").fetchall()


@pytest.fixture(scope="module")
def store_file(tmp_path_factory, glue_dir):
    """A store holding runs of the generated suite's name, as this regbench stores them (with
    their test reference, which `leaderboard` would otherwise add): none may ever be lost."""
    path = tmp_path_factory.mktemp("store") / "runs.db"
    store = Store(f"sqlite:///{path}")
    reference = references_of(["rte"], str(glue_dir))["rte"]
    for seed in range(3):
        store.put({"key": f"run-{seed}", "suite": NAME, "phase": "final",
                   "regularizer": "vanilla", "regularizer_version": "1", "params": {},
                   "task": "rte", "n_train": 16, "data_seed": 0, "seed": seed,
                   "model": "minilm", "recipe": Recipe().as_dict(), "status": "finished",
                   "test_score": 0.5, "provenance": {},
                   "test_reference": reference})
    store.engine.dispose()
    return path


@pytest.fixture
def no_timing(monkeypatch):
    """The dry run's estimate from fixed costs: its two timed runs per task would train."""
    monkeypatch.setattr(runner, "task_costs", lambda suite, device, data_dir=None: {
        task: (0.1, 1.0) for task in suite.tasks})


@settings(max_examples=60, deadline=timedelta(seconds=10), derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_any_generated_input_exits_0_or_2_without_traceback_and_loses_no_run(
        data, store_file, tmp_path, glue_dir, no_timing, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _stored(store_file)
    suite = data.draw(suites(), label="suite")
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    words = data.draw(flags(f"sqlite:///{store_file}", str(tmp_path / "out")), label="flags")
    argv = [words[0], "--suite", str(tmp_path / "suite.yaml"), *words[1:]]
    if words[0] != "results":
        argv += ["--data-dir", str(glue_dir)]

    code = main(argv)

    err = capsys.readouterr().err
    event(f"{words[0]} exits {code}")  # how far the inputs go: --hypothesis-show-statistics
    assert code in (0, 2), err
    assert "Traceback" not in err, err
    assert code == 0 or err.strip().splitlines()[-1].startswith("regbench: error: "), err
    assert _stored(store_file) == before
