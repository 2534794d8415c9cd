"""The one exception type users see, and the "did you mean" that goes with unknown names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RegbenchError(Exception):
    """A problem with the user's input or environment, stated with the way out."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> RegbenchError:
    known = sorted(known)
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return RegbenchError(f"Unknown {kind} {name!r}.{hint} Known: {', '.join(known)}.")
