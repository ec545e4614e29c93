"""``python -m examples.rpc``: three nodes that call each other over JSON-RPC, guarded by
resilience, broken on purpose and judged by OK/FAIL checks.

Each node (``python -m examples.rpc.node``, its own OS process) serves ``MathService.Add`` and
``Arith.Multiply`` over HTTP/1.1 over mutual TLS behind ``resilience.asgi.LoadShedding``, and
calls its peers through one ``httpx.AsyncClient`` with a
``resilience.httpx.AsyncCommandTransport`` (a command, so a circuit, per peer). Not part of
the installed package; run it from the repository's root. See ``docs/rpc.md``.

``story`` is the program (the operator), ``checks`` the verdict, ``node`` one node, ``tally``
what a caller saw, and two modules ``examples/cluster`` shares: ``jsonrpc`` (JSON-RPC 2.0 over
HTTP/1.1 over ``serve_tls``, with an h11 bridge to ASGI) and ``pki`` (throwaway certificates).
"""
