"""irqbypass: the Linux IRQ bypass manager for userspace virtualization stacks.

Producers (interrupt sources) and consumers (interrupt sinks) register with a
:class:`Manager`, which pairs them by token and runs their callbacks in the
kernel's order. This module is the whole public API: embedders and plugins use
only what ``__all__`` lists.

Every name is imported on first use (PEP 562): ``import irqbypass`` costs
almost nothing, so a command such as ``irqbypass --version`` imports only
what it needs; type checkers see the imports below as they are.
"""

from __future__ import annotations

#: the one place the core's version is written (pyproject.toml reads it; the
#: plugin API is versioned with it: docs/plugin-guide.md, "Versions and compatibility")
__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config, EndpointConfig, load_config, parse_config
    from .device import QUIESCE_MODES, DeviceInterrupt, DeviceProducer
    from .devicegroup import DeviceCalls, DeviceGroup
    from .endpoints import Consumer, Endpoint, Producer
    from .errors import (
        AlreadyRegisteredError,
        BusyError,
        CallbackError,
        CallbackFailure,
        ConfigError,
        ConnectError,
        DeviceError,
        EventfdClosedError,
        InvalidEndpointError,
        IrqBypassError,
        KindConflictError,
        LoopClosedError,
        PluginError,
        ReentrantCallError,
        TokenInUseError,
        TopologyError,
        UnknownKindError,
        Veto,
    )
    from .eventfd import Eventfd, HoldingEventfd
    from .hookspecs import HookRelay, hookimpl, hookspec
    from .kinds import Availability, EndpointSpec, Factory, Kind, KindRegistrar, KindRegistry, Side
    from .loop import EventLoop, LoopFault, LoopHandle, event_loop
    from .manager import Manager
    from .options import Options, Settings, show_value
    from .paths import (
        UnsafePathError,
        check_owner,
        open_directory,
        open_file,
        split_path,
        trusted_uids,
    )
    from .plugins import PluginHost, PluginInfo, load_plugins
    from .seam import IOC_NONE, IOC_READ, IOC_WRITE, RealSeam, Seam, ioctl_number
    from .signals import (
        callout,
        currently_signal_safe,
        deliver_deferred_signals,
        delivering_deferred_signals,
        guard_signals,
        hold,
        interruptible,
        signal_safe,
    )
    from .status import PairStatus
    from .testing import DeviceCall, FakeDevice
    from .tokens import TokenTable
    from .topology import Changes, Placed, Topology, Totals

#: each submodule and the public names it defines: what ``__getattr__`` imports
_MODULES: dict[str, tuple[str, ...]] = {
    "config": ("Config", "EndpointConfig", "load_config", "parse_config"),
    "device": ("QUIESCE_MODES", "DeviceInterrupt", "DeviceProducer"),
    "devicegroup": ("DeviceCalls", "DeviceGroup"),
    "endpoints": ("Consumer", "Endpoint", "Producer"),
    "errors": (
        "AlreadyRegisteredError",
        "BusyError",
        "CallbackError",
        "CallbackFailure",
        "ConfigError",
        "ConnectError",
        "DeviceError",
        "EventfdClosedError",
        "InvalidEndpointError",
        "IrqBypassError",
        "KindConflictError",
        "LoopClosedError",
        "PluginError",
        "ReentrantCallError",
        "TokenInUseError",
        "TopologyError",
        "UnknownKindError",
        "Veto",
    ),
    "eventfd": ("Eventfd", "HoldingEventfd"),
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
    "loop": ("EventLoop", "LoopFault", "LoopHandle", "event_loop"),
    "manager": ("Manager",),
    "options": ("Options", "Settings", "show_value"),
    "paths": (
        "UnsafePathError",
        "check_owner",
        "open_directory",
        "open_file",
        "split_path",
        "trusted_uids",
    ),
    "plugins": ("PluginHost", "PluginInfo", "load_plugins"),
    "seam": ("IOC_NONE", "IOC_READ", "IOC_WRITE", "RealSeam", "Seam", "ioctl_number"),
    "signals": (
        "callout",
        "currently_signal_safe",
        "deliver_deferred_signals",
        "delivering_deferred_signals",
        "guard_signals",
        "hold",
        "interruptible",
        "signal_safe",
    ),
    "status": ("PairStatus",),
    "testing": ("DeviceCall", "FakeDevice"),
    "tokens": ("TokenTable",),
    "topology": ("Changes", "Placed", "Topology", "Totals"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here."""
    module = _WHERE.get(name)
    if module is None:
        return _submodule(name)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def _submodule(name: str) -> Any:
    """``irqbypass.plugins`` after a bare ``import irqbypass``: the submodule,
    imported now, as it was when this package imported every module eagerly."""
    if not name.startswith("__"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise  # a module the submodule itself imports is missing: say that
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "IOC_NONE",
    "IOC_READ",
    "IOC_WRITE",
    "QUIESCE_MODES",
    "AlreadyRegisteredError",
    "Availability",
    "BusyError",
    "CallbackError",
    "CallbackFailure",
    "Changes",
    "Config",
    "ConfigError",
    "ConnectError",
    "Consumer",
    "DeviceCall",
    "DeviceCalls",
    "DeviceError",
    "DeviceGroup",
    "DeviceInterrupt",
    "DeviceProducer",
    "Endpoint",
    "EndpointConfig",
    "EndpointSpec",
    "EventLoop",
    "Eventfd",
    "EventfdClosedError",
    "Factory",
    "FakeDevice",
    "HoldingEventfd",
    "HookRelay",
    "InvalidEndpointError",
    "IrqBypassError",
    "Kind",
    "KindConflictError",
    "KindRegistrar",
    "KindRegistry",
    "LoopClosedError",
    "LoopFault",
    "LoopHandle",
    "Manager",
    "Options",
    "PairStatus",
    "Placed",
    "PluginError",
    "PluginHost",
    "PluginInfo",
    "Producer",
    "RealSeam",
    "ReentrantCallError",
    "Seam",
    "Settings",
    "Side",
    "TokenInUseError",
    "TokenTable",
    "Topology",
    "TopologyError",
    "Totals",
    "UnknownKindError",
    "UnsafePathError",
    "Veto",
    "callout",
    "check_owner",
    "currently_signal_safe",
    "deliver_deferred_signals",
    "delivering_deferred_signals",
    "event_loop",
    "guard_signals",
    "hold",
    "hookimpl",
    "hookspec",
    "interruptible",
    "ioctl_number",
    "load_config",
    "load_plugins",
    "open_directory",
    "open_file",
    "parse_config",
    "show_value",
    "signal_safe",
    "split_path",
    "trusted_uids",
]
