"""Finding regularizers: every plugin, built-in or third-party, is an entry point of the
`regbench.regularizers` group, looked up by name and imported only when asked for."""

from __future__ import annotations

import warnings
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from regbench.errors import RegbenchError, unknown_name
from regbench.plugin import Regularizer

GROUP = "regbench.regularizers"

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
    return _distribution(_entry(name))

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
    entry = _entry(name)
    try:
        cls = entry.load()
    except Exception as err:
        raise RegbenchError(
            f"Regularizer {name!r} from {_distribution(entry)} failed to import "
            f"({type(err).__name__}: {err}). Fix or reinstall that package; the other "
            "regularizers still work."
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
        raise RegbenchError(f"Entry point {entry.value!r} of {_distribution(entry)} is not a "
                            "subclass of regbench.plugin.Regularizer.")
    return cls

def loadable() -> dict[str, type[Regularizer]]:
    """Every regularizer that imports; each one that does not is reported as a warning."""
    loaded = {}
    for name in names():
        try:
            loaded[name] = get_regularizer(name)
        except RegbenchError as err:
            warnings.warn(str(err), stacklevel=2)
    return loaded

def build(name: str, params: dict | None = None) -> Regularizer:
    return get_regularizer(name)(**(params or {}))
