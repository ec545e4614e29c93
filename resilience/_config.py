"""Configuration of a command: a frozen, validated dataclass with Hystrix's defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["CommandConfig"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class CommandConfig:
    """How one command behaves. Times are in seconds; defaults are Hystrix's."""

    timeout: float | None = 1.0
    max_concurrent_requests: int = 10
    request_volume_threshold: int = 20
    error_percent_threshold: float = 50
    sleep_window: float = 5.0
    rolling_window: float = 10.0
    buckets: int = 10
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    force_open: bool = False
    force_closed: bool = False

    def __post_init__(self) -> None:
        t = self.timeout
        if t is not None and (not _is_number(t) or not t > 0 or math.isnan(t)):
            raise ValueError(f"timeout must be a number > 0 or None, got {t!r}")
        _check_int("max_concurrent_requests", self.max_concurrent_requests, 1)
        _check_int("request_volume_threshold", self.request_volume_threshold, 0)
        _check_int("buckets", self.buckets, 1)
        pct = self.error_percent_threshold
        if not _is_number(pct) or not 1 <= pct <= 100:
            raise ValueError(f"error_percent_threshold must be within 1..100, got {pct!r}")
        sw = self.sleep_window
        if not _is_number(sw) or not sw >= 0 or math.isinf(sw):
            raise ValueError(f"sleep_window must be a finite number >= 0, got {sw!r}")
        rw = self.rolling_window
        if not _is_number(rw) or not rw > 0 or math.isinf(rw):
            raise ValueError(f"rolling_window must be a finite number > 0, got {rw!r}")
        ignore = self.ignore_exceptions
        if isinstance(ignore, type):
            ignore = (ignore,)
        if not isinstance(ignore, tuple | list | frozenset | set):
            raise ValueError(
                f"ignore_exceptions must be a tuple of exception types, got {ignore!r}"
            )
        for item in ignore:
            if not (isinstance(item, type) and issubclass(item, BaseException)):
                raise ValueError(
                    f"ignore_exceptions must hold exception types, got {item!r}"
                )
        object.__setattr__(self, "ignore_exceptions", tuple(ignore))
        for flag in ("force_open", "force_closed"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}")

    def replace(self, **changes: Any) -> CommandConfig:
        """A copy with ``changes`` applied; unknown field names raise ``TypeError``."""
        unknown = set(changes) - _FIELDS
        if unknown:
            raise TypeError(
                f"unknown CommandConfig field(s): {', '.join(sorted(unknown))}; "
                f"known fields: {', '.join(sorted(_FIELDS))}"
            )
        return dataclasses.replace(self, **changes)


def _check_int(field: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")


_FIELDS = frozenset(f.name for f in dataclasses.fields(CommandConfig))
