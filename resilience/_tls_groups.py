"""Restrict the key-exchange groups of one ``ssl.SSLContext`` (Python 3.11 has no API for it).

Mozilla's profiles allow X25519, prime256v1 and secp384r1; OpenSSL's default list also offers
X448 and secp521r1, and ``SSLContext.set_ecdh_curve`` takes a single curve. OpenSSL's
``SSL_CTX_set1_groups_list`` does what we need, per context (no process-wide ``OPENSSL_CONF``),
so we call it through ``ctypes`` on the context's ``SSL_CTX*``. The pointer is read from the
context object and only used after checks that it is the right one:

* CPython only; the libssl we call is the one the ``_ssl`` module is linked to (symbols are
  looked up through ``_ssl``'s own handle) and reports ``ssl.OPENSSL_VERSION_NUMBER``;
* the pointer sits right after the object header (``PyObject_HEAD; SSL_CTX *ctx;`` in every
  CPython since 3.7) and ``SSL_CTX_get_options`` on it must echo ``ctx.options`` before and
  after we flip an option bit from Python.

If any check fails the context falls back to ``set_ecdh_curve("prime256v1")`` (one group,
allowed by both profiles: compliant, but X25519 clients pay a slower key exchange) and a
warning is logged once.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys
import threading
from typing import Any

__all__ = ["PROFILE_GROUPS", "restrict_groups"]

log = logging.getLogger("resilience.tls")

#: Key-exchange groups allowed by Mozilla's intermediate and modern profiles, best first.
PROFILE_GROUPS = "X25519:prime256v1:secp384r1"
FALLBACK_GROUP = "prime256v1"

_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list() is a macro over SSL_CTX_ctrl()

_lock = threading.Lock()
_lib: Any = None  # None: not tried yet; False: unavailable
_warned = False


def _load_lib() -> Any:
    """libssl's functions as ``_ssl`` sees them, or ``False`` when they cannot be trusted."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        _lib = False
        try:
            import _ssl

            if sys.implementation.name != "cpython" or not hasattr(_ssl, "__file__"):
                return _lib
            lib = ctypes.CDLL(_ssl.__file__)
            version_num = lib.OpenSSL_version_num
            version_num.restype = ctypes.c_ulong
            version_num.argtypes = []
            if version_num() != ssl.OPENSSL_VERSION_NUMBER:
                return _lib
            lib.SSL_CTX_get_options.restype = ctypes.c_uint64
            lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_ctrl.restype = ctypes.c_long
            lib.SSL_CTX_ctrl.argtypes = [
                ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p,
            ]
            lib.ERR_clear_error.restype = None
            lib.ERR_clear_error.argtypes = []
            _lib = lib
        except (OSError, AttributeError, ImportError):  # static build, no symbols, ...
            pass
        return _lib


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: Any) -> int | None:
    """The context's ``SSL_CTX*``, or ``None`` unless it provably is one."""
    if not isinstance(ctx, ssl.SSLContext):
        return None
    header = object.__basicsize__  # sizeof(PyObject), right for debug and free-threaded builds
    if ssl.SSLContext.__basicsize__ < header + ctypes.sizeof(ctypes.c_void_p):
        return None
    ptr = ctypes.c_void_p.from_address(id(ctx) + header).value
    if not ptr:
        return None
    original = ctx.options
    if lib.SSL_CTX_get_options(ptr) != int(original):
        return None
    probe = ssl.OP_NO_TICKET
    try:
        ctx.options = original ^ probe
        seen = lib.SSL_CTX_get_options(ptr)
    finally:
        ctx.options = original
    if seen != int(original ^ probe) or lib.SSL_CTX_get_options(ptr) != int(ctx.options):
        return None
    return int(ptr)


def restrict_groups(ctx: ssl.SSLContext, groups: str = PROFILE_GROUPS) -> bool:
    """Limit ``ctx`` to ``groups`` (OpenSSL names, ``:``-separated).

    Returns ``True`` when the whole list was applied, ``False`` when the context fell back
    to ``prime256v1`` alone (logged once per process).
    """
    lib = _load_lib()
    if lib:
        ptr = _ssl_ctx_pointer(ctx, lib)
        if ptr is not None:
            buf = ctypes.create_string_buffer(groups.encode("ascii"))
            if lib.SSL_CTX_ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, buf) == 1:
                return True
            lib.ERR_clear_error()  # leave no stale error for the next ssl call to report
            ssl_err = "SSL_CTX_set1_groups_list refused " + repr(groups)
        else:
            ssl_err = "the SSL_CTX pointer of the context could not be verified"
    else:
        ssl_err = "libssl is not reachable through ctypes on this build"
    ctx.set_ecdh_curve(FALLBACK_GROUP)
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "resilience.tls: cannot set key-exchange groups %s (%s); using %s only",
            groups, ssl_err, FALLBACK_GROUP,
        )
    return False
