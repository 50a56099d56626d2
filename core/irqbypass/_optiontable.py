"""A kind whose options are its constructor's keywords, declared once as a
table of :class:`Option` and read by one function (:func:`build_from_options`),
instead of a ``from_spec`` per kind that reads them one by one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

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


def build_from_options(
    cls: Callable[..., _E], spec: EndpointSpec, options: Mapping[str, Option]
) -> _E:
    """``cls(token=spec.token, name=spec.name, **read)`` (a producer gets
    ``irq=spec.irq or 0`` too), each key of ``options`` read as its
    :class:`Option` says, in that order; then a key of the entry that
    ``options`` does not declare is refused, with the closest valid name
    (:meth:`~irqbypass.plugin.Options.finish`). A kind's ``from_spec`` in one line."""
    opts = spec.options_reader()
    keywords: dict[str, Any] = {"token": spec.token, "name": spec.name}
    if spec.side == "producer":
        keywords["irq"] = spec.irq or 0
    for key, option in options.items():
        keywords[key] = opts._value(
            key, option.kind, option.default, False, option.min, option.max, option.choices
        )
    endpoint = cls(**keywords)
    opts.finish()
    return endpoint
