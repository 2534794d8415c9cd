"""How the board's numbers and settings read as text, the same in the markdown and on the web
page: "–" stands for a value the board does not have."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

TIED = "≈"  # a stability rank that cannot be told apart from the cell's steadiest


def num(x: float, digits: int = 3, sign: bool = False) -> str:
    return "–" if pd.isna(x) else f"{x:{'+' if sign else ''}.{digits}f}"


def rank_text(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:g}"


def p_text(x: float) -> str:
    """A p-value: three decimals, and "< 0.001" below that."""
    return "–" if pd.isna(x) else "< 0.001" if x < 0.001 else f"{x:.3f}"


def percent(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.0f}%"


def moment(iso: str) -> str:
    moment = pd.Timestamp(iso)  # SQLite gives back UTC without its zone
    moment = moment.tz_localize("UTC") if moment.tz is None else moment.tz_convert("UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def seeds_text(row: pd.Series) -> str:
    """Runs with a result over planned ones, what failed outright, in bold when the cell is
    incomplete."""
    text = f"{row.n_completed}/{row.n_planned}"
    outright = [f"{count} {what}" for count, what in ((row.n_diverged, "diverged"),
                                                      (row.n_crashed, "crashed")) if count]
    if outright:
        text += f" ({', '.join(outright)})"
    return text if row.n_completed == row.n_planned else f"**{text}**"


def configuration(values: dict[str, Any]) -> str:
    """Hyperparameters as "name=value, …", a float to three significant digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def params_text(text: str) -> str:
    """A cell's configurations (a JSON list of them), one after the other."""
    shown = [configuration(c) or "–" for c in json.loads(text)]
    return " / ".join(shown) or "–"


def tied_to_steadiest(apart: Any) -> bool:
    """Whether a cell's `stability_apart` says its rank cannot be told from the steadiest."""
    return not pd.isna(apart) and not apart


def setting(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)
