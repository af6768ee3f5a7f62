"""How reports show figures to people.

A figure can be missing or not a number (F1 over a split with no answerable questions, say); the
JSON reports hold ``null`` for it, and humans see ``n/a`` rather than a crash or ``nan``.
"""

from __future__ import annotations

import math
from typing import Any


def figure(x: Any, spec: str = ".4f") -> str:
    """``x`` formatted with ``spec``, or ``n/a`` when it is missing or not a finite number."""
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"
