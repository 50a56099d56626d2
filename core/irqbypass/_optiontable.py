"""A kind whose options are its constructor's keywords, declared once as a
table of :class:`Option` and read by its factory (:class:`KeywordFactory`),
instead of a ``from_spec`` per kind that reads them one by one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from ._endpoints import Endpoint
    from ._kinds import EndpointSpec

_E = TypeVar("_E", bound="Endpoint")


@dataclass(frozen=True)
class Option:
    """One key of a topology entry's ``options`` table, read as the
    :class:`~irqbypass.plugin.Options` getter of its ``kind`` reads it ("int",
    "float", "bool" or "str"): ``default`` when the key is missing, ``min`` and
    ``max`` for a number, ``choices`` for a string."""

    kind: Literal["int", "float", "bool", "str"]
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: Sequence[str] | None = None


@dataclass(frozen=True)
class KeywordFactory(Generic[_E]):
    """A kind's factory (``register.producer(name, KeywordFactory(cls, options))``)
    for an endpoint whose options are its constructor's keywords: the table
    it is given is what it reads, no ``from_spec`` of the kind's own."""

    endpoint: Callable[..., _E]
    options: Mapping[str, Option]

    def __call__(self, spec: EndpointSpec) -> _E:
        """``endpoint(token=spec.token, name=spec.name, **read)`` (a producer
        gets ``irq=spec.irq or 0`` too), each key of ``options`` read as its
        :class:`Option` says, in that order; then a key of the entry that
        ``options`` does not declare is refused, with the closest valid name
        (:meth:`~irqbypass.plugin.Options.finish`)."""
        opts = spec.options_reader()
        keywords: dict[str, Any] = {"token": spec.token, "name": spec.name}
        if spec.side == "producer":
            keywords["irq"] = spec.irq or 0
        for key, option in self.options.items():
            keywords[key] = opts._value(
                key, option.kind, option.default, False, option.min, option.max, option.choices
            )
        endpoint = self.endpoint(**keywords)
        opts.finish()
        return endpoint
