"""Declared parameters: the type and range of each value a user may set, checked in one place
before anything runs (a regularizer's hyperparameters and options, the training recipe)."""

from __future__ import annotations

import math
import reprlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from regbench.errors import RegbenchError

_LARGEST_FLOAT = sys.float_info.max
Bound = float | Callable[[int], float] | None  # a number, or a function of the encoder's depth


@dataclass(frozen=True)
class Param:
    """One hyperparameter or option: its default and the values it may take.

    `kind` is the default's type unless given (an `int` is accepted for a float, never a bool).
    `ge`, `gt`, `le`, `lt` bound a number; a bound may be a function of the encoder's depth (for
    layer indices). `choices` lists the values a categorical option takes. `nullable` admits None.
    `items` declares each element of a list.
    `origin` says where the allowed values came from when the plugin did not declare them.
    """

    default: Any
    kind: type | None = None
    ge: Bound = None
    gt: Bound = None
    le: Bound = None
    lt: Bound = None
    choices: tuple | None = None
    nullable: bool = False
    items: Param | None = None
    help: str = ""
    origin: str = ""

    @property
    def type(self) -> type:
        return self.kind or type(self.default)

    def bounds(self, layers: int | None) -> dict[str, float]:
        """The numeric bounds that apply: those depending on depth only when it is known."""
        found = {}
        for op in ("ge", "gt", "le", "lt"):
            bound = getattr(self, op)
            if callable(bound):
                bound = None if layers is None else bound(layers)
            if bound is not None:
                found[op] = bound
        return found

    def allowed(self, layers: int | None = None) -> str:
        """The allowed values in words, for error messages and listings."""
        kind = self.type
        if self.choices is not None:
            text = "one of " + ", ".join(map(repr, self.choices))
        elif kind in (int, float):
            symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
            limits = [f"{symbols[op]} {value:g}" if isinstance(value, float) else
                      f"{symbols[op]} {value}" for op, value in self.bounds(layers).items()]
            text = f"{'an integer' if kind is int else 'a number'}" + (
                f" {' and '.join(limits)}" if limits else "")
        elif kind is list and self.items is not None:
            text = f"a list, each {self.items.allowed(layers)}"
        else:
            text = {bool: "true or false", str: "a string", list: "a list"}.get(
                kind, kind.__name__)
        return text + (" or null" if self.nullable else "")

    def check(self, value: Any, layers: int | None = None) -> Any:
        """`value` as the run will use it (an int given for a float becomes a float); a
        `ValueError` saying what is allowed when it is not."""
        if value is None and self.nullable:
            return value
        kind = self.type
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(self.allowed(layers))
        if kind is float and isinstance(value, int):
            if abs(value) > _LARGEST_FLOAT:
                raise ValueError(self.allowed(layers))
            value = float(value)
        if not isinstance(value, kind):
            raise ValueError(self.allowed(layers))
        if self.items is not None:
            try:
                value = [self.items.check(item, layers) for item in value]
            except ValueError:
                raise ValueError(self.allowed(layers)) from None
        if kind is float and not math.isfinite(value):
            raise ValueError(self.allowed(layers))
        if self.choices is not None and value not in self.choices:
            raise ValueError(self.allowed(layers))
        tests = {"ge": value.__ge__, "gt": value.__gt__, "le": value.__le__,
                 "lt": value.__lt__} if kind in (int, float) else {}
        if not all(tests[op](bound) for op, bound in self.bounds(layers).items()):
            raise ValueError(self.allowed(layers))
        return value

    def validate(self, value: Any, what: str, layers: int | None = None) -> Any:
        """`check`, with a `RegbenchError` that names `what` and the value."""
        try:
            return self.check(value, layers)
        except ValueError as err:
            origin = f" ({self.origin})" if self.origin else ""
            raise RegbenchError(f"{what} = {reprlib.repr(value)} is not allowed; it must be "
                                f"{err}{origin}.") from None

    @classmethod
    def inferred(cls, default: Any, searched: BaseDistribution | None) -> Param:
        """The declaration of a plugin that gave only a default (and maybe a search range): its
        type from the default, its range from the search space."""
        origin = ("its search space's range: the plugin declares no `hyperparameters`, so the "
                  "values its search space explores are the only ones allowed; declaring the "
                  "parameter allows more")
        if isinstance(searched, CategoricalDistribution):
            return cls(default, choices=tuple(searched.choices), origin=origin)
        if isinstance(searched, (FloatDistribution, IntDistribution)):
            return cls(default, ge=searched.low, le=searched.high, origin=origin)
        return cls(default, nullable=default is None, kind=object if default is None else None)


def declared(default: Any, **allowed: Any) -> Any:
    """A dataclass field whose values `check_fields` checks against `allowed` (`Param`'s
    arguments)."""
    return field(default=default, metadata=allowed)


def check_fields(instance: Any, what: str) -> None:
    """Check every field of a dataclass made of `declared` fields, converting as `Param.check`
    does (an int given for a float becomes a float)."""
    for spec in fields(instance):
        object.__setattr__(instance, spec.name, Param(spec.default, **spec.metadata).validate(
            getattr(instance, spec.name), f"{what} {spec.name}"))


def from_mapping(kind: type, values: dict, what: str) -> Any:
    """The dataclass `kind` made of `values`, an unknown key an error naming the known ones."""
    known = {f.name for f in fields(kind)}
    unknown = sorted(map(str, set(values) - known))
    if unknown:
        raise RegbenchError(f"Unknown {what} key(s) {', '.join(unknown)}; the {what} has: "
                            f"{', '.join(sorted(known))}.")
    return kind(**values)
