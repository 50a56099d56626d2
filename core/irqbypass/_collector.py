"""Pausing Python's cyclic garbage collector while a topology is applied or torn down.

Applying N pairs makes tens of thousands of long-lived objects at once (endpoints,
their bookkeeping, the manager's tables); each 700 allocations start a young
collection and, as they pile up, full ones that walk every object the process
holds and free nothing (they are all alive). Measured at 18,000 pairs: 6 full
collections cost 48 of 115 us a pair, which made apply and teardown grow with N.
Tearing down frees by reference count, and its allocations start collections too.

The collector is the process's, not the library's: it is paused only for the
call (and only if it was on), and put back as the caller had it on every path,
an exception or a Ctrl-C included. Nothing is lost: the allocations made while
paused are still counted, and the first collection after is as usual.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar, cast

_F = TypeVar("_F", bound=Callable[..., Any])


def without_collection(call: _F) -> _F:
    """``call``, run with the cyclic collector off, as the caller had it after
    (a decorator: what runs so is marked where it is defined).

    Signal-safe without the guard of :mod:`irqbypass.signalsafe`: CPython runs a
    signal handler only after a C call such as ``gc.disable()`` returns (or in
    Python code), so ``disable`` is inside the ``try`` (a ``KeyboardInterrupt``
    right after it still runs the ``finally``), and the ``finally`` reaches
    ``gc.enable()`` without running Python code first. Nested and concurrent
    calls compose: only a call that found the collector on turns it back on.
    """

    @functools.wraps(call)
    def paused(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        try:
            gc.disable()
            return call(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return cast("_F", paused)
