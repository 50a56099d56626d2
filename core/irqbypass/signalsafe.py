"""Signal safety, for code of your own that a Ctrl-C must not cut.

The manager guards its bookkeeping with these; a VMM uses them for its own
sections (and :func:`guard_signals` after installing handlers of its own). A
plugin never needs them: its methods that must not be cut and what they reach
are marked with :mod:`irqbypass.plugin`'s templates (``uninterrupted``,
``holding``, ``waits_on_peer``, ``calls_partner``), built on these. A section is marked where
it is defined (:func:`signal_safe`); a signal that lands in it waits, and is
delivered by :class:`delivering_deferred_signals` around the section's call.
See docs/embedding.md, "Signals and Ctrl-C", and docs/design.md.

Every name is imported on first use, as :mod:`irqbypass`'s are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _exports

if TYPE_CHECKING:
    from ._signals import (
        callout,
        currently_signal_safe,
        deliver_deferred_signals,
        delivering_deferred_signals,
        guard_signals,
        hold,
        interruptible,
        signal_safe,
    )

__all__ = [
    "callout",
    "currently_signal_safe",
    "deliver_deferred_signals",
    "delivering_deferred_signals",
    "guard_signals",
    "hold",
    "interruptible",
    "signal_safe",
]

#: every name comes from the one implementation module
_MODULES: dict[str, tuple[str, ...]] = {"_signals": tuple(__all__)}
__getattr__, __dir__ = _exports(__name__, _MODULES, globals())
