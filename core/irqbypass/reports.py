"""What a :class:`~irqbypass.Topology` reports about itself.

A program gets these from the topology, never makes them: ``status()`` has one
:class:`PairStatus` per token (its counts read when asked), ``placed`` and
``entry(name)`` the :class:`Placed` endpoint of each entry and how far it got
(its :class:`Totals` over earlier opens), and ``reconcile()`` and ``change()``
return the :class:`Changes` they made. Import them to name their types.

Every name is imported on first use, as :mod:`irqbypass`'s are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _exports

if TYPE_CHECKING:
    from ._ledger import Placed, Totals
    from ._plan import Changes
    from ._status import PairStatus

#: each implementation module and the names this module takes from it
_MODULES: dict[str, tuple[str, ...]] = {
    "_ledger": ("Placed", "Totals"),
    "_plan": ("Changes",),
    "_status": ("PairStatus",),
}
__getattr__, __dir__ = _exports(__name__, _MODULES, globals())


__all__ = ["Changes", "PairStatus", "Placed", "Totals"]
