"""Suites: YAML files naming the tasks, sizes, seeds, regularizers, tuning budget and recipe of a
study, validated before anything runs."""

from __future__ import annotations

import dataclasses
import os
import reprlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from regbench import EMBEDDED_MODEL, strict_yaml
from regbench.errors import RegbenchError, unknown_name
from regbench.params import Param, check_fields, declared, from_mapping
from regbench.paths import not_a_file, os_problem
from regbench.plugins import require
from regbench.recipe import Recipe
from regbench.tasks import get_task

PRUNERS = ("none", "median", "hyperband")
# The store keeps sizes and seeds in 32-bit integer columns (PostgreSQL's and MySQL's INTEGER), and
# scikit-learn's splits take seeds below 2**32: larger ones would fail only once a run is done.
LARGEST = 2**31 - 1
SIZE = Param(100, kind=int, ge=1, le=LARGEST)
SEED = Param(0, kind=int, ge=0, le=LARGEST)


# TPE's random start-up: Optuna's default, the fewest trials its authors let TPE model. TPE
# models the best tenth of the trials so far (γ(n) = ⌈0.1 n⌉) apart from the rest, so over fewer
# its model of the good trials is one trial, a kernel around the incumbent: no learning.
TPE_STARTUP = 10
# The smallest budget that gets TPE, its start-up being at most half the trials. Below it a study
# is random search, drawn from a scrambled Sobol sequence: the same number of points, spread more
# evenly over the space than independent draws (Bergstra and Bengio 2012).
TPE_MIN_TRIALS = 2 * TPE_STARTUP


@dataclass(frozen=True)
class Tuning:
    trials: int = declared(20, ge=0, le=10_000)
    pruner: str = declared("median", choices=PRUNERS)
    sampler_seed: int = declared(0, ge=0, le=LARGEST)

    def __post_init__(self):
        check_fields(self, "tuning")

    def sampler(self) -> dict[str, Any]:
        """The sampler this budget gets, as a study's name and its runs record it."""
        if self.trials >= TPE_MIN_TRIALS:
            return {"sampler": "tpe", "startup_trials": TPE_STARTUP, "constant_liar": True}
        return {"sampler": "qmc", "qmc_type": "sobol", "scramble": True}


@dataclass(frozen=True)
class Cell:
    """One (regularizer, task, sample size) of a suite: a study and its final runs."""

    regularizer: str
    task: str
    size: int


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[str, ...]
    sizes: tuple[int, ...]
    regularizers: dict[str, dict[str, Any]]  # name -> fixed options and hyperparameters
    final_seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    tuning_seeds: tuple[int, ...] = (101, 102)
    data_seed: int = 0
    model: str = EMBEDDED_MODEL
    tuning: Tuning = field(default_factory=Tuning)
    recipe: Recipe = field(default_factory=Recipe)
    description: str = ""

    def cells(self) -> list[Cell]:
        return [Cell(r, t, n) for t in self.tasks for n in self.sizes for r in self.regularizers]


_KEYS = {f.name for f in dataclasses.fields(Suite)}


