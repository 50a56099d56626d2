"""The pluggy hooks of project ``irqbypass``.

Lifecycle hooks: every callback call of every connect and disconnect goes through
one of ``irqbypass_add``, ``irqbypass_del``, ``irqbypass_stop`` and
``irqbypass_start``. The core's own implementation (registered last) calls the
endpoint's method; a plugin wraps it with ``@hookimpl(wrapper=True)`` to trace,
time, audit or veto the call (raising from a wrapper of ``irqbypass_add`` is a
failed connect). Hooks are only called for callbacks the endpoint defines, as the
kernel only calls non-NULL callbacks.

Kind registration: ``irqbypass_register_kinds`` hands a plugin a registrar for
its producer and consumer kinds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .kinds import KindRegistrar

PROJECT = "irqbypass"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def irqbypass_add(endpoint: Any, partner: Any, side: str) -> None:
    """Connect ``endpoint`` to ``partner``: ``producer.add_consumer(consumer)``
    (``side == "producer"``) or ``consumer.add_producer(producer)``
    (``side == "consumer"``). Raising fails the connect."""


@hookspec
def irqbypass_del(endpoint: Any, partner: Any, side: str) -> None:
    """Disconnect ``endpoint`` from ``partner``: ``producer.del_consumer`` or
    ``consumer.del_producer``."""


@hookspec
def irqbypass_stop(endpoint: Any, side: str) -> None:
    """Quiesce ``endpoint`` before an add or del."""


@hookspec
def irqbypass_start(endpoint: Any, side: str) -> None:
    """Restart ``endpoint`` after an add or del (always, also after a failure)."""


@hookspec
def irqbypass_register_kinds(register: KindRegistrar) -> None:
    """Register this plugin's kinds: ``register.producer("name", factory)`` and
    ``register.consumer("name", factory)``. A factory takes an
    :class:`~irqbypass.EndpointSpec` and returns the endpoint, unopened."""


LIFECYCLE_HOOKS = ("irqbypass_add", "irqbypass_del", "irqbypass_stop", "irqbypass_start")
