"""``make demo``: every part of resilience working together on loopback, in about 30 seconds.

Not part of the installed package: it lives in the repository next to the other examples and
uses only resilience's public API (plus httpx as the HTTP client: the ``[demo]`` extra).
Run it from the repository's root: ``python -m examples.demo --help``.

``app`` is the program, ``upstream`` the flaky HTTPS server it calls, ``story`` the checks the
run is judged by, ``view`` the live view of the metrics and ``certs`` the throwaway PKI.
"""
