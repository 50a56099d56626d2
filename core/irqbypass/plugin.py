"""The API for plugin authors: what a plugin needs beyond :mod:`irqbypass`.

A plugin imports :mod:`irqbypass` for what every user of the manager has (the
endpoints, :class:`~irqbypass.Eventfd`, the errors, :func:`~irqbypass.event_loop`)
and this module for the extension points: the hook markers, the kinds it
registers and the options it reads, the device-producer template (and the
keywords it takes, :class:`DeviceArgs`), the event
loop's types, an attribute read from one of its parts (:class:`Alias`), what it
starts and closes (:class:`Service`), and the templates of signal safety: a
method that, once begun, runs to its end (:func:`uninterrupted`, :func:`holding`
with a lock held) and what such a method reaches, marked where it is defined
(:func:`waits_on_peer`, :func:`calls_partner`), so a plugin never needs
:mod:`irqbypass.signalsafe`. System helpers (ioctl numbers, paths others may
share) are in :mod:`irqbypass.system`; fakes and fixtures for its tests in
:mod:`irqbypass.testing`.

Every name is imported on first use, as :mod:`irqbypass`'s are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _exports

if TYPE_CHECKING:  # the names of _MODULES, as type checkers read them
    from ._device import QUIESCE_MODES as QUIESCE_MODES
    from ._device import DeviceInterrupt as DeviceInterrupt
    from ._device import DeviceProducer as DeviceProducer
    from ._devicegroup import DeviceCalls as DeviceCalls
    from ._devicegroup import DeviceGroup as DeviceGroup
    from ._eventfd import HoldingEventfd as HoldingEventfd
    from ._hookspecs import HookRelay as HookRelay
    from ._hookspecs import hookimpl as hookimpl
    from ._hookspecs import hookspec as hookspec
    from ._kinds import Availability as Availability
    from ._kinds import EndpointSpec as EndpointSpec
    from ._kinds import Factory as Factory
    from ._kinds import Kind as Kind
    from ._kinds import KindRegistrar as KindRegistrar
    from ._kinds import KindRegistry as KindRegistry
    from ._kinds import Side as Side
    from ._loop import EventLoop as EventLoop
    from ._loop import LoopFault as LoopFault
    from ._loop import LoopHandle as LoopHandle
    from ._loop import on_loop_thread as on_loop_thread
    from ._options import Options as Options
    from ._options import Settings as Settings
    from ._options import show_value as show_value
    from ._optiontable import KeywordFactory as KeywordFactory
    from ._optiontable import Option as Option
    from ._plugins import PluginInfo as PluginInfo
    from ._signals import calls_partner as calls_partner
    from ._signals import holding as holding
    from ._signals import uninterrupted as uninterrupted
    from ._signals import waits_on_peer as waits_on_peer
    from ._templates import Alias as Alias
    from ._templates import DeviceArgs as DeviceArgs
    from ._templates import Service as Service
    from ._vhost import VhostVirtqueue as VhostVirtqueue

#: each implementation module and the names this tier takes from it
_MODULES: dict[str, tuple[str, ...]] = {
    "_device": ("QUIESCE_MODES", "DeviceInterrupt", "DeviceProducer"),
    "_devicegroup": ("DeviceCalls", "DeviceGroup"),
    "_eventfd": ("HoldingEventfd",),
    "_hookspecs": ("HookRelay", "hookimpl", "hookspec"),
    "_kinds": (
        "Availability",
        "EndpointSpec",
        "Factory",
        "Kind",
        "KindRegistrar",
        "KindRegistry",
        "Side",
    ),
    "_loop": ("EventLoop", "LoopFault", "LoopHandle", "on_loop_thread"),
    "_options": ("Options", "Settings", "show_value"),
    "_optiontable": ("KeywordFactory", "Option"),
    "_plugins": ("PluginInfo",),
    "_signals": ("calls_partner", "holding", "uninterrupted", "waits_on_peer"),
    "_templates": ("Alias", "DeviceArgs", "Service"),
    "_vhost": ("VhostVirtqueue",),
}
__all__ = [name for names in _MODULES.values() for name in names]
__getattr__, __dir__ = _exports(__name__, _MODULES, globals())
