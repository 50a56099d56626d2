"""irqbypass: the Linux IRQ bypass manager for userspace virtualization stacks.

Producers (interrupt sources) and consumers (interrupt sinks) register with a
:class:`Manager`, which pairs them by token and runs their callbacks in the
kernel's order. The public API comes in tiers, one per audience, as pluggy
curates its own:

- ``irqbypass`` (this module): for a program that embeds the manager: the
  Manager, the endpoints and their tokens, topologies and their configuration,
  the plugin loader, signal safety for code that must not be cut, and the one
  error hierarchy;
- :mod:`irqbypass.plugin`: for plugin authors: hooks, kinds, options, the
  device-producer template and the event loop's types;
- :mod:`irqbypass.system`: the system helpers: ioctl numbers and the seam to
  the OS, and opening paths others may share;
- :mod:`irqbypass.testing`: fakes and fixtures for tests.

Every other module is private and may change. Every name is imported on first
use (PEP 562): ``import irqbypass`` costs almost nothing, so a command such as
``irqbypass --version`` imports only what it needs; type checkers see the
imports below as they are.
"""

from __future__ import annotations

#: the one place the core's version is written (pyproject.toml reads it; the
#: plugin API is versioned with it: docs/plugin-guide.md, "Versions and compatibility")
__version__ = "0.1.0"

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config, EndpointConfig, load_config, parse_config
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
    from .eventfd import Eventfd
    from .loop import event_loop
    from .manager import Manager
    from .plugins import PluginHost, load_plugins
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
    from .tokens import TokenTable
    from .topology import Changes, Placed, Topology, Totals

if TYPE_CHECKING:  # the names that moved to a tier (_MOVED): typed here while deprecated
    from .device import (
        QUIESCE_MODES as QUIESCE_MODES,
    )
    from .device import (
        DeviceInterrupt as DeviceInterrupt,
    )
    from .device import (
        DeviceProducer as DeviceProducer,
    )
    from .devicegroup import (
        DeviceCalls as DeviceCalls,
    )
    from .devicegroup import (
        DeviceGroup as DeviceGroup,
    )
    from .eventfd import (
        HoldingEventfd as HoldingEventfd,
    )
    from .hookspecs import (
        HookRelay as HookRelay,
    )
    from .hookspecs import (
        hookimpl as hookimpl,
    )
    from .hookspecs import (
        hookspec as hookspec,
    )
    from .kinds import (
        Availability as Availability,
    )
    from .kinds import (
        EndpointSpec as EndpointSpec,
    )
    from .kinds import (
        Factory as Factory,
    )
    from .kinds import (
        Kind as Kind,
    )
    from .kinds import (
        KindRegistrar as KindRegistrar,
    )
    from .kinds import (
        KindRegistry as KindRegistry,
    )
    from .kinds import (
        Side as Side,
    )
    from .loop import (
        EventLoop as EventLoop,
    )
    from .loop import (
        LoopFault as LoopFault,
    )
    from .loop import (
        LoopHandle as LoopHandle,
    )
    from .options import (
        Options as Options,
    )
    from .options import (
        Settings as Settings,
    )
    from .options import (
        show_value as show_value,
    )
    from .paths import (
        UnsafePathError as UnsafePathError,
    )
    from .paths import (
        check_owner as check_owner,
    )
    from .paths import (
        open_directory as open_directory,
    )
    from .paths import (
        open_file as open_file,
    )
    from .paths import (
        split_path as split_path,
    )
    from .paths import (
        trusted_uids as trusted_uids,
    )
    from .plugins import (
        PluginInfo as PluginInfo,
    )
    from .seam import (
        IOC_NONE as IOC_NONE,
    )
    from .seam import (
        IOC_READ as IOC_READ,
    )
    from .seam import (
        IOC_WRITE as IOC_WRITE,
    )
    from .seam import (
        RealSeam as RealSeam,
    )
    from .seam import (
        Seam as Seam,
    )
    from .seam import (
        ioctl_number as ioctl_number,
    )
    from .testing import (
        DeviceCall as DeviceCall,
    )
    from .testing import (
        FakeDevice as FakeDevice,
    )

