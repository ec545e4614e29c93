"""Checks shared by every configuration class: ``TypeError`` for a value of the wrong type,
``ValueError`` for a value out of range, both naming the field and the value."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = [
    "MAX_SECONDS",
    "ExceptionMatcher",
    "check_bool",
    "check_finite",
    "check_fraction",
    "check_int",
    "check_number",
    "check_seconds",
    "exception_matcher",
]

#: Longest accepted time (timeouts, waits, windows, delays): one day. Longer values are
#: mistakes, and huge ones overflow the event loops' and threading's timers.
MAX_SECONDS = 86_400.0

#: Exception types (one class, or a tuple/list/frozenset of them), or a predicate.
ExceptionMatcher = (
    type[BaseException]
    | tuple[type[BaseException], ...]
    | list[type[BaseException]]
    | frozenset[type[BaseException]]
    | Callable[[Exception], bool]
)


def check_number(field: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{field} must be a number, got {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{field} must not be NaN")


def check_seconds(field: str, value: object, *, minimum: float, inclusive: bool) -> None:
    check_number(field, value)
    assert isinstance(value, int | float)
    low_ok = value >= minimum if inclusive else value > minimum
    if not low_ok or value > MAX_SECONDS:
        sign = ">=" if inclusive else ">"
        raise ValueError(
            f"{field} must be {sign} {minimum:g} and at most {MAX_SECONDS:g} seconds, "
            f"got {value!r}"
        )


def check_finite(
    field: str, value: object, *, minimum: float, inclusive: bool, maximum: float = math.inf
) -> float:
    """A finite number ``> minimum`` (``>=`` if ``inclusive``) and ``<= maximum``, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    if not (value >= minimum if inclusive else value > minimum):
        raise ValueError(f"{field} must be {'>=' if inclusive else '>'} {minimum:g}, got {value!r}")
    if value > maximum:
        raise ValueError(f"{field} must be at most {maximum:g}, got {value!r}")
    return float(value)


def check_fraction(field: str, value: object) -> None:
    check_number(field, value)
    assert isinstance(value, int | float)
    if not 0 <= value <= 1:
        raise ValueError(f"{field} must be within 0..1, got {value!r}")


def check_int(field: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{field} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")


def check_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{field} must be a bool, got {value!r}")


def exception_matcher(field: str, value: object) -> ExceptionMatcher:
    """Normalise a matcher: a tuple of exception types, or a predicate ``(exc) -> bool``
    (any callable that is not a class)."""
    if isinstance(value, type):
        value = (value,)
    elif callable(value):
        return value  # a predicate (exc) -> bool
    if not isinstance(value, tuple | list | frozenset | set):
        raise TypeError(
            f"{field} must be an exception type, a tuple, list or frozenset of "
            f"them, or a predicate (exc) -> bool; got {value!r}"
        )
    for item in value:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"{field} must hold exception types, got {item!r}")
    return tuple(value)
