"""The API for plugin authors: what a plugin needs beyond :mod:`irqbypass`.

A plugin imports :mod:`irqbypass` for what every user of the manager has (the
endpoints, :class:`~irqbypass.Eventfd`, the errors, :func:`~irqbypass.event_loop`)
and this module for the extension points: the hook markers, the kinds it
registers and the options it reads, the device-producer template and the event
loop's types. System helpers
(ioctl numbers, paths others may share) are in :mod:`irqbypass.system`; fakes
and fixtures for its tests in :mod:`irqbypass.testing`.

Every name is imported on first use, as :mod:`irqbypass`'s are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _exports

if TYPE_CHECKING:
    from .device import QUIESCE_MODES, DeviceInterrupt, DeviceProducer
    from .devicegroup import DeviceCalls, DeviceGroup
    from .eventfd import HoldingEventfd
    from .hookspecs import HookRelay, hookimpl, hookspec
    from .kinds import Availability, EndpointSpec, Factory, Kind, KindRegistrar, KindRegistry, Side
    from .loop import EventLoop, LoopFault, LoopHandle
    from .options import Options, Settings, show_value
    from .plugins import PluginInfo
    from .signals import uninterrupted

#: each implementation module and the names this tier takes from it
_MODULES: dict[str, tuple[str, ...]] = {
    "device": ("QUIESCE_MODES", "DeviceInterrupt", "DeviceProducer"),
    "devicegroup": ("DeviceCalls", "DeviceGroup"),
    "eventfd": ("HoldingEventfd",),
    "hookspecs": ("HookRelay", "hookimpl", "hookspec"),
    "kinds": (
        "Availability",
        "EndpointSpec",
        "Factory",
        "Kind",
        "KindRegistrar",
        "KindRegistry",
        "Side",
    ),
    "loop": ("EventLoop", "LoopFault", "LoopHandle"),
    "options": ("Options", "Settings", "show_value"),
    "plugins": ("PluginInfo",),
    "signals": ("uninterrupted",),
}
__getattr__, __dir__ = _exports(__name__, _MODULES, globals())


__all__ = [
    "QUIESCE_MODES",
    "Availability",
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
    "Options",
    "PluginInfo",
    "Settings",
    "Side",
    "hookimpl",
    "hookspec",
    "show_value",
    "uninterrupted",
]
