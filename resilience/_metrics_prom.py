"""The one place that touches prometheus-client's multi-process internals.

prometheus-client has no public API to write a value into its multi-process files: its own
metrics do it through ``prometheus_client.values.ValueClass``, chosen when it is imported. This
adapter wraps that (and the public ``MultiProcessCollector``) so the flusher depends on three
small functions; it is tested against the oldest and the newest supported prometheus-client.
"""

from __future__ import annotations

from typing import Protocol, cast

from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["FileValue", "aggregating_registry", "file_value", "multiprocess_active"]


class FileValue(Protocol):
    """One sample's value in this process's multi-process file."""

    def set(self, value: float) -> None: ...


def multiprocess_active() -> bool:
    """Whether prometheus-client runs in multi-process mode (decided when it was imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def file_value(
    typ: str, family: str, sample: str, labelnames: tuple[str, ...],
    labelvalues: tuple[str, ...], help: str, mode: str,
) -> FileValue:
    """The file entry of one sample (``mode``: a gauge's multi-process mode, else ``""``).

    ``ValueClass(typ, metric_name, name, labelnames, labelvalues, help_text,
    multiprocess_mode=...)`` has this signature in every supported prometheus-client (0.20 on).
    """
    obj = values.ValueClass(
        typ, family, sample, list(labelnames), list(labelvalues), help, multiprocess_mode=mode
    )
    return cast(FileValue, obj)


def aggregating_registry(path: str | None = None) -> CollectorRegistry:
    """A registry that reads every process's files (``PROMETHEUS_MULTIPROC_DIR`` by default)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry
