"""Kinds: the named endpoint factories that plugins register.

A topology entry ``kind = "mock"`` is looked up here. A plugin registers its kinds
through the ``irqbypass_register_kinds`` hook, which hands it a
:class:`KindRegistrar`. Two plugins registering one name make that name
ambiguous: it is refused at use with an error naming both, while every other kind
of both plugins keeps working.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, Literal, TypeVar, overload

from ._endpoints import Consumer, Endpoint, Producer
from ._errors import KindConflictError, UnknownKindError
from ._options import Options, show_exception, show_value

#: which end of a pair: a topology entry's side, a kind's, a lifecycle hook's ``side``
Side = Literal["producer", "consumer"]
SIDES: tuple[Side, Side] = ("producer", "consumer")

#: The kinds of this project's own plugin family, by side, and the distribution
#: that provides each: an unknown kind among them says what to install. Names
#: only, nothing is imported (the core knows no plugin's code); a test checks
#: the table against the plugins themselves.
FAMILY: Mapping[tuple[Side, str], str] = {
    ("producer", "mock"): "irqbypass-mock",
    ("producer", "vfio"): "irqbypass-vfio",
    ("producer", "vhost"): "irqbypass-vhost",
    ("producer", "vhost-user"): "irqbypass-vhost-user",
    ("producer", "vdpa"): "irqbypass-vdpa",
    ("consumer", "logging"): "irqbypass-logging",
    ("consumer", "kvm-irqfd"): "irqbypass-kvm",
    ("consumer", "posted-interrupt"): "irqbypass-posted",
}


@dataclass(frozen=True)
class EndpointSpec:
    """Everything a kind's factory needs to build one endpoint.

    ``token`` is the :class:`~irqbypass.Eventfd` the topology owns for
    ``token_name``; both endpoints of a pair get the same one. ``options`` is
    the entry's free ``options`` table; read it with :meth:`options_reader`
    for errors that name the file and key.
    """

    name: str
    kind: str
    side: Side
    token: Hashable
    token_name: str = ""
    irq: int | None = None
    bypass: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    key_path: str = ""
    file: str | None = None

    def options_reader(self) -> Options:
        """The ``options`` table as an :class:`~irqbypass.plugin.Options` reader, whose
        errors name the file and the key (``producers[0].options.path``)."""
        where = f"{self.key_path}.options" if self.key_path else f"{self.name}.options"
        return Options(self.options, where=where, file=self.file)


Factory = Callable[[EndpointSpec], Endpoint]
#: the endpoint class a kind's factory builds: Producer or Consumer
_E = TypeVar("_E", bound=Endpoint)
#: Returns None when the kind can work on this machine, else why not (a short
#: reason). Either no argument (the machine: ``/dev/kvm`` exists), or one: the
#: entry's ``options`` table (an empty one when there is no entry), to check what
#: that entry names, such as its own device path; the kvm plugin's does.
Availability = Callable[[], "str | None"] | Callable[[Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class Kind(Generic[_E]):
    """A registered kind: its name, side, factory and the plugin it came from.

    Generic in what the factory builds: ``registry.get("producer", name)`` is a
    ``Kind[Producer]``, whose ``factory(spec)`` a type checker knows to be a
    :class:`~irqbypass.Producer` (no ``isinstance`` needed)."""

    name: str
    side: Side
    factory: Callable[[EndpointSpec], _E]
    plugin: str
    availability: Availability | None = None

    def unavailable_reason(self, options: Mapping[str, Any] | None = None) -> str | None:
        """Why this kind cannot work here (no device, no permission), or None;
        ``options`` is the entry's options table, for checks that take it."""
        check: Callable[..., object] | None = self.availability
        if check is None:
            return None
        table = dict(options or {})
        try:
            taking = _takes_options(check)
            if taking == "keyword":
                reason = check(options=table)
            else:
                reason = check(table) if taking == "positional" else check()
        except (Exception, SystemExit) as exc:  # sys.exit() in a plugin ends no command
            return (
                f"its availability check raised {show_exception(exc)}; "
                f"this is a bug in plugin {self.plugin}"
            )
        if reason is not None and not isinstance(reason, str):
            return (
                f"its availability check returned {show_value(reason)}, not None or a reason "
                f"(a str); this is a bug in plugin {self.plugin}"
            )
        return reason


def _takes_options(check: Callable[..., object]) -> str | None:
    """How ``check`` takes the entry's options: "keyword" (a keyword-only
    ``options``), "positional" (one parameter), or None (none)."""
    try:
        parameters = inspect.signature(check).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return None
    named = parameters.get("options")
    if named is not None and named.kind is inspect.Parameter.KEYWORD_ONLY:
        return "keyword"
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(
        p.kind in positional and (p.default is inspect.Parameter.empty or p.name == "options")
        for p in parameters.values()
    ):
        return "positional"
    return None


@dataclass(frozen=True, slots=True)
class _SideRegistrar(Generic[_E]):
    """``register.producer`` or ``register.consumer``: one plugin's entry to
    register kinds of one side, typed by the endpoint class the side builds."""

    side: Side
    plugin: str
    registry: KindRegistry

    def __call__(
        self,
        name: str,
        factory: Callable[[EndpointSpec], _E],
        *,
        availability: Availability | None = None,
    ) -> None:
        """Register kind ``name`` of this side; ``availability`` says whether
        it can work on this machine (None: always)."""
        self.registry.add(Kind(name, self.side, factory, self.plugin, availability))


class KindRegistrar:
    """What ``irqbypass_register_kinds`` receives: register kinds by side,
    ``register.producer(name, factory, *, availability=None)`` and
    ``register.consumer(name, factory, *, availability=None)``."""

    #: register producer kind ``name``: ``(name, factory, *, availability=None)``,
    #: ``factory`` building a :class:`~irqbypass.Producer`; ``availability``
    #: says whether it can work on this machine (None: always)
    producer: _SideRegistrar[Producer]
    #: register consumer kind ``name``, as :attr:`producer` does a producer's
    consumer: _SideRegistrar[Consumer]

    def __init__(self, plugin: str, registry: KindRegistry) -> None:
        self.producer = _SideRegistrar("producer", plugin, registry)
        self.consumer = _SideRegistrar("consumer", plugin, registry)


class KindRegistry:
    """All kinds, by side and name; a name claimed twice is kept as a conflict."""

    def __init__(self) -> None:
        self._kinds: dict[Side, dict[str, list[Kind[Any]]]] = {s: {} for s in SIDES}
        #: what the plugin host left out (filtered plugins, unmatched load-list
        #: entries), told with an unknown kind instead of "is it installed?"
        self.left_out: list[str] = []
        #: plugins that failed (to load, or in ``irqbypass_register_kinds``), as
        #: "plugin 'x' (distribution)": an unknown kind may be one of theirs. Why
        #: each failed is told once, where it failed (a warning, ``irqbypass
        #: plugins -v``), not again in every unknown kind's error
        self.failed: list[str] = []

    def add(self, kind: Kind[Any]) -> None:
        """Add ``kind``; a name claimed twice is kept, as a conflict refused at use."""
        if not kind.name or not isinstance(kind.name, str):
            raise ValueError(f"plugin {kind.plugin}: kind name must be a non-empty string")
        if not callable(kind.factory):
            raise TypeError(f"plugin {kind.plugin}: factory of kind {kind.name!r} is not callable")
        self._kinds[kind.side].setdefault(kind.name, []).append(kind)

    def remove_plugin(self, plugin: str) -> None:
        """Forget every kind of ``plugin`` (its registration raised)."""
        for by_name in self._kinds.values():
            for name in list(by_name):
                by_name[name] = [k for k in by_name[name] if k.plugin != plugin]
                if not by_name[name]:
                    del by_name[name]

    def names(self, side: Side) -> list[str]:
        """The kind names of ``side``, sorted."""
        return sorted(self._kinds[side])

    def of_plugin(self, plugin: str) -> dict[Side, list[str]]:
        """The kind names ``plugin`` registered, by side."""
        return {
            side: sorted(n for n, ks in by_name.items() if any(k.plugin == plugin for k in ks))
            for side, by_name in self._kinds.items()
        }

    def conflicts(self) -> list[tuple[Side, str, list[str]]]:
        """Every (side, name, plugins) claimed by more than one plugin."""
        return [
            (side, name, [k.plugin for k in kinds])
            for side, by_name in self._kinds.items()
            for name, kinds in sorted(by_name.items())
            if len(kinds) > 1
        ]

    @overload
    def get(self, side: Literal["producer"], name: str) -> Kind[Producer]: ...
    @overload
    def get(self, side: Literal["consumer"], name: str) -> Kind[Consumer]: ...
    @overload
    def get(self, side: Side, name: str) -> Kind[Producer] | Kind[Consumer]: ...

    def get(self, side: Side, name: str) -> Kind[Any]:
        """The kind ``name`` of ``side``; UnknownKindError (with the closest
        name) or KindConflictError (two plugins claim it)."""
        kinds = self._kinds[side].get(name)
        if not kinds:
            raise UnknownKindError(
                _unknown_kind_message(side, name, self.names(side), self.left_out, self.failed)
            )
        if len(kinds) > 1:
            raise KindConflictError(
                f"{side} kind {name!r} is registered by plugins "
                f"{' and '.join(repr(k.plugin) for k in kinds)}; block one of them "
                "(config [plugins] block, or --block on the command line)"
            )
        return kinds[0]


def _unknown_kind_message(
    side: Side,
    name: str,
    known: list[str],
    left_out: Sequence[str] = (),
    failed: Sequence[str] = (),
) -> str:
    message = f"no plugin provides {side} kind {name!r}"
    install = to_install(side, name)
    family = FAMILY.get((side, name))
    if family is not None:  # the family's own: only what concerns its distribution
        left_out = [entry for entry in left_out if f"({family}" in entry] or left_out
        failed = [entry for entry in failed if f"({family}" in entry] or failed
    close = difflib.get_close_matches(name, known, n=1)
    if install is not None:
        message += (
            f": it comes with distribution {install}, which is not installed; "
            f"install it (pip install {install})"
        )
    elif close:
        message += f"; did you mean {close[0]!r}?"
    if known:
        message += f" (known {side} kinds: {', '.join(known)})"
    elif not left_out and not failed and install is None:
        message += (
            f" (no {side} kinds are loaded: is the plugin installed? see `irqbypass plugins`)"
        )
    if left_out:
        message += (
            f"; not loaded here, so one of them may provide it: {'; '.join(left_out)} "
            "(see `irqbypass plugins`)"
        )
    if failed:
        one = len(failed) == 1
        message += (
            f"; {', '.join(failed)} failed, so {'it' if one else 'one of them'} may provide it "
            f"(why: the warning {'it' if one else 'each'} gave, or `irqbypass plugins -v`; "
            "fix or block it)"
        )
    return message


def to_install(side: Side, name: str) -> str | None:
    """The family's distribution that provides ``name``, when it is not installed."""
    distribution = FAMILY.get((side, name))
    if distribution is None:
        return None
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return distribution
    return None  # installed: what left it out (filtered, failed) is told instead
