"""Configuration of a command: a frozen, keyword-only, validated dataclass (Hystrix defaults).

Validation happens here, once, so that a value accepted at configuration time never makes a
later call fail: ``TypeError`` for a value of the wrong type, ``ValueError`` for a value out
of range, both naming the field and the value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._retry import Retry
from ._validate import (
    MAX_SECONDS,
    ExceptionMatcher,
    check_bool,
    check_int,
    check_number,
    check_seconds,
    exception_matcher,
)

__all__ = ["CommandConfig", "IgnoreExceptions"]

IgnoreExceptions = ExceptionMatcher


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandConfig:
    """How one command behaves. Times are in seconds; defaults are Hystrix's.

    ``ignore_exceptions`` are the caller's fault (re-raised as is, no fallback, not counted in
    health); ``failed_if`` marks a returned value as a failure; ``count_rejections`` says
    whether ``MaxConcurrencyError`` rejections count as errors in the circuit's health;
    ``retry`` is a :class:`Retry` policy (``None``: one attempt).
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
    retry: Retry | None = None
    force_open: bool = False
    force_closed: bool = False

    def __post_init__(self) -> None:
        if self.timeout is not None:
            check_seconds("timeout", self.timeout, minimum=0.0, inclusive=False)
        check_int("max_concurrent_requests", self.max_concurrent_requests, 1)
        check_seconds("max_wait", self.max_wait, minimum=0.0, inclusive=True)
        check_bool("count_rejections", self.count_rejections)
        check_int("request_volume_threshold", self.request_volume_threshold, 0)
        pct = self.error_percent_threshold
        check_number("error_percent_threshold", pct)
        if not 1 <= pct <= 100:
            raise ValueError(f"error_percent_threshold must be within 1..100, got {pct!r}")
        check_seconds("sleep_window", self.sleep_window, minimum=0.0, inclusive=True)
        rw = self.rolling_window
        check_number("rolling_window", rw)
        if not 0.001 <= rw <= MAX_SECONDS:
            raise ValueError(
                f"rolling_window must be within 0.001..{MAX_SECONDS:g} seconds, got {rw!r}"
            )
        check_int("buckets", self.buckets, 1)
        if self.buckets > 1000:
            raise ValueError(f"buckets must be within 1..1000, got {self.buckets!r}")
        ignore = exception_matcher("ignore_exceptions", self.ignore_exceptions)
        object.__setattr__(self, "ignore_exceptions", ignore)
        if self.failed_if is not None and not callable(self.failed_if):
            raise TypeError(f"failed_if must be a callable or None, got {self.failed_if!r}")
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise TypeError(f"retry must be a resilience.Retry or None, got {self.retry!r}")
        check_bool("force_open", self.force_open)
        check_bool("force_closed", self.force_closed)

    def replace(self, **changes: Any) -> CommandConfig:
        """A copy with ``changes`` applied; unknown field names raise ``TypeError``."""
        unknown = set(changes) - FIELDS
        if unknown:
            raise TypeError(
                f"unknown CommandConfig field(s): {', '.join(sorted(unknown))}; "
                f"known fields: {', '.join(sorted(FIELDS))}"
            )
        return dataclasses.replace(self, **changes)


FIELDS = frozenset(f.name for f in dataclasses.fields(CommandConfig))
