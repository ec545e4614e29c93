"""The public, read-only view of a command's circuit: what ``get_circuit`` returns."""

from __future__ import annotations

from ._circuit import STATES, CircuitCore, CircuitState
from ._config import CommandConfig
from ._rolling import CircuitStatistics

__all__ = ["Circuit"]


class Circuit:
    """The public view of a command's circuit: ``name``, ``state``, ``config``,
    ``statistics()`` and ``in_flight``."""

    __slots__ = ("_core",)

    def __init__(self, core: CircuitCore) -> None:
        self._core = core

    @property
    def name(self) -> str:
        return self._core.name

    @property
    def state(self) -> CircuitState:
        return STATES[self._core.state_index]

    @property
    def config(self) -> CommandConfig:
        return self._core.config

    @property
    def in_flight(self) -> int:
        """Executions holding a concurrency slot (threads past their timeout included)."""
        return self._core.in_flight

    def statistics(self) -> CircuitStatistics:
        """A snapshot of the rolling window."""
        core = self._core
        with core.lock:
            return core.snapshot()

    def __repr__(self) -> str:
        return f"<Circuit {self.name!r} {self.state.value} in_flight={self.in_flight}>"
