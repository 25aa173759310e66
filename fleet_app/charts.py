"""Small helpers the server-rendered SVG charts of every dashboard share."""

import math


def nice_step(raw: float) -> int:
    """The smallest of 1, 2, 5 × 10ⁿ at least ``raw`` (never below 1: counts are whole)."""
    if raw <= 1:
        return 1
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 5, 10):
        if multiple * magnitude >= raw:
            return multiple * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns
