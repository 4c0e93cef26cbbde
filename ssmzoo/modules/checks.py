"""Constructor-argument checks shared by modules, layers and models.

Each raises a ``ValueError`` that names the owner (the class), the argument and what was expected,
so a bad config value fails at construction with a message a user can act on, never later inside
a kernel. ``bool`` is rejected where an int or a number is expected (``True`` is an int in Python).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


def check_int(owner: str, arg: str, value: Any, minimum: int = 1) -> int:
    """An int >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{owner}: {arg} must be an int >= {minimum}, got {value!r}")
    return value


def check_float(
    owner: str,
    arg: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    optional: bool = False,
) -> float | None:
    """A finite real number, optionally > ``above``, >= ``at_least`` and < ``below``; None if ``optional``."""
    if value is None and optional:
        return None
    bounds = [f"> {above}" if above is not None else "", f">= {at_least}" if at_least is not None else "",
              f"< {below}" if below is not None else ""]
    expected = "a finite number" + "".join(f" {b}" for b in bounds if b) + (" or None" if optional else "")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (below is None or value < below)
    if not ok:
        raise ValueError(f"{owner}: {arg} must be {expected}, got {value!r}")
    return float(value)


def check_bool(owner: str, arg: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {arg} must be True or False, got {value!r}")
    return value


def check_choice(owner: str, arg: str, value: Any, choices: Sequence[Any]) -> Any:
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{owner}: {arg} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_int_list(owner: str, arg: str, values: Any, minimum: int) -> list[int]:
    """A non-empty list (or tuple) of ints >= ``minimum``."""
    if (
        not isinstance(values, (list, tuple))
        or not values
        or any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in values)
    ):
        raise ValueError(f"{owner}: {arg} must be a non-empty list of ints >= {minimum}, got {values!r}")
    return list(values)


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for this device's type (then inputs may be in a lower precision than the
    parameters, and dtype checks let them through)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except (RuntimeError, TypeError):  # device types autocast does not know (meta)
        return False
