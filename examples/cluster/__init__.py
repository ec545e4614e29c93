"""``make cluster-demo``: a small distributed system on loopback, guarded by resilience.

A 3-member etcd cluster, two masters (election, lease-bound leadership, a lock with fencing
tokens) and three workers (JSON-RPC over mutual TLS behind load shedding), each node its own
OS process; the demo breaks them on purpose and ends with OK/FAIL checks. Not part of the
installed package; run it from the repository's root: ``python -m examples.cluster --help``.
See ``docs/cluster.md``.

``story`` is the program (the operator), ``checks`` the verdict, ``procs`` the processes,
``node`` one node (``python -m examples.cluster.node``) with ``master``, ``worker`` and
``session`` (its lease), ``etcd`` the client of etcd's JSON gateway, ``config`` the numbers.
JSON-RPC over HTTP/1.1 over mutual TLS (``examples/rpc/jsonrpc.py``) and the throwaway
certificates (``examples/rpc/pki.py``) are shared with ``examples/rpc``.
"""
