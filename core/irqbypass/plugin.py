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

if TYPE_CHECKING:
    from ._device import QUIESCE_MODES, DeviceInterrupt, DeviceProducer
    from ._devicegroup import DeviceCalls, DeviceGroup
    from ._eventfd import HoldingEventfd
    from ._hookspecs import HookRelay, hookimpl, hookspec
    from ._kinds import Availability, EndpointSpec, Factory, Kind, KindRegistrar, KindRegistry, Side
    from ._loop import EventLoop, LoopFault, LoopHandle
    from ._options import Options, Settings, show_value
    from ._optiontable import Option, build_from_options
    from ._plugins import PluginInfo
    from ._signals import calls_partner, holding, uninterrupted, waits_on_peer
    from ._templates import Alias, DeviceArgs, Service
    from ._vhost import VhostVirtqueue

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
    "_loop": ("EventLoop", "LoopFault", "LoopHandle"),
    "_options": ("Options", "Settings", "show_value"),
    "_optiontable": ("Option", "build_from_options"),
    "_plugins": ("PluginInfo",),
    "_signals": ("calls_partner", "holding", "uninterrupted", "waits_on_peer"),
    "_templates": ("Alias", "DeviceArgs", "Service"),
    "_vhost": ("VhostVirtqueue",),
}
__getattr__, __dir__ = _exports(__name__, _MODULES, globals())


__all__ = [
    "QUIESCE_MODES",
    "Alias",
    "Availability",
    "DeviceArgs",
    "DeviceCalls",
    "DeviceGroup",
    "DeviceInterrupt",
    "DeviceProducer",
    "EndpointSpec",
    "EventLoop",
    "Factory",
    "HoldingEventfd",
    "HookRelay",
    "Kind",
    "KindRegistrar",
    "KindRegistry",
    "LoopFault",
    "LoopHandle",
    "Option",
    "Options",
    "PluginInfo",
    "Service",
    "Settings",
    "Side",
    "VhostVirtqueue",
    "build_from_options",
    "calls_partner",
    "holding",
    "hookimpl",
    "hookspec",
    "show_value",
    "uninterrupted",
    "waits_on_peer",
]
