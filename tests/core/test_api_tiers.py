"""The public API in tiers (issue 28, item 5): ``irqbypass`` for embedders (with
``irqbypass.exceptions``, the finer errors, and ``irqbypass.reports``, what a
topology reports), ``irqbypass.plugin`` for plugin authors,
``irqbypass.signalsafe`` for code a signal must not cut, ``irqbypass.system`` for
the system helpers, ``irqbypass.testing`` for fakes and fixtures. A name ``irqbypass``
exported before the tiers still works for one release, with a
DeprecationWarning that names its tier."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import irqbypass
import pytest

#: the public modules beside irqbypass itself
PUBLIC = ("exceptions", "plugin", "reports", "signalsafe", "system", "testing")
TIERS = {tier: importlib.import_module(f"irqbypass.{tier}") for tier in PUBLIC}
#: each name that moved, and the tier that exports it now
MOVED = sorted(
    (name, tier)
    for tier, module in TIERS.items()
    for name in module.__all__
    if name in irqbypass._MOVED
)


def test_every_moved_name_has_a_tier() -> None:
    assert {name for name, _ in MOVED} == irqbypass._MOVED


def test_the_deprecation_looks_in_every_public_module() -> None:
    """A moved name's warning names the module that exports it now: the package
    looks in each of these, and in nothing private."""
    assert sorted(irqbypass._TIERS) == sorted(PUBLIC)


@pytest.mark.parametrize(("name", "tier"), MOVED)
def test_a_moved_name_warns_and_is_its_tiers_object(name: str, tier: str) -> None:
    module = importlib.import_module(f"irqbypass.{tier}")
    assert name in module.__all__
    with pytest.warns(
        DeprecationWarning, match=rf"irqbypass\.{name} is deprecated: .*irqbypass\.{tier}"
    ):
        value = getattr(irqbypass, name)
    assert value is getattr(module, name)


@pytest.mark.parametrize(("name", "tier"), MOVED)
def test_a_moved_name_is_no_embedders_name(name: str, tier: str) -> None:
    assert name not in irqbypass.__all__
    assert name not in vars(irqbypass), "kept: the next use would not be told"


ROOT = Path(__file__).resolve().parents[2]
#: the code of the repository: the core, the plugins, their tests, benchmarks,
#: scripts and the docs' examples
CODE = ("core", "plugins", "tests", "benchmarks", "scripts", "docs/examples")


def _moved_uses(text: str) -> set[str]:
    """The moved names ``text`` reaches through ``irqbypass``: ``irqbypass.NAME``
    or ``from irqbypass import NAME`` (one line or parenthesized)."""
    names = set(irqbypass._MOVED)
    found = {m for m in re.findall(r"(?<![\w.])irqbypass\.(\w+)", text) if m in names}
    for group in re.findall(r"^\s*from irqbypass import (\([^)]*\)|.*)$", text, re.M):
        found |= set(re.findall(r"\w+", group)) & names
    return found


def test_the_scan_finds_each_form_of_use() -> None:
    assert _moved_uses("x = irqbypass.hookimpl\n") == {"hookimpl"}
    assert _moved_uses("from irqbypass import (\n    Manager,\n    hold,\n)\n") == {"hold"}
    assert _moved_uses("from irqbypass import Manager, FakeDevice\n") == {"FakeDevice"}
    assert not _moved_uses("irqbypass.plugin.hookimpl, irqbypass_x.hold, irqbypass.Manager")


def test_no_code_here_uses_a_moved_name() -> None:
    """Every use in the repository imports from the name's module now: nothing
    here depends on the deprecated path (this file excepted: it tests it)."""
    used = {
        str(path.relative_to(ROOT)): sorted(found)
        for top in CODE
        for pattern in ("*.py", "*.py.tmpl")  # (the new-plugin template's too)
        for path in sorted((ROOT / top).rglob(pattern))
        if path != Path(__file__).resolve()
        and (found := _moved_uses(path.read_text(encoding="utf-8")))
    }
    assert not used, used


def test_a_from_import_of_a_moved_name_warns_where_it_is_written() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from irqbypass import hookimpl  # noqa: F401
    # (the import system looks the name up twice: both point at the line above,
    # which the default filter shows once)
    assert caught and {w.category for w in caught} == {DeprecationWarning}
    assert {w.filename for w in caught} == {__file__}


def test_every_embedders_name_imports_without_a_warning() -> None:
    code = (
        "import warnings\nwarnings.simplefilter('error')\nimport irqbypass\n"
        "for name in irqbypass.__all__:\n    getattr(irqbypass, name)\n"
        "import importlib\n"
        f"for tier in {PUBLIC!r}:\n"
        "    module = importlib.import_module(f'irqbypass.{tier}')\n"
        "    for name in module.__all__:\n        getattr(module, name)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_no_name_is_in_two_tiers() -> None:
    tiers = [irqbypass, *TIERS.values()]
    names = [name for tier in tiers for name in tier.__all__]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    # and every name the package exported before the tiers is still somewhere
    assert set(irqbypass._MOVED) <= set(names)


@pytest.mark.parametrize("name", sorted(irqbypass._RENAMED))
def test_an_old_module_path_warns_and_is_the_private_module(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``import irqbypass.topology`` (a module made private) still works for one
    release, with a DeprecationWarning, and is ``irqbypass._topology`` itself,
    its own spec kept: a test's monkeypatch through the old name reaches it."""
    private = importlib.import_module(f"irqbypass._{name}")
    monkeypatch.delitem(sys.modules, f"irqbypass.{name}", raising=False)
    monkeypatch.delitem(vars(irqbypass), name, raising=False)
    with pytest.warns(DeprecationWarning, match=rf"module irqbypass\.{name} is deprecated"):
        old = importlib.import_module(f"irqbypass.{name}")
    assert old is private and private.__spec__.name == f"irqbypass._{name}"
    monkeypatch.delitem(vars(irqbypass), name, raising=False)
    with pytest.warns(DeprecationWarning, match=rf"irqbypass\._{name}"):
        assert getattr(irqbypass, name) is private


def test_an_unknown_module_is_still_not_found() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("irqbypass.no_such_module")
