"""Checks of the arguments our public API takes, shared by its modules."""

import math
from typing import Optional


def seconds(name: str, value: object) -> float:
    """`value` as a duration in seconds: a real number (bool is not one), finite and > 0; else TypeError or
    ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    duration = float(value)
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"{name} must be a finite number of seconds greater than 0, not {value!r}")
    return duration


def optional_byte_count(name: str, value: object) -> Optional[int]:
    """`value` as a number of bytes: None, or an int (bool is not one) >= 0; else TypeError or ValueError naming
    `name`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number of bytes or None, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be a number of bytes >= 0 or None, not {value!r}")
    return value
