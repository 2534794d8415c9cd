"""Finding regularizers: every plugin, built-in or third-party, is an entry point of the
`regbench.regularizers` group, looked up by name and imported only when asked for."""

from __future__ import annotations

import warnings
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from regbench.errors import RegbenchError, unknown_name
from regbench.plugin import Regularizer

GROUP = "regbench.regularizers"
CHECK_DEPTH = 12  # the depth at which depth-dependent declarations are checked on load (BERT-base)

def _distribution(entry: EntryPoint) -> str:
    return entry.dist.name if entry.dist is not None else "an unknown distribution"

@cache
def _discover() -> tuple[dict[str, EntryPoint], dict[str, list[str]]]:
    """Entry points by name, and the names that several distributions claim."""
    found: dict[str, EntryPoint] = {}
    clashes: dict[str, list[str]] = {}
    for entry in entry_points(group=GROUP):
        previous = found.get(entry.name)
        if previous is None:
            found[entry.name] = entry
        elif _distribution(previous) != _distribution(entry):
            clashes.setdefault(entry.name, [_distribution(previous)]).append(_distribution(entry))
    return found, clashes

def names() -> list[str]:
    return sorted(_discover()[0])

def distribution_of(name: str) -> str:
    """The distribution that provides `name`, with its version, as a stored run records it."""
    dist = _entry(name).dist
    return "an unknown distribution" if dist is None else f"{dist.name} {dist.version}"

def _entry(name: str) -> EntryPoint:
    found, clashes = _discover()
    if name in clashes:
        raise RegbenchError(
            f"Regularizer name {name!r} is registered by several distributions: "
            f"{' and '.join(clashes[name])}. Uninstall one of them, or ask its author to rename it."
        )
    if name not in found:
        raise unknown_name("regularizer", name, found)
    return found[name]

@cache
def get_regularizer(name: str) -> type[Regularizer]:
    """The class registered under `name`, imported and checked against the contract."""
    entry = _entry(name)
    where = f"Regularizer {name!r} from {_distribution(entry)}"
    try:
        cls = entry.load()
    except Exception as err:
        raise RegbenchError(
            f"{where} failed to import ({type(err).__name__}: {err}). Fix or reinstall that "
            "package; the other regularizers still work."
        ) from err
    problem = _breach(cls, name)
    if problem:
        raise RegbenchError(f"{where} breaks the plugin contract: {problem}. Fix or uninstall "
                            "that package; the other regularizers still work.")
    return cls


def _breach(cls: Any, name: str) -> str | None:
    """What a loaded class gets wrong about the contract of `regbench.plugin`, if anything."""
    if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
        return f"{cls!r} is not a subclass of regbench.plugin.Regularizer"
    declared_name = getattr(cls, "name", None)
    if declared_name != name:
        return (f"its class {cls.__name__} is named {declared_name!r}, not {name!r} as its "
                "entry point")
    try:
        space = cls.search_space(CHECK_DEPTH)
        declared = cls.declaration(CHECK_DEPTH)
    except Exception as err:
        return f"its search space raised {type(err).__name__}: {err}"
    if not isinstance(space, dict):
        return f"search_space returned a {type(space).__name__}, not a dict of distributions"
    for key, distribution in space.items():
        if key not in declared:
            return f"search_space explores {key!r}, which is not one of its parameters"
        if not isinstance(distribution, BaseDistribution):
            return f"search_space[{key!r}] is not an Optuna distribution: {distribution!r}"
    for key, param in declared.items():
        ends = _ends(space.get(key))
        for value, what in ((param.default, "default"), *((v, "search range") for v in ends)):
            try:
                param.check(value, CHECK_DEPTH)
            except ValueError as err:
                return f"{key}'s {what} {value!r} is not allowed by its declaration ({err})"
    try:
        plugin = cls()
        step, setup = plugin.step_cost(), (plugin.setup_passes(), plugin.setup_example_passes())
    except Exception as err:
        return f"it cannot be built with its defaults ({type(err).__name__}: {err})"
    if not (isinstance(step, (int, float)) and step > 0):
        return f"step_cost must be a number > 0 (1 + extra_passes by default), not {step!r}"
    if not all(isinstance(c, (int, float)) and c >= 0 for c in setup):
        return (f"setup_passes and setup_example_passes must be numbers ≥ 0, not "
                f"{setup}")
    return None


def _ends(distribution: BaseDistribution | None) -> tuple:
    """The values of a distribution that a declared range must admit."""
    if isinstance(distribution, CategoricalDistribution):
        return tuple(distribution.choices)
    if isinstance(distribution, (FloatDistribution, IntDistribution)):
        return distribution.low, distribution.high
    return ()


def loadable() -> dict[str, type[Regularizer]]:
    """Every regularizer that imports; each one that does not is reported as a warning."""
    loaded = {}
    for name in names():
        try:
            loaded[name] = get_regularizer(name)
        except RegbenchError as err:
            warnings.warn(str(err), stacklevel=2)
    return loaded

def build(name: str, params: dict | None = None, layers: int | None = None) -> Regularizer:
    """The regularizer `name` with `params`, checked against its declaration (at the encoder's
    depth `layers`, where known)."""
    cls = get_regularizer(name)
    return cls(**cls.check_params(params or {}, layers))


def require(name: str) -> None:
    """An error, with the closest names, unless a plugin registers `name`; imports nothing."""
    _entry(name)

