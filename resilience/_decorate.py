"""``@command(name)``: applying a command to a function, method or async callable.

What the decorated function becomes follows what it is: coroutine functions (and methods,
``staticmethod``/``classmethod`` objects in either decorator order, objects whose
``__call__`` is a coroutine function) stay async; plain functions stay sync. Generator
functions are refused: a command would only guard *creating* the generator.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ._command import coroutine_caller
from ._command_sync import call_sync
from ._settle import Fallback

if TYPE_CHECKING:
    from ._circuit import CircuitCore

__all__ = ["CommandDecorator", "check_fallback", "is_async_callable"]

P = ParamSpec("P")
T = TypeVar("T")


def check_fallback(fallback: object, where: str) -> None:
    """A fallback is ``None`` or a callable that accepts one positional argument."""
    if fallback is None:
        return
    if not callable(fallback):
        raise TypeError(f"{where}: fallback must be callable or None, got {fallback!r}")
    try:
        signature = inspect.signature(fallback)
    except (TypeError, ValueError):
        return  # no signature to check (some builtins): trust it
    try:
        signature.bind(RuntimeError("probe"))
    except TypeError:
        raise TypeError(
            f"{where}: the fallback {fallback!r} must accept one positional argument "
            f"(the error), e.g. 'lambda exc: ...'; its signature is {signature}"
        ) from None


def is_async_callable(fn: object) -> bool:
    """A coroutine function, a partial of one, or an object with ``async def __call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = type(fn).__dict__.get("__call__") or getattr(fn, "__call__", None)  # noqa: B004
    return not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


class CommandDecorator:
    """What ``command(name)`` returns: applies the command to a function."""

    __slots__ = ("_core", "_fallback")

    def __init__(self, core: CircuitCore, fallback: Fallback | None) -> None:
        self._core = core
        self._fallback = fallback

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[object, object, T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Any) -> Any:
        if isinstance(fn, staticmethod | classmethod):
            return type(fn)(self(fn.__func__))
        name = self._core.name
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"@command({name!r}) cannot guard the generator function {fn!r}: it would "
                "only guard creating the generator, not the work done while iterating it. "
                "Decorate the function that consumes it (or collects it into a list) instead"
            )
        if not callable(fn):
            raise TypeError(f"@command({name!r}) needs a function, got {fn!r}")
        core, fallback = self._core, self._fallback
        if is_async_callable(fn):
            return functools.wraps(fn)(coroutine_caller(core, fn, fallback))
        if fallback is not None and inspect.iscoroutinefunction(fallback):
            raise TypeError(
                f"@command({name!r}): a plain def needs a plain fallback, "
                f"got the coroutine function {fallback!r}"
            )

        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            return call_sync(core, fn, args, kwargs, fallback)

        return functools.wraps(fn)(sync_wrapper)  # (attributes fn lacks are skipped)
