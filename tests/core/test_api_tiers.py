"""The public API in tiers (issue 28, item 5): ``irqbypass`` for embedders,
``irqbypass.plugin`` for plugin authors, ``irqbypass.signalsafe`` for code a
signal must not cut, ``irqbypass.system`` for the system helpers,
``irqbypass.testing`` for fakes and fixtures. A name ``irqbypass``
exported before the tiers still works for one release, with a
DeprecationWarning that names its tier."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import irqbypass
import pytest

TIERS = {
    tier: importlib.import_module(f"irqbypass.{tier}")
    for tier in ("plugin", "signalsafe", "system", "testing")
}
#: each name that moved, and the tier that exports it now
MOVED = sorted(
    (name, tier)
    for tier, module in TIERS.items()
    for name in module.__all__
    if name in irqbypass._MOVED
)


def test_every_moved_name_has_a_tier() -> None:
    assert {name for name, _ in MOVED} == irqbypass._MOVED


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
        "for tier in ('plugin', 'signalsafe', 'system', 'testing'):\n"
        "    module = importlib.import_module(f'irqbypass.{tier}')\n"
        "    for name in module.__all__:\n        getattr(module, name)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_no_name_is_in_two_tiers() -> None:
    import irqbypass.plugin
    import irqbypass.signalsafe
    import irqbypass.system
    import irqbypass.testing

    tiers = [irqbypass, irqbypass.plugin, irqbypass.signalsafe, irqbypass.system, irqbypass.testing]
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
