"""JSON as regbench writes it: strict JSON (RFC 8259), which has no NaN or infinity; a number that
is not finite is written as null."""

from __future__ import annotations

import json
import math
from typing import Any


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def strict_json(value: Any, **options: Any) -> str:
    """`json.dumps(value, **options)`, every non-finite float written as null."""
    return json.dumps(_finite(value), allow_nan=False, **options)