#: each submodule and the public names it defines: what ``__getattr__`` imports
_MODULES: dict[str, tuple[str, ...]] = {
    "config": ("Config", "EndpointConfig", "load_config", "parse_config"),
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
    "eventfd": ("Eventfd",),
    "loop": ("event_loop",),
    "manager": ("Manager",),
    "plugins": ("PluginHost", "load_plugins"),
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
    "tokens": ("TokenTable",),
    "topology": ("Changes", "Placed", "Topology", "Totals"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

#: what this module exported before the API had tiers and exports no more:
#: ``irqbypass.NAME`` still works until 0.3, with a DeprecationWarning that names
#: the tier which exports it now (the tiers' ``__all__`` say which)
_MOVED = frozenset(
    """
    Availability DeviceCall DeviceCalls DeviceGroup DeviceInterrupt DeviceProducer
    EndpointSpec EventLoop Factory FakeDevice HoldingEventfd HookRelay IOC_NONE
    IOC_READ IOC_WRITE Kind KindRegistrar KindRegistry LoopFault LoopHandle Options
    PluginInfo QUIESCE_MODES RealSeam Seam Settings Side UnsafePathError check_owner
    hookimpl hookspec ioctl_number open_directory open_file show_value split_path
    trusted_uids
    """.split()  # noqa: SIM905 (a record of names, read as one)
)
_TIERS = ("plugin", "system", "testing")


def _exports(
    module: str, modules: Mapping[str, tuple[str, ...]], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A public module's PEP 562 ``__getattr__`` and ``__dir__``: each name of
    ``modules`` (implementation module -> names) is imported from its module
    on first use and kept in ``namespace``; of this package, a submodule is
    imported when reached as an attribute (as when every module was imported
    eagerly)."""
    where = {name: home for home, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        home = where.get(name)
        if home is not None:
            value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
            namespace[name] = value
            return value
        if module == __name__ and not name.startswith("__"):
            try:
                return importlib.import_module(f".{name}", __name__)
            except ModuleNotFoundError as error:
                if error.name != f"{__name__}.{name}":
                    raise  # a module the submodule itself imports is missing: say that
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *namespace["__all__"]})

    return __getattr__, __dir__


_public, __dir__ = _exports(__name__, _MODULES, globals())


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here; a
    name that moved to a tier says where it lives now (and is not kept, so
    that every use is told)."""
    if name not in _MOVED:
        return _public(name)
    tier = next(t for t in _TIERS if name in importlib.import_module(f"{__name__}.{t}").__all__)
    warnings.warn(
        f"irqbypass.{name} is deprecated: import it from irqbypass.{tier} "
        f"(from irqbypass.{tier} import {name}); the old name goes in irqbypass 0.3",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(f"{__name__}.{tier}"), name)


__all__ = [
    "AlreadyRegisteredError",
    "BusyError",
    "CallbackError",
    "CallbackFailure",
    "Changes",
    "Config",
    "ConfigError",
    "ConnectError",
    "Consumer",
    "DeviceError",
    "Endpoint",
    "EndpointConfig",
    "Eventfd",
    "EventfdClosedError",
    "InvalidEndpointError",
    "IrqBypassError",
    "KindConflictError",
    "LoopClosedError",
    "Manager",
    "PairStatus",
    "Placed",
    "PluginError",
    "PluginHost",
    "Producer",
    "ReentrantCallError",
    "TokenInUseError",
    "TokenTable",
    "Topology",
    "TopologyError",
    "Totals",
    "UnknownKindError",
    "Veto",
    "callout",
    "currently_signal_safe",
    "deliver_deferred_signals",
    "delivering_deferred_signals",
    "event_loop",
    "guard_signals",
    "hold",
    "interruptible",
    "load_config",
    "load_plugins",
    "parse_config",
    "signal_safe",
]
