"""What ``import irqbypass`` and the command line import (issue 31, item 2).

``irqbypass/__init__.py`` imports each public name's module on first use
(PEP 562), and the CLI imports a command's module only when it runs, so
``irqbypass --version`` and ``--help`` start without the plugins, asyncio,
importlib.metadata or the TOML reader. Each check runs a fresh interpreter
(a module imported once stays imported) and reads its ``sys.modules``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib import metadata

import irqbypass
import irqbypass.exceptions
import irqbypass.plugin
import irqbypass.reports
import irqbypass.signalsafe
import irqbypass.system
import pytest
from irqbypass import cli

#: what a command that runs no topology has no use for
HEAVY = ("asyncio", "importlib.metadata", "pluggy", "tomllib", "difflib", "hashlib")


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(proc.stdout.splitlines()[-1]))


def cli_modules(*argv: str) -> set[str]:
    code = (
        "import contextlib, io\n"
        "from irqbypass.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    main({list(argv)!r})"
    )
    return modules_after(code)


def test_importing_the_package_imports_none_of_its_modules() -> None:
    loaded = modules_after("import irqbypass")
    assert not {m for m in loaded if m.startswith("irqbypass.")}, loaded
    assert not set(HEAVY) & loaded


def test_a_name_imports_its_module_and_only_what_that_needs() -> None:
    loaded = modules_after("import irqbypass\nirqbypass.Eventfd")
    assert "irqbypass._eventfd" in loaded
    assert "irqbypass._topology" not in loaded and "pluggy" not in loaded


#: the public modules (the API's tiers) and each one's names, as (tier, name)
TIERS = {
    "irqbypass": irqbypass,
    "exceptions": irqbypass.exceptions,
    "plugin": irqbypass.plugin,
    "reports": irqbypass.reports,
    "signalsafe": irqbypass.signalsafe,
    "system": irqbypass.system,
}
PUBLIC = [(tier, name) for tier, module in TIERS.items() for name in module.__all__]


def where(module: object) -> dict[str, str]:
    """A tier's names, each with the implementation module it comes from."""
    modules: dict[str, tuple[str, ...]] = module._MODULES  # type: ignore[attr-defined]
    return {name: home for home, names in modules.items() for name in names}


@pytest.mark.parametrize(("tier", "name"), PUBLIC)
def test_every_public_name_is_its_modules_object(tier: str, name: str) -> None:
    value = getattr(TIERS[tier], name)
    module = importlib.import_module(f"irqbypass.{where(TIERS[tier])[name]}")
    assert value is getattr(module, name)


@pytest.mark.parametrize("tier", TIERS)
def test_every_public_name_has_a_module_and_nothing_else_does(tier: str) -> None:
    module = TIERS[tier]
    assert set(where(module)) == set(module.__all__)
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute 'Eventfdd'"):
        module.Eventfdd  # noqa: B018


def test_a_from_import_goes_through_getattr_too() -> None:
    assert set(irqbypass._WHERE) == set(irqbypass.__all__)
    from irqbypass import Topology  # from-imports go through __getattr__ too

    assert Topology is irqbypass._topology.Topology


@pytest.mark.parametrize(
    "tier", ["exceptions", "plugin", "reports", "signalsafe", "system", "testing"]
)
def test_importing_a_tier_imports_none_of_the_implementation(tier: str) -> None:
    """A plugin imports irqbypass.plugin at its top: that must cost no module of the
    core (testing holds the device models' base: it imports the Eventfd, nothing more;
    exceptions and signalsafe bind their names at import, from their one module)."""
    loaded = {m for m in modules_after(f"import irqbypass.{tier}") if m.startswith("irqbypass.")}
    eager = {
        "testing": {"irqbypass._eventfd", "irqbypass._errors", "irqbypass._options"},
        "exceptions": {"irqbypass._errors"},
        "signalsafe": {"irqbypass._signals"},
    }
    assert loaded <= ({f"irqbypass.{tier}"} | eager.get(tier, set()))
    if tier != "testing":  # (the Eventfd's options import difflib)
        assert not set(HEAVY) & modules_after(f"import irqbypass.{tier}")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["check", "--help"]])
def test_version_and_help_import_no_plugin_and_no_command(argv: list[str]) -> None:
    loaded = cli_modules(*argv)
    assert not set(HEAVY) & loaded, sorted(set(HEAVY) & loaded)
    assert not {m for m in loaded if m.startswith("irqbypass_")}, "a plugin was imported"
    commands = {"irqbypass.cli.check", "irqbypass.cli.run", "irqbypass.cli.live"}
    assert not commands & loaded


def test_a_command_imports_its_module_when_it_runs(tmp_path: object) -> None:
    loaded = cli_modules("status", "/nonexistent/socket")
    assert "irqbypass.cli.live" in loaded
    assert "irqbypass.cli.run" not in loaded and "irqbypass.cli.check" not in loaded


def test_the_version_is_the_installed_distributions() -> None:
    assert irqbypass.__version__ == metadata.version("irqbypass")


def test_the_duration_limit_is_the_configurations() -> None:
    from irqbypass import _config as config

    assert cli.MAX_DURATION == config.MAX_DURATION


def test_a_submodule_is_an_attribute_after_a_bare_import() -> None:
    """``import irqbypass; irqbypass.plugins.ENV_LOAD`` worked while the package
    imported every module eagerly (tests/reliability/test_hostile_config.py
    relied on it, and failed alone once the imports were lazy): a submodule
    is imported when first reached as an attribute; an unknown name is still
    an AttributeError."""
    code = (
        "import irqbypass, sys\n"
        "assert 'irqbypass.plugins' not in sys.modules\n"
        "print(irqbypass.plugins.ENV_LOAD)\n"
        "try:\n"
        "    irqbypass.no_such_module\n"
        "except AttributeError as error:\n"
        "    print(error)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.splitlines() == [
        irqbypass._plugins.ENV_LOAD,
        "module 'irqbypass' has no attribute 'no_such_module'",
    ]
