"""ASGI middleware: server-side load shedding and error mapping (``resilience.asgi``).

* :class:`LoadShedding` wraps an ASGI application: every HTTP request runs through one command
  (a concurrency limit, ``max_wait`` and a timeout; its circuit never trips), refusals become
  ``503`` with ``Retry-After``, timeouts ``504``; resilience errors that escape the application
  before its response starts become ``503``/``429``/``504``.
* :data:`exception_handlers` gives Starlette and FastAPI (``exception_handlers=``) the same
  responses from inside the application, where they turn exceptions into a 500 themselves.

Nothing beyond the ASGI spec is needed (extra ``[asgi]`` is empty); any ASGI server, asyncio
or trio. See ``docs/asgi.md``.
"""

from __future__ import annotations

from ._asgi import ErrorResponse as ErrorResponse  # the handlers' response (not in __all__)
from ._asgi import LoadShedding, exception_handlers

__all__ = ["LoadShedding", "exception_handlers"]

# Public classes show this module as their home (reprs and tracebacks name no private module).
for _cls in (ErrorResponse, LoadShedding):
    _cls.__module__ = __name__
del _cls
