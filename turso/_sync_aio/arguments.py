"""Checks of the arguments our public API takes, shared by its modules."""

import math


def seconds(name: str, value: object) -> float:
    """`value` as a duration in seconds: a real number (bool is not one), finite and > 0; else TypeError or
    ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    duration = float(value)
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"{name} must be a finite number of seconds greater than 0, not {value!r}")
    return duration
