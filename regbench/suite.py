"""Suites: YAML files naming the tasks, sizes, seeds, regularizers, tuning budget and recipe of a
study, validated before anything runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from regbench.errors import RegbenchError, unknown_name
from regbench.modeling import EMBEDDED_MODEL
from regbench.plugins import require
from regbench.recipe import Recipe
from regbench.tasks import get_task

PRUNERS = ("none", "median", "hyperband")


@dataclass(frozen=True)
class Tuning:
    trials: int = 20
    pruner: str = "median"
    sampler_seed: int = 0


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
_TUNING_KEYS = {f.name for f in dataclasses.fields(Tuning)}


def builtin_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("regbench.suites").iterdir()
                  if p.name.endswith(".yaml"))


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a user's YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RegbenchError(f"Suite file {path} does not exist.")
        text, source = path.read_text(), str(path)
    elif name_or_path in builtin_suites():
        text = resources.files("regbench.suites").joinpath(f"{name_or_path}.yaml").read_text()
        source = f"built-in suite {name_or_path!r}"
    else:
        raise unknown_name("suite", name_or_path, builtin_suites())
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RegbenchError(f"{source} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise RegbenchError(
            f"{source} must be a mapping of suite keys, not {type(values).__name__}.")
    values.setdefault("name", path.stem if path.suffix else name_or_path)
    return parse_suite(values, source)


def parse_suite(values: dict[str, Any], source: str = "suite") -> Suite:
    def fail(key: str, problem: str) -> RegbenchError:
        return RegbenchError(f"{source}: key {key!r} {problem}")

    unknown = set(values) - _KEYS
    if unknown:
        raise fail(sorted(unknown)[0],
                   f"is not a suite key; the keys are: {', '.join(sorted(_KEYS))}.")
    for key in ("tasks", "sizes", "regularizers"):
        if key not in values:
            raise fail(key, "is required.")

    def int_list(key: str) -> tuple[int, ...]:
        items = values[key]
        if not isinstance(items, list) or not items or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise fail(key, f"must be a non-empty list of integers, not {items!r}.")
        return tuple(items)

    if not isinstance(values["tasks"], list) or not values["tasks"]:
        raise fail("tasks", f"must be a non-empty list of task names, not {values['tasks']!r}.")
    tasks = tuple(get_task(str(t)).name for t in values["tasks"])

    regularizers = values["regularizers"]
    if isinstance(regularizers, list):  # a plain list: every regularizer with its defaults
        regularizers = {name: {} for name in regularizers}
    if not isinstance(regularizers, dict) or not regularizers:
        raise fail("regularizers", "must be a list of names or a mapping name -> fixed options.")
    regularizers = {name: dict(options or {}) for name, options in regularizers.items()}
    for name in regularizers:
        require(name)  # its options are checked with the model's depth (runner.Plan)

    tuning = values.get("tuning") or {}
    if not isinstance(tuning, dict) or set(tuning) - _TUNING_KEYS:
        raise fail("tuning", f"takes the keys {', '.join(sorted(_TUNING_KEYS))}; got {tuning!r}.")
    tuning = Tuning(**tuning)
    if tuning.pruner not in PRUNERS:
        raise fail("tuning", f"has pruner {tuning.pruner!r}; the pruners are {', '.join(PRUNERS)}.")
    if not isinstance(tuning.trials, int) or tuning.trials < 0:
        raise fail("tuning", f"needs a number of trials, 0 for none, not {tuning.trials!r}.")

    recipe = values.get("recipe") or {}
    if not isinstance(recipe, dict):
        raise fail("recipe", f"must be a mapping of recipe keys, not {recipe!r}.")
    try:
        recipe = Recipe.from_dict(recipe)
    except (RegbenchError, TypeError) as err:
        raise fail("recipe", str(err)) from err

    optional = {key: int_list(key) for key in ("final_seeds", "tuning_seeds") if key in values}
    _check_seeds(optional.get("final_seeds", Suite.final_seeds),
                 optional.get("tuning_seeds", Suite.tuning_seeds), source)
    return Suite(name=str(values["name"]), tasks=tasks, sizes=int_list("sizes"),
                 regularizers=regularizers, tuning=tuning, recipe=recipe,
                 data_seed=int(values.get("data_seed", 0)),
                 model=str(values.get("model", EMBEDDED_MODEL)),
                 description=str(values.get("description", "")), **optional)


def _check_seeds(final: tuple[int, ...], tuning: tuple[int, ...], source: str) -> None:
    shared = sorted(set(final) & set(tuning))
    if shared:
        raise RegbenchError(f"{source}: seeds {shared} are both tuning and final seeds; the "
                            "leaderboard's seeds must be unseen by tuning (protocol.md).")


def override(suite: Suite, **changes: Any) -> Suite:
    """The suite with command-line values in place of its own; None leaves a value alone."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if "regularizers" in changes:
        changes["regularizers"] = {name: suite.regularizers.get(name, {})
                                   for name in changes["regularizers"]}
        for name in changes["regularizers"]:
            require(name)
    if "tasks" in changes:
        changes["tasks"] = tuple(get_task(t).name for t in changes["tasks"])
    for key in ("sizes", "final_seeds"):
        if key in changes:
            changes[key] = tuple(changes[key])
    _check_seeds(changes.get("final_seeds", suite.final_seeds), suite.tuning_seeds,
                 "the command line")
    if "trials" in changes:
        if changes["trials"] < 0:
            raise RegbenchError(f"--trials {changes['trials']}: give a number of trials, "
                                "0 for none.")
        changes["tuning"] = dataclasses.replace(suite.tuning, trials=changes.pop("trials"))
    return dataclasses.replace(suite, **changes)
