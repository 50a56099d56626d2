"""docs/api.md documents every name irqbypass exports, so the two cannot drift.

A name added to ``irqbypass.__all__`` needs its own autodoc directive in
docs/api.md (``.. autoclass:: irqbypass.NAME``, ``autofunction``, ``autodata``
or ``autoexception``); the docs build (``make docs``, ``-W``) fails on one
naming something that is not there.
"""

from __future__ import annotations

import re
from pathlib import Path

import irqbypass

API = Path(__file__).resolve().parents[2] / "docs" / "api.md"
DIRECTIVE = re.compile(r"^\.\. auto(?:class|function|data|exception):: irqbypass\.(\w+)", re.M)


def documented() -> set[str]:
    return set(DIRECTIVE.findall(API.read_text()))


def test_every_export_is_documented() -> None:
    missing = sorted(set(irqbypass.__all__) - documented())
    assert not missing, (
        f"irqbypass.__all__ exports {', '.join(missing)}, which docs/api.md does not document: "
        "add a '.. autoclass:: irqbypass.NAME' (or autofunction, autodata, autoexception) "
        "under the fitting heading of docs/api.md"
    )


def test_only_exports_are_documented() -> None:
    """The page documents the public API only: a submodule's name is private."""
    extra = sorted(documented() - set(irqbypass.__all__))
    assert not extra, f"docs/api.md documents {', '.join(extra)}, not in irqbypass.__all__"


def test_each_name_is_documented_once() -> None:
    names = DIRECTIVE.findall(API.read_text())
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"docs/api.md documents {', '.join(twice)} more than once"
