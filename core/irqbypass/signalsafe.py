"""Signal safety, for code of your own that a Ctrl-C must not cut.

The manager guards its bookkeeping with these; a VMM uses them for its own
sections (and :func:`guard_signals` after installing handlers of its own). A
plugin never needs them: its methods that must not be cut and what they reach
are marked with :mod:`irqbypass.plugin`'s templates (``uninterrupted``,
``holding``, ``waits_on_peer``, ``calls_partner``), built on these. A section is marked where
it is defined (:func:`signal_safe`); a signal that lands in it waits, and is
delivered by :class:`delivering_deferred_signals` around the section's call.
See docs/embedding.md, "Signals and Ctrl-C", and docs/design.md.

Importing this module imports the signal machinery itself (signal, threading,
weakref), which a section needs the moment it is marked: the names are bound
at import, not on first use as :mod:`irqbypass`'s are.
"""

from __future__ import annotations

from ._signals import callout as callout
from ._signals import currently_signal_safe as currently_signal_safe
from ._signals import deliver_deferred_signals as deliver_deferred_signals
from ._signals import delivering_deferred_signals as delivering_deferred_signals
from ._signals import guard_signals as guard_signals
from ._signals import hold as hold
from ._signals import interruptible as interruptible
from ._signals import signal_safe as signal_safe

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
