"""Configuration of a command: a frozen, keyword-only, validated dataclass (Hystrix defaults).

Validation happens here, once, so that a value accepted at configuration time never makes a
later call fail: ``TypeError`` for a value of the wrong type, ``ValueError`` for a value out
of range, both naming the field and the value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CommandConfig", "IgnoreExceptions"]

#: Longest accepted time (timeouts, waits, windows): one day. Longer values are mistakes,
#: and huge ones overflow the event loops' and threading's timers.
MAX_SECONDS = 86_400.0

#: Exception types (one class, or a tuple/list/frozenset of them), or a predicate.
IgnoreExceptions = (
    type[BaseException]
    | tuple[type[BaseException], ...]
    | list[type[BaseException]]
    | frozenset[type[BaseException]]
    | Callable[[Exception], bool]
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandConfig:
    """How one command behaves. Times are in seconds; defaults are Hystrix's.

    ``ignore_exceptions`` are the caller's fault (re-raised as is, no fallback, not counted in
    health); ``failed_if`` marks a returned value as a failure; ``count_rejections`` says
    whether ``MaxConcurrencyError`` rejections count as errors in the circuit's health.
    """

    timeout: float | None = 1.0
    max_concurrent_requests: int = 10
    max_wait: float = 0.0
    count_rejections: bool = True
    request_volume_threshold: int = 20
    error_percent_threshold: float = 50
    sleep_window: float = 5.0
    rolling_window: float = 10.0
    buckets: int = 10
    ignore_exceptions: IgnoreExceptions = ()
    failed_if: Callable[[Any], bool] | None = None
    force_open: bool = False
    force_closed: bool = False

    def __post_init__(self) -> None:
        if self.timeout is not None:
            _check_seconds("timeout", self.timeout, minimum=0.0, inclusive=False)
        _check_int("max_concurrent_requests", self.max_concurrent_requests, 1)
        _check_seconds("max_wait", self.max_wait, minimum=0.0, inclusive=True)
        _check_bool("count_rejections", self.count_rejections)
        _check_int("request_volume_threshold", self.request_volume_threshold, 0)
        pct = self.error_percent_threshold
        _check_number("error_percent_threshold", pct)
        if not 1 <= pct <= 100:
            raise ValueError(f"error_percent_threshold must be within 1..100, got {pct!r}")
        _check_seconds("sleep_window", self.sleep_window, minimum=0.0, inclusive=True)
        rw = self.rolling_window
        _check_number("rolling_window", rw)
        if not 0.001 <= rw <= MAX_SECONDS:
            raise ValueError(
                f"rolling_window must be within 0.001..{MAX_SECONDS:g} seconds, got {rw!r}"
            )
        _check_int("buckets", self.buckets, 1)
        if self.buckets > 1000:
            raise ValueError(f"buckets must be within 1..1000, got {self.buckets!r}")
        object.__setattr__(self, "ignore_exceptions", _ignore(self.ignore_exceptions))
        if self.failed_if is not None and not callable(self.failed_if):
            raise TypeError(f"failed_if must be a callable or None, got {self.failed_if!r}")
        _check_bool("force_open", self.force_open)
        _check_bool("force_closed", self.force_closed)

    def replace(self, **changes: Any) -> CommandConfig:
        """A copy with ``changes`` applied; unknown field names raise ``TypeError``."""
        unknown = set(changes) - FIELDS
        if unknown:
            raise TypeError(
                f"unknown CommandConfig field(s): {', '.join(sorted(unknown))}; "
                f"known fields: {', '.join(sorted(FIELDS))}"
            )
        return dataclasses.replace(self, **changes)


def _check_number(field: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{field} must be a number, got {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{field} must not be NaN")


def _check_seconds(field: str, value: object, *, minimum: float, inclusive: bool) -> None:
    _check_number(field, value)
    assert isinstance(value, int | float)
    low_ok = value >= minimum if inclusive else value > minimum
    if not low_ok or value > MAX_SECONDS:
        sign = ">=" if inclusive else ">"
        raise ValueError(
            f"{field} must be {sign} {minimum:g} and at most {MAX_SECONDS:g} seconds, "
            f"got {value!r}"
        )


def _check_int(field: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{field} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")


def _check_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{field} must be a bool, got {value!r}")


def _ignore(value: object) -> IgnoreExceptions:
    """Normalise ``ignore_exceptions``: a tuple of exception types, or a predicate."""
    if isinstance(value, type):
        value = (value,)
    elif callable(value):
        return value  # a predicate (exc) -> bool
    if not isinstance(value, tuple | list | frozenset | set):
        raise TypeError(
            "ignore_exceptions must be an exception type, a tuple, list or frozenset of "
            f"them, or a predicate (exc) -> bool; got {value!r}"
        )
    for item in value:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"ignore_exceptions must hold exception types, got {item!r}")
    return tuple(value)


FIELDS = frozenset(f.name for f in dataclasses.fields(CommandConfig))
