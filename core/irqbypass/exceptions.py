"""The finer errors: which kind of busy, which callback failure, which plugin problem.

Every error is an :class:`irqbypass.IrqBypassError`, and :mod:`irqbypass` exports
the hierarchy's root and its direct kinds (:class:`~irqbypass.BusyError`,
:class:`~irqbypass.CallbackFailure`, :class:`~irqbypass.PluginError`, ...): what a
program catches to decide what to do. This module holds their subclasses, for a
caller that must tell them apart: a token another endpoint holds from an endpoint
registered twice, a pairing that failed (nothing registered) from a callback that
failed once the operation completed, a kind no plugin provides from one two
plugins claim. The tree, with each one's errno, is on docs/api.md ("Errors").

The errors are defined where the core raises them, and a program that catches
one has that module loaded already: so this module imports them when it is
imported (errno and typing, nothing of the command line's), not on first use.
"""

from __future__ import annotations

from ._errors import AlreadyRegisteredError as AlreadyRegisteredError
from ._errors import CallbackError as CallbackError
from ._errors import ConnectError as ConnectError
from ._errors import KindConflictError as KindConflictError
from ._errors import TokenInUseError as TokenInUseError
from ._errors import UnknownKindError as UnknownKindError

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
