"""Validation of the names users give to commands, pools, TLS servers and limiters.

A name becomes a label value in the Prometheus exposition, so a name that cannot be encoded
as UTF-8 (a lone surrogate) would turn every later scrape of the whole registry into an
error. Names are checked where they are given, once, with an error naming what was wrong.
"""

from __future__ import annotations

__all__ = ["check_name"]


def check_name(name: object, what: str = "command") -> str:
    """Return ``name`` if it is a usable name of a ``what``; raise otherwise.

    ``TypeError`` for anything but a ``str`` (``None``, bytes, unhashable values...),
    ``ValueError`` for an empty string or one that does not encode as UTF-8.
    """
    if type(name) is not str:
        if not isinstance(name, str):
            raise TypeError(f"{what} name must be a non-empty str, got {name!r}")
        name = str(name)  # a str subclass: keep a plain str (stable hash and equality)
    if not name:
        raise ValueError(f"{what} name must be a non-empty str, got ''")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} name {name!r} cannot be encoded as UTF-8 ({exc.reason} at position "
            f"{exc.start}): it could never be exported as a metric label"
        ) from None
    return name
