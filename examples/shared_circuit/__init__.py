"""Two processes sharing one circuit through Redis: ``python -m examples.shared_circuit``.

Process A calls a dependency that has just died and trips its circuit; process B, which has
not seen a single failure, starts refusing calls within its poll interval. After the sleep
window exactly one of them runs the half-open trial against the (by then recovered)
dependency, and its success closes the circuit in both. Each process prints what it saw.

It starts its own ``redis-server`` on a free loopback port (no persistence) when one is
installed, or uses ``--url redis://...``. See docs/shared-state.md.
"""
