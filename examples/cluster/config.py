"""The numbers the cluster runs on, and the etcd keys it uses (one place, so the docs and the
checks quote the same values the nodes run with)."""

from __future__ import annotations

__all__ = [
    "ADMIN_PATH",
    "DISPATCH_POOL_QUEUE",
    "DISPATCH_POOL_WORKERS",
    "ELECTION",
    "ETCD_TIMEOUT",
    "FAILED",
    "FENCE",
    "KEEPALIVE_EVERY",
    "LAST",
    "LEASE_MARGIN",
    "LEASE_TTL",
    "LOCK",
    "LOG",
    "NODES",
    "RESULTS",
    "RPC_PATH",
    "TASKS",
    "TASK_DEADLINE",
    "WORKER_CIRCUIT",
    "WORKER_LIMIT",
    "WORKER_MAX_WAIT",
    "WORKER_SHED_TIMEOUT",
    "WORKER_TIMEOUT",
]

#: Every node's lease (registration, election key, lock key). etcd 3.4 raises a TTL below
#: 1.5 election timeouts to that minimum; the demo's members use a 500 ms election timeout.
LEASE_TTL = 3
#: Keepalive period: six renewals per TTL (a failed renewal is asked again at once, through
#: the next member), so an etcd leader election (about a second) never costs a lease.
KEEPALIVE_EVERY = LEASE_TTL / 6
#: A leader steps down this long before its lease could expire (as far as it can tell).
LEASE_MARGIN = 0.3
#: Timeout of one etcd call on one member: shorter than a third of the TTL, so a call that
#: hangs on a dead member leaves time to renew through another member before the lease ends.
ETCD_TIMEOUT = 0.5

#: The leader's command per worker node: deadline of one task RPC...
WORKER_TIMEOUT = 0.5
#: ... and its circuit (opens at >= 50 % errors over >= 5 calls in a 3 s window, trial after
#: 1.5 s) and bulkhead (4 tasks in flight per worker).
WORKER_CIRCUIT = {
    "timeout": WORKER_TIMEOUT,
    "max_concurrent_requests": 4,
    "request_volume_threshold": 5,
    "error_percent_threshold": 50,
    "rolling_window": 3.0,
    "sleep_window": 1.5,
}
#: How long the leader keeps placing one task before it reports it failed.
TASK_DEADLINE = 8.0
#: The leader's dispatch pool: workers (tasks in flight) and queue (backpressure).
DISPATCH_POOL_WORKERS = 8
DISPATCH_POOL_QUEUE = 16

#: A worker's own protection (``resilience.asgi.LoadShedding``): tasks at once, how long a
#: request may wait for a slot (then 503), and how long one may run (then 504).
WORKER_LIMIT = 4
WORKER_MAX_WAIT = 0.05
WORKER_SHED_TIMEOUT = 1.0

#: JSON-RPC endpoints: tasks go through the load shedder; the admin path (stats, controls)
#: is exempt, so an operator can always reach an overloaded node.
RPC_PATH = "/rpc"
ADMIN_PATH = "/admin"

# etcd keys (all under /cluster/).
NODES = "/cluster/nodes/"  # <id> -> registration (JSON), under the node's lease
TASKS = "/cluster/tasks/"  # <task id> -> task (JSON), written by the producer
RESULTS = "/cluster/results/"  # <task id> -> result (JSON), written once, fenced by the term
FAILED = "/cluster/failed/"  # <task id> -> why the leader gave up (JSON), written once
ELECTION = "/cluster/election"  # the masters' election (etcd election API)
LOCK = "/cluster/locks/last-dispatch"  # the lock guarding the last-dispatch record
FENCE = "/cluster/last-dispatch/fence"  # highest fencing token written so far (zero-padded)
LAST = "/cluster/last-dispatch/current"  # the last-dispatch record (JSON): the guarded work
LOG = "/cluster/last-dispatch/log/"  # <token> -> each last-dispatch record, for the checks