def builtin_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("regbench.suites").iterdir()
                  if p.name.endswith(".yaml"))


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a user's YAML file by path. A built-in's name means the
    built-in even where a file or folder of that name is in the current folder (write
    `./quickstart` for the file)."""
    path = Path(name_or_path)
    if name_or_path in builtin_suites():
        text = resources.files("regbench.suites").joinpath(f"{name_or_path}.yaml").read_text()
        source = f"built-in suite {name_or_path!r}"
    elif path.suffix in (".yaml", ".yml") or os.path.lexists(path):
        text, source = _read_suite_file(path), str(path)
    else:
        raise unknown_name("suite", name_or_path, builtin_suites())
    values = strict_yaml.load(text, source)
    if not isinstance(values, dict):
        raise RegbenchError(
            f"{source} must be a mapping of suite keys, not {type(values).__name__}.")
    values.setdefault("name", path.stem if path.suffix else name_or_path)
    return parse_suite(values, source)


def _read_suite_file(path: Path) -> str:
    problem = not_a_file(path) or ("does not exist" if not path.exists() else None)
    if problem is None and path.stat().st_size > strict_yaml.MAX_CHARS:
        problem = f"is {path.stat().st_size} bytes, larger than a suite can be"
    if problem:
        raise RegbenchError(f"Suite file {path} {problem}.")
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise RegbenchError(f"Suite file {path} {os_problem(err)}.") from None
    except UnicodeDecodeError as err:
        raise RegbenchError(f"Suite file {path} cannot be read: {err}.") from None


def checked_list(values: Any, param: Param, what: str) -> tuple:
    """A non-empty list of distinct values, each allowed by `param`."""
    if not isinstance(values, (list, tuple)) or not values:
        raise RegbenchError(f"{what} must be a non-empty list, each {param.allowed()}; "
                            f"got {reprlib.repr(values)}.")
    checked = tuple(param.validate(v, f"{what}[{i}]") for i, v in enumerate(values))
    _distinct(checked, what)
    return checked


def _distinct(items: tuple, what: str) -> None:
    twice = sorted({item for item in items if items.count(item) > 1})
    if twice:
        raise RegbenchError(f"{what} lists {', '.join(map(repr, twice))} more than once.")


def task_names(names: Any, what: str) -> tuple[str, ...]:
    if not isinstance(names, (list, tuple)) or not names or not all(
            isinstance(n, str) for n in names):
        raise RegbenchError(f"{what} must be a non-empty list of task names; got "
                            f"{reprlib.repr(names)}.")
    tasks = tuple(get_task(name).name for name in names)
    _distinct(tasks, what)
    return tasks


def regularizer_names(names: Any, what: str) -> tuple[str, ...]:
    if not isinstance(names, (list, tuple)) or not names or not all(
            isinstance(n, str) for n in names):
        raise RegbenchError(f"{what} must be a non-empty list of regularizer names; got "
                            f"{reprlib.repr(names)}.")
    _distinct(tuple(names), what)
    for name in names:
        require(name)  # its options are checked with the model's depth (runner.Plan)
    return tuple(names)


def parse_suite(values: dict[str, Any], source: str = "suite") -> Suite:
    unknown = [key for key in values if key not in _KEYS]
    if unknown:
        raise RegbenchError(f"{source}: key {unknown[0]!r} is not a suite key; the keys "
                            f"are: {', '.join(sorted(_KEYS))}.")
    for key in ("tasks", "sizes", "regularizers"):
        if key not in values:
            raise RegbenchError(f"{source}: key {key!r} is required.")
    for key in ("name", "model", "description"):
        if key in values and not isinstance(values[key], str):
            raise RegbenchError(f"{source}: key {key!r} must be a string, not "
                                f"{reprlib.repr(values[key])}.")
    name = values["name"]
    if not 0 < len(name) <= 100 or name.startswith(".") or any(
            c in "/\\" or not c.isprintable() for c in name):
        raise RegbenchError(f"{source}: name {name!r} must be a name of 1 to 100 printable "
                            "characters without slashes, not starting with a dot: it names the "
                            "suite's database and leaderboard files.")
    if not 0 < len(values.get("model", EMBEDDED_MODEL)) <= 300:
        raise RegbenchError(f"{source}: key 'model' must name a model in 1 to 300 characters.")

    regularizers = values["regularizers"]
    if isinstance(regularizers, list):  # a plain list: every regularizer with its defaults
        regularizers = dict.fromkeys(regularizer_names(regularizers, f"{source}: regularizers"))
    if not isinstance(regularizers, dict) or not regularizers:
        raise RegbenchError(f"{source}: key 'regularizers' must be a list of names or a mapping "
                            "name -> fixed options.")
    regularizer_names(list(regularizers), f"{source}: regularizers")
    for regularizer, options in regularizers.items():
        # `name:` with nothing after it is YAML's way to list a name in a mapping: its defaults.
        if options is not None and not (isinstance(options, dict)
                                        and all(isinstance(k, str) for k in options)):
            raise RegbenchError(f"{source}: the options of regularizer {regularizer!r} must be a "
                                f"mapping name -> value, not {reprlib.repr(options)}.")

    sections = {}
    for key, kind in (("tuning", Tuning), ("recipe", Recipe)):
        section = values.get(key, {})
        if not isinstance(section, dict):
            raise RegbenchError(f"{source}: key {key!r} must be a mapping of {key} keys, not "
                                f"{reprlib.repr(section)}; leave the key out for the defaults.")
        try:
            sections[key] = from_mapping(kind, section, key)
        except RegbenchError as err:
            raise RegbenchError(f"{source}: {err}") from None

    seeds = {key: checked_list(values[key], SEED, f"{source}: {key}")
             for key in ("final_seeds", "tuning_seeds") if key in values}
    _check_seeds(seeds.get("final_seeds", Suite.final_seeds),
                 seeds.get("tuning_seeds", Suite.tuning_seeds), source)
    return Suite(name=name, tasks=task_names(values["tasks"], f"{source}: tasks"),
                 sizes=checked_list(values["sizes"], SIZE, f"{source}: sizes"),
                 regularizers={r: dict(o or {}) for r, o in regularizers.items()},
                 data_seed=SEED.validate(values.get("data_seed", 0), f"{source}: data_seed"),
                 model=values.get("model", EMBEDDED_MODEL),
                 description=values.get("description", ""), **sections, **seeds)


def _check_seeds(final: tuple[int, ...], tuning: tuple[int, ...], source: str) -> None:
    shared = sorted(set(final) & set(tuning))
    if shared:
        raise RegbenchError(f"{source}: seeds {shared} are both tuning and final seeds; the "
                            "leaderboard's seeds must be unseen by tuning (protocol.md).")


def override(suite: Suite, **changes: Any) -> Suite:
    """The suite with command-line values in place of its own; None leaves a value alone."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if "regularizers" in changes:
        changes["regularizers"] = {
            name: suite.regularizers.get(name, {})
            for name in regularizer_names(changes["regularizers"], "--regularizers")}
    if "tasks" in changes:
        changes["tasks"] = task_names(changes["tasks"], "--tasks")
    if "sizes" in changes:
        changes["sizes"] = checked_list(changes["sizes"], SIZE, "--sizes")
    if "final_seeds" in changes:
        changes["final_seeds"] = checked_list(changes["final_seeds"], SEED, "--seeds")
    _check_seeds(changes.get("final_seeds", suite.final_seeds), suite.tuning_seeds,
                 "the command line")
    if "trials" in changes:
        changes["tuning"] = dataclasses.replace(suite.tuning, trials=changes.pop("trials"))
    return dataclasses.replace(suite, **changes)
