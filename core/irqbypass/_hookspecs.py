"""The pluggy hooks of project ``irqbypass``.

Lifecycle hooks: every callback call of every connect and disconnect goes through
one of ``irqbypass_add``, ``irqbypass_del``, ``irqbypass_stop`` and
``irqbypass_start``. The core's own implementation (registered last) calls the
endpoint's method; a plugin wraps it with ``@hookimpl(wrapper=True)`` to trace,
time, audit or veto the call (raising from a wrapper of ``irqbypass_add`` is a
failed connect). Hooks are only called for callbacks the endpoint defines, as the
kernel only calls non-NULL callbacks; ``irqbypass_pair`` is called once per
pairing whatever the endpoints define, to refuse it (a veto).

Kind registration: ``irqbypass_register_kinds`` hands a plugin a registrar for
its producer and consumer kinds. Settings: ``irqbypass_configure`` hands each
plugin its own ``[plugins.NAME]`` table.

The specs are typed as an implementation should be (``endpoint:
irqbypass.Endpoint``, ``side: irqbypass.plugin.Side``); :class:`HookRelay` types
``PluginHost.hook``, the hooks as a caller sees them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    from ._endpoints import Consumer, Endpoint, Producer
    from ._kinds import KindRegistrar, Side
    from ._options import Options

PROJECT = "irqbypass"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def irqbypass_pair(producer: Producer, consumer: Consumer) -> None:
    """Decide on a pairing: called once for every connect, before any of its
    callbacks, whichever callbacks the two endpoints define. Raising refuses
    the pair as a failed add does: the endpoint being registered is not, its
    partner stays registered, unpaired, no callback runs, and ``ConnectError``
    is raised from the exception; ``irqbypass.Veto(reason, unpaired=True)``
    leaves a topology's pair open, unpaired. This is where a veto belongs: a
    wrapper of ``irqbypass_add`` with ``side == "producer"`` never runs for a
    producer without ``add_consumer`` (no hook fires for an absent callback)."""


@hookspec
def irqbypass_add(endpoint: Endpoint, partner: Endpoint, side: Side) -> None:
    """Connect ``endpoint`` to ``partner``: ``producer.add_consumer(consumer)``
    (``side == "producer"``) or ``consumer.add_producer(producer)``
    (``side == "consumer"``). Raising fails the connect."""


@hookspec
def irqbypass_del(endpoint: Endpoint, partner: Endpoint, side: Side) -> None:
    """Disconnect ``endpoint`` from ``partner``: ``producer.del_consumer`` or
    ``consumer.del_producer``."""


@hookspec
def irqbypass_stop(endpoint: Endpoint, side: Side) -> None:
    """Quiesce ``endpoint`` before an add or del."""


@hookspec
def irqbypass_start(endpoint: Endpoint, side: Side) -> None:
    """Restart ``endpoint`` after an add or del (always, also after a failure)."""


@hookspec
def irqbypass_register_kinds(register: KindRegistrar) -> None:
    """Register this plugin's kinds: ``register.producer("name", factory)`` and
    ``register.consumer("name", factory)``. A factory takes an
    :class:`~irqbypass.plugin.EndpointSpec` and returns the endpoint, unopened."""


@hookspec
def irqbypass_configure(options: Options) -> None:
    """Take this plugin's own settings: the ``[plugins.NAME]`` table of the
    topology file (NAME: the plugin's name), empty when there is none, as an
    :class:`~irqbypass.plugin.Options` reader (``options.finish()`` refuses unknown
    keys). Called before any endpoint is built; raise ``options.error(...)``
    (a ConfigError) for a bad value."""


LIFECYCLE_HOOKS = ("irqbypass_add", "irqbypass_del", "irqbypass_stop", "irqbypass_start")


class HookRelay(Protocol):
    """The type of :attr:`PluginHost.hook <irqbypass.PluginHost.hook>`: each hook
    called as pluggy calls it (keyword arguments only), returning the list of
    the implementations' results (None each)."""

    def irqbypass_pair(self, *, producer: Producer, consumer: Consumer) -> list[None]:
        """Run the ``irqbypass_pair`` implementations (a raise refuses the pair)."""
        ...

    def irqbypass_add(self, *, endpoint: Endpoint, partner: Endpoint, side: Side) -> list[None]:
        """Run the ``irqbypass_add`` implementations, wrappers outermost."""
        ...

    def irqbypass_del(self, *, endpoint: Endpoint, partner: Endpoint, side: Side) -> list[None]:
        """Run the ``irqbypass_del`` implementations."""
        ...

    def irqbypass_stop(self, *, endpoint: Endpoint, side: Side) -> list[None]:
        """Run the ``irqbypass_stop`` implementations."""
        ...

    def irqbypass_start(self, *, endpoint: Endpoint, side: Side) -> list[None]:
        """Run the ``irqbypass_start`` implementations."""
        ...

    def irqbypass_register_kinds(self, *, register: KindRegistrar) -> list[None]:
        """Run every plugin's kind registration (the host does this itself)."""
        ...

    def irqbypass_configure(self, *, options: Options) -> list[None]:
        """Run every plugin's settings hook with one table (the host hands each
        plugin its own: :meth:`PluginHost.configure <irqbypass.PluginHost.configure>`)."""
        ...
