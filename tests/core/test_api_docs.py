"""docs/api.md documents every name the API's tiers export, so the two cannot drift.

A name added to ``irqbypass.__all__`` (or to another public module's,
``irqbypass.exceptions``, ``irqbypass.plugin``, ``irqbypass.reports``,
``irqbypass.signalsafe``, ``irqbypass.system``, ``irqbypass.testing``) needs its
own autodoc directive in docs/api.md (``.. autoclass:: irqbypass.NAME`` or
``irqbypass.TIER.NAME``, ``autofunction``, ``autodata`` or ``autoexception``); the
docs build (``make docs``, ``-W``) fails on one naming something that is not there.
"""

from __future__ import annotations

import re
from pathlib import Path

import irqbypass
import irqbypass.exceptions
import irqbypass.plugin
import irqbypass.reports
import irqbypass.signalsafe
import irqbypass.system
import irqbypass.testing

API = Path(__file__).resolve().parents[2] / "docs" / "api.md"
DIRECTIVE = re.compile(
    r"^\.\. auto(?:class|function|data|exception)::"
    r" (irqbypass(?:\.(?:exceptions|plugin|reports|signalsafe|system|testing))?\.\w+)",
    re.M,
)
TIERS = [
    irqbypass,
    irqbypass.exceptions,
    irqbypass.plugin,
    irqbypass.reports,
    irqbypass.signalsafe,
    irqbypass.system,
    irqbypass.testing,
]
#: every public name, as documented: irqbypass.NAME or irqbypass.TIER.NAME
EXPORTED = {f"{tier.__name__}.{name}" for tier in TIERS for name in tier.__all__}


def documented() -> set[str]:
    return set(DIRECTIVE.findall(API.read_text()))


def test_every_export_is_documented() -> None:
    missing = sorted(EXPORTED - documented())
    assert not missing, (
        f"the API exports {', '.join(missing)}, which docs/api.md does not document: "
        "add a '.. autoclass:: irqbypass.NAME' (or autofunction, autodata, autoexception) "
        "under the fitting heading of docs/api.md"
    )


def test_only_exports_are_documented() -> None:
    """The page documents the public API only: a submodule's name is private."""
    extra = sorted(documented() - EXPORTED)
    assert not extra, f"docs/api.md documents {', '.join(extra)}, not in a tier's __all__"


def test_each_name_is_documented_once() -> None:
    names = DIRECTIVE.findall(API.read_text())
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"docs/api.md documents {', '.join(twice)} more than once"


def _public_members() -> list[tuple[str, object]]:
    """Every exported class and function, and every public method and property
    a class of irqbypass defines (what ``help()`` and the API page show)."""
    found: list[tuple[str, object]] = []
    for tier in TIERS:
        found += _members_of(tier)
    return found


def _members_of(tier: object) -> list[tuple[str, object]]:
    import inspect
    import types

    found: list[tuple[str, object]] = []
    for name in tier.__all__:  # type: ignore[attr-defined]
        obj = getattr(tier, name)
        # Python 3.10 takes an alias such as Callable[[EndpointSpec], Endpoint] for a class
        is_class = inspect.isclass(obj) and not isinstance(obj, types.GenericAlias)
        if is_class or inspect.isfunction(obj):
            found.append((name, obj))
        if not is_class:
            continue
        for klass in obj.__mro__:
            if not klass.__module__.startswith("irqbypass"):
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, staticmethod | classmethod):
                    value = value.__func__
                if isinstance(value, property):
                    value = value.fget
                if inspect.isfunction(value):
                    found.append((f"{name}.{attr}", value))
    return found


def test_every_public_name_has_a_docstring() -> None:
    """Issue 29 item 19: 43 public methods and properties had none."""
    missing = sorted({n for n, obj in _public_members() if not (obj.__doc__ or "").strip()})
    assert not missing, f"no docstring: {', '.join(missing)}"


def test_no_public_docstring_cites_a_private_name() -> None:
    """``irqbypass.config.EntryGroups`` in reconcile's: a reader cannot look it up."""
    tiers = {tier.__name__.rpartition(".")[2] for tier in TIERS[1:]}
    cited = [
        (name, ref.group(0))
        for name, obj in _public_members()
        for ref in re.finditer(r"irqbypass\.(\w+)(?:\.(\w+))?", obj.__doc__ or "")
        if not (
            ref.group(1) in irqbypass.__all__
            or (ref.group(1) in tiers and f"irqbypass.{ref.group(1)}.{ref.group(2)}" in EXPORTED)
        )
    ]
    assert not cited, cited


def test_the_api_page_lists_no_internal_field() -> None:
    """Placed.serial and Placed.released are bookkeeping: not on the page."""
    from sphinx.pycode import ModuleAnalyzer

    block = (
        API.read_text()
        .split(".. autoclass:: irqbypass.reports.Placed", 1)[1]
        .split(".. auto", 1)[0]
    )
    documented = ModuleAnalyzer.for_module(irqbypass.reports.Placed.__module__).find_attr_docs()
    shown = {attr for (cls, attr) in documented if cls == "Placed"}
    if ":undoc-members:" in block:
        shown |= set(irqbypass.reports.Placed.__dataclass_fields__)
    assert {"config", "endpoint", "opened", "registered"} <= shown
    assert not shown & {"serial", "released"}
