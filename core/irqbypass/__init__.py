"""irqbypass: the Linux IRQ bypass manager for userspace virtualization stacks.

Producers (interrupt sources) and consumers (interrupt sinks) register with a
:class:`Manager`, which pairs them by token and runs their callbacks in the
kernel's order. The public API comes in tiers, one per audience, as pluggy
curates its own:

- ``irqbypass`` (this module): for a program that embeds the manager: the
  Manager, the endpoints and their tokens, topologies and their configuration,
  the plugin loader, and the one error hierarchy's root and kinds; beside it,
  :mod:`irqbypass.exceptions` has the finer errors and :mod:`irqbypass.reports`
  the types of what a topology reports;
- :mod:`irqbypass.plugin`: for plugin authors: hooks, kinds, options, the
  device-producer template and the event loop's types;
- :mod:`irqbypass.signalsafe`: for code a Ctrl-C must not cut (a VMM's own, a
  plugin's ``uninterrupted`` methods): sections, call-outs, locks, delivery;
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
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

    from ._config import Config, EndpointConfig, load_config, parse_config
    from ._endpoints import Consumer, Endpoint, Producer
    from ._errors import (
        BusyError,
        CallbackFailure,
        ConfigError,
        DeviceError,
        EventfdClosedError,
        InvalidEndpointError,
        IrqBypassError,
        LoopClosedError,
        PluginError,
        ReentrantCallError,
        TopologyError,
        Veto,
    )
    from ._eventfd import Eventfd
    from ._loop import event_loop
    from ._manager import Manager
    from ._plugins import PluginHost, load_plugins
    from ._tokens import TokenTable
    from ._topology import Topology

if TYPE_CHECKING:  # the names that moved to a tier (_MOVED): typed here while deprecated
    from ._device import (
        QUIESCE_MODES as QUIESCE_MODES,
    )
    from ._device import (
        DeviceInterrupt as DeviceInterrupt,
    )
    from ._device import (
        DeviceProducer as DeviceProducer,
    )
    from ._devicegroup import (
        DeviceCalls as DeviceCalls,
    )
    from ._devicegroup import (
        DeviceGroup as DeviceGroup,
    )
    from ._errors import (
        AlreadyRegisteredError as AlreadyRegisteredError,
    )
    from ._errors import (
        CallbackError as CallbackError,
    )
    from ._errors import (
        ConnectError as ConnectError,
    )
    from ._errors import (
        KindConflictError as KindConflictError,
    )
    from ._errors import (
        TokenInUseError as TokenInUseError,
    )
    from ._errors import (
        UnknownKindError as UnknownKindError,
    )
    from ._eventfd import (
        HoldingEventfd as HoldingEventfd,
    )
    from ._hookspecs import (
        HookRelay as HookRelay,
    )
    from ._hookspecs import (
        hookimpl as hookimpl,
    )
    from ._hookspecs import (
        hookspec as hookspec,
    )
    from ._kinds import (
        Availability as Availability,
    )
    from ._kinds import (
        EndpointSpec as EndpointSpec,
    )
    from ._kinds import (
        Factory as Factory,
    )
    from ._kinds import (
        Kind as Kind,
    )
    from ._kinds import (
        KindRegistrar as KindRegistrar,
    )
    from ._kinds import (
        KindRegistry as KindRegistry,
    )
    from ._kinds import (
        Side as Side,
    )
    from ._ledger import (
        Placed as Placed,
    )
    from ._ledger import (
        Totals as Totals,
    )
    from ._loop import (
        EventLoop as EventLoop,
    )
    from ._loop import (
        LoopFault as LoopFault,
    )
    from ._loop import (
        LoopHandle as LoopHandle,
    )
    from ._options import (
        Options as Options,
    )
    from ._options import (
        Settings as Settings,
    )
    from ._options import (
        show_value as show_value,
    )
    from ._paths import (
        UnsafePathError as UnsafePathError,
    )
    from ._paths import (
        check_owner as check_owner,
    )
    from ._paths import (
        open_directory as open_directory,
    )
    from ._paths import (
        open_file as open_file,
    )
    from ._paths import (
        split_path as split_path,
    )
    from ._paths import (
        trusted_uids as trusted_uids,
    )
    from ._plan import (
        Changes as Changes,
    )
    from ._plugins import (
        PluginInfo as PluginInfo,
    )
    from ._seam import (
        IOC_NONE as IOC_NONE,
    )
    from ._seam import (
        IOC_READ as IOC_READ,
    )
    from ._seam import (
        IOC_WRITE as IOC_WRITE,
    )
    from ._seam import (
        RealSeam as RealSeam,
    )
    from ._seam import (
        Seam as Seam,
    )
    from ._seam import (
        ioctl_number as ioctl_number,
    )
    from ._signals import (
        callout as callout,
    )
    from ._signals import (
        currently_signal_safe as currently_signal_safe,
    )
    from ._signals import (
        deliver_deferred_signals as deliver_deferred_signals,
    )
    from ._signals import (
        delivering_deferred_signals as delivering_deferred_signals,
    )
    from ._signals import (
        guard_signals as guard_signals,
    )
    from ._signals import (
        hold as hold,
    )
    from ._signals import (
        interruptible as interruptible,
    )
    from ._signals import (
        signal_safe as signal_safe,
    )
    from ._status import (
        PairStatus as PairStatus,
    )
    from .testing import (
        DeviceCall as DeviceCall,
    )
    from .testing import (
        FakeDevice as FakeDevice,
    )

#: each submodule and the public names it defines: what ``__getattr__`` imports
_MODULES: dict[str, tuple[str, ...]] = {
    "_config": ("Config", "EndpointConfig", "load_config", "parse_config"),
    "_endpoints": ("Consumer", "Endpoint", "Producer"),
    "_errors": (
        "BusyError",
        "CallbackFailure",
        "ConfigError",
        "DeviceError",
        "EventfdClosedError",
        "InvalidEndpointError",
        "IrqBypassError",
        "LoopClosedError",
        "PluginError",
        "ReentrantCallError",
        "TopologyError",
        "Veto",
    ),
    "_eventfd": ("Eventfd",),
    "_loop": ("event_loop",),
    "_manager": ("Manager",),
    "_plugins": ("PluginHost", "load_plugins"),
    "_tokens": ("TokenTable",),
    "_topology": ("Topology",),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

#: what this module exported before the API had tiers and exports no more:
#: ``irqbypass.NAME`` still works until 0.3, with a DeprecationWarning that names
#: the public module which exports it now (the modules' ``__all__`` say which)
_MOVED = frozenset(
    """
    Availability DeviceCall DeviceCalls DeviceGroup DeviceInterrupt DeviceProducer
    EndpointSpec EventLoop Factory FakeDevice HoldingEventfd HookRelay IOC_NONE
    IOC_READ IOC_WRITE Kind KindRegistrar KindRegistry LoopFault LoopHandle Options
    PluginInfo QUIESCE_MODES RealSeam Seam Settings Side UnsafePathError check_owner
    hookimpl hookspec ioctl_number open_directory open_file show_value split_path
    trusted_uids
    callout currently_signal_safe deliver_deferred_signals delivering_deferred_signals
    guard_signals hold interruptible signal_safe
    AlreadyRegisteredError CallbackError ConnectError KindConflictError TokenInUseError
    UnknownKindError Changes PairStatus Placed Totals
    """.split()  # noqa: SIM905 (a record of names, read as one)
)
#: the public modules beside this one (each ``__all__`` is what it exports)
_TIERS = ("exceptions", "plugin", "reports", "signalsafe", "system", "testing")


def _exports(
    module: str,
    modules: Mapping[str, tuple[str, ...]],
    namespace: dict[str, Any],
    old: Mapping[str, Callable[[str], Any]] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A public module's PEP 562 ``__getattr__`` and ``__dir__``: each name of
    ``modules`` (implementation module -> names) is imported from its module
    on first use and kept in ``namespace``; a name of ``old`` (one the module
    no longer exports) is what its function gives (with its warning); of this
    package, a submodule is imported when reached as an attribute (as when
    every module was imported eagerly)."""
    where = {name: home for home, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        home = where.get(name)
        if home is not None:
            value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
            namespace[name] = value
            return value
        if old is not None and name in old:
            return old[name](name)
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


def _moved(name: str) -> Any:
    """A name that moved to a tier, from there, with a warning that says
    where it lives now (it is not kept here, so that every use is told)."""
    tier = next(t for t in _TIERS if name in importlib.import_module(f"{__name__}.{t}").__all__)
    warnings.warn(
        f"irqbypass.{name} is deprecated: import it from irqbypass.{tier} "
        f"(from irqbypass.{tier} import {name}); the old name goes in irqbypass 0.3",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(f"{__name__}.{tier}"), name)


#: the implementation modules' names before they were private: ``import
#: irqbypass.topology`` still works until 0.3, with a DeprecationWarning, and is
#: the module ``irqbypass._topology`` itself (so a test's monkeypatch reaches it)
_RENAMED = frozenset(
    """
    collector config control device devicegroup deviceoptions devicestate endpoints
    errors eventfd exporter hookspecs kinds loop manager metrics notify options
    paths plugins requires seam serving signals status tokens topology
    """.split()  # noqa: SIM905 (a record of names, read as one)
)


def _renamed(name: str, stacklevel: int = 3) -> Any:
    """The private module a 0.1.0 module name stands for, with the warning."""
    warnings.warn(
        f"module irqbypass.{name} is deprecated: it is private now (irqbypass._{name}); "
        f"import the public API from irqbypass or {', '.join(f'irqbypass.{t}' for t in _TIERS)}; "
        "the old name goes in irqbypass 0.3",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return importlib.import_module(f"{__name__}._{name}")


#: each public name is imported on first use; an old name (a module reached as
#: an attribute, a name that moved to a tier) says where it lives now
__getattr__, __dir__ = _exports(
    __name__,
    _MODULES,
    globals(),
    {**dict.fromkeys(_RENAMED, _renamed), **dict.fromkeys(_MOVED, _moved)},
)


class _OldModulePaths:
    """A finder (``sys.meta_path``) for the modules' names of 0.1.0: each is
    the private module it became, imported as such, with a warning."""

    @staticmethod
    def find_spec(fullname: str, path: object = None, target: object = None) -> Any:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in _RENAMED:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(fullname, cast("Loader", _OldModulePaths))

    @staticmethod
    def create_module(spec: Any) -> Any:
        module = _renamed(spec.name.rpartition(".")[2])
        spec.loader_state = module.__spec__  # the import system sets ours on it next
        return module

    @staticmethod
    def exec_module(module: Any) -> None:
        """The module ran when it was imported under its own name: give it its
        own spec back."""
        module.__spec__ = module.__spec__.loader_state


if not any(getattr(finder, "__qualname__", "") == "_OldModulePaths" for finder in sys.meta_path):
    sys.meta_path.append(_OldModulePaths)

__all__ = [
    "BusyError",
    "CallbackFailure",
    "Config",
    "ConfigError",
    "Consumer",
    "DeviceError",
    "Endpoint",
    "EndpointConfig",
    "Eventfd",
    "EventfdClosedError",
    "InvalidEndpointError",
    "IrqBypassError",
    "LoopClosedError",
    "Manager",
    "PluginError",
    "PluginHost",
    "Producer",
    "ReentrantCallError",
    "TokenTable",
    "Topology",
    "TopologyError",
    "Veto",
    "event_loop",
    "load_config",
    "load_plugins",
    "parse_config",
]
