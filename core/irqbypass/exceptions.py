"""The finer errors: which kind of busy, which callback failure, which plugin problem.

Every error is an :class:`irqbypass.IrqBypassError`, and :mod:`irqbypass` exports
the hierarchy's root and its direct kinds (:class:`~irqbypass.BusyError`,
:class:`~irqbypass.CallbackFailure`, :class:`~irqbypass.PluginError`, ...): what a
program catches to decide what to do. This module holds their subclasses, for a
caller that must tell them apart: a token another endpoint holds from an endpoint
registered twice, a pairing that failed (nothing registered) from a callback that
failed once the operation completed, a kind no plugin provides from one two
plugins claim. The tree, with each one's errno, is on docs/api.md ("Errors").

Every name is imported on first use, as :mod:`irqbypass`'s are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _exports

if TYPE_CHECKING:
    from ._errors import (
        AlreadyRegisteredError,
        CallbackError,
        ConnectError,
        KindConflictError,
        TokenInUseError,
        UnknownKindError,
    )

__all__ = [
    "AlreadyRegisteredError",
    "CallbackError",
    "ConnectError",
    "KindConflictError",
    "TokenInUseError",
    "UnknownKindError",
]

#: every name comes from the one implementation module
_MODULES: dict[str, tuple[str, ...]] = {"_errors": tuple(__all__)}
__getattr__, __dir__ = _exports(__name__, _MODULES, globals())
