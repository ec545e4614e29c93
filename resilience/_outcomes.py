"""The one outcome vocabulary of a command call, shared by every layer.

The first seven are the outcomes of ``resilience_command_calls_total`` (in its label order);
the rolling window also counts the two fallback outcomes, the retries it granted (for the
retry budget) and ``ERRORS``, the running total of what its health calls errors (failures,
timeouts and, with ``count_rejections``, rejections), so that health reads two counts, not four.
``IGNORED`` and ``CANCELLED`` go to the lifetime metrics only, never to the rolling window.
"""

from __future__ import annotations

__all__ = [
    "CALL_OUTCOMES",
    "CANCELLED",
    "ERRORS",
    "FAILURE",
    "FALLBACK_FAILED",
    "FALLBACK_OK",
    "IGNORED",
    "KINDS",
    "REJECTED",
    "RETRIES",
    "SHORT_CIRCUITED",
    "SUCCESS",
    "TIMEOUT",
]

(
    SUCCESS,
    FAILURE,
    TIMEOUT,
    REJECTED,
    SHORT_CIRCUITED,
    IGNORED,
    CANCELLED,
    FALLBACK_OK,
    FALLBACK_FAILED,
    RETRIES,
    ERRORS,
) = range(11)

#: Label values of ``resilience_command_calls_total``, by index.
CALL_OUTCOMES = (
    "success", "failure", "timeout", "rejected", "short_circuited", "ignored", "cancelled",
)
#: How many kinds the rolling window counts (indexes 0..10).
KINDS = 11
