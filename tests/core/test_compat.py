"""Plugins and core releases (issue 30 item 2): a plugin's requirement on the
core is checked when it loads, a hook of another release is said as such, and
the project's own plugins pin the core's compatible range."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass._requires import core_requirement, parse_version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("0.1", "0.1.1"),
        ("0.2.0.dev1", "0.2.0a1"),
        ("0.2.0a1", "0.2.0b2"),
        ("0.2.0b2", "0.2.0rc1"),
        ("0.2.0rc1", "0.2"),
        ("0.2", "0.2.post1"),
        ("0.9", "0.10"),
        ("1!0.1", "1!0.2"),
        ("0.99", "1!0.1"),
    ],
)
def test_versions_order_as_pep_440_says(older: str, newer: str) -> None:
    assert parse_version(older) < parse_version(newer)


def test_trailing_zeros_and_local_labels_do_not_change_a_version() -> None:
    assert parse_version("0.1.0") == parse_version("0.1") == parse_version("0.1.0+deb12")


@pytest.mark.parametrize(
    ("spec", "version", "fits"),
    [
        (">=0.1,<0.2", "0.1.0", True),
        (">=0.1,<0.2", "0.1.7", True),
        (">=0.1,<0.2", "0.2.0", False),
        (">=0.1,<0.2", "0.2.0rc1", False),  # <0.2 excludes 0.2's pre-releases
        (">=0.1,<0.2", "0.0.9", False),
        (">=99", "0.1.0", False),
        ("~=0.1.2", "0.1.9", True),
        ("~=0.1.2", "0.2.0", False),
        ("~=0.1.2", "0.1.1", False),
        ("==0.1.*", "0.1.4", True),
        ("==0.1.*", "0.10.0", False),
        ("!=0.1.3", "0.1.3", False),
        (">0.1", "0.1.post1", False),  # >V excludes V's post-releases
        (">0.1", "0.1.1", True),
        # only a pre-release of V is kept out of <V, only a post-release of V out of >V
        ("<0.1.0.post1", "0.1.0", True),
        ("<0.1.0.post2", "0.1.0.post1", True),
        ("<0.1.0.post1", "0.1.0.post1", False),
        (">0.1.dev0", "0.1.0.dev1", True),
        ("", "0.1.0", True),
    ],
)
def test_a_specifier_is_checked_as_pip_checks_it(spec: str, version: str, fits: bool) -> None:
    requirement = core_requirement([f"irqbypass{spec}"], "irqbypass")
    assert requirement is not None
    assert (requirement.problem(version) is None) is fits


def test_only_an_unconditional_requirement_on_the_core_is_taken() -> None:
    requires = [
        "pluggy>=1.5",
        "irqbypass>=5; extra == 'new'",
        "irqbypass[metrics] (>=0.1, <0.2)",
    ]
    requirement = core_requirement(requires, "irqbypass")
    assert requirement is not None
    assert requirement.specifier == ">=0.1, <0.2"
    assert requirement.problem("0.1.0") is None
    assert core_requirement(["irqbypass-mock>=0.1"], "irqbypass") is None


def test_an_unreadable_requirement_is_said_unreadable_not_guessed() -> None:
    requirement = core_requirement(["irqbypass>=banana"], "irqbypass")
    assert requirement is not None
    assert "cannot be read" in (requirement.problem("0.1.0") or "")


# -- at load time -------------------------------------------------------------


def _distribution(root: Path, name: str, requires: str, module: str) -> None:
    """An installed distribution on disk (a .dist-info folder), as pip leaves one."""
    info = root / f"{name.replace('-', '_')}-1.4.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.4\nRequires-Dist: {requires}\n"
    )
    plugin = name.removeprefix("irqbypass-")
    (info / "entry_points.txt").write_text(f"[irqbypass]\n{plugin} = {module}\n")
    (root / f"{module}.py").write_text(
        "import irqbypass.plugin\nLOADED = True\n"
        "@irqbypass.plugin.hookimpl\ndef irqbypass_register_kinds(register):\n    pass\n"
    )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("plugin_newer", "plugin_fits"):
            sys.modules.pop(name, None)


def _entry_points(root: Path) -> Any:
    return lambda: [
        ep for dist in metadata.distributions(path=[str(root)]) for ep in dist.entry_points
    ]


def test_a_plugin_needing_a_newer_core_is_refused_unimported_and_the_others_load(
    site: Path,
) -> None:
    _distribution(site, "irqbypass-newer", "irqbypass>=99", "plugin_newer")
    _distribution(site, "irqbypass-fits", "irqbypass>=0.1,<1", "plugin_fits")
    host = irqbypass.PluginHost()
    failures = host.load_entry_points(allow=None, environ={}, entry_points=_entry_points(site))
    assert [f.name for f in failures] == ["newer"]
    error = failures[0].error or ""
    assert failures[0].distribution == "irqbypass-newer" and failures[0].version == "1.4"
    assert error.startswith(
        f"it requires irqbypass>=99, and this is irqbypass {irqbypass.__version__}; "
        "install a release of irqbypass-newer made for irqbypass"
    ), error
    assert "pip install 'irqbypass>=99'" in error and "--block irqbypass-newer" in error
    assert "plugin_newer" not in sys.modules, "a refused plugin's code is never imported"
    assert host.pm.has_plugin("fits") and not host.pm.has_plugin("newer")


def test_strict_makes_a_refused_plugin_fatal_with_its_name_and_version(site: Path) -> None:
    _distribution(site, "irqbypass-newer", "irqbypass>=99", "plugin_newer")
    host = irqbypass.PluginHost()
    with pytest.raises(irqbypass.PluginError) as info:
        host.load_entry_points(strict=True, environ={}, entry_points=_entry_points(site))
    assert "plugin 'newer' (distribution irqbypass-newer 1.4)" in str(info.value)
    assert "it requires irqbypass>=99" in str(info.value)


class OldSignature:
    @irqbypass.plugin.hookimpl
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str, extra: Any) -> None:
        pass


def test_an_old_hook_signature_is_said_on_one_line_with_what_this_core_calls() -> None:
    host = irqbypass.PluginHost()
    with pytest.raises(irqbypass.PluginError) as info:
        host.register(OldSignature(), name="old")
    message = str(info.value)
    assert "\n" not in message and "\\n" not in message, message
    assert "Argument(s) {'extra'} are declared in the hookimpl" in message
    assert (
        f"irqbypass {irqbypass.__version__} calls irqbypass_add(endpoint, partner, side): "
        "the plugin was written for another irqbypass release"
    ) in message


# -- the project's own plugins --------------------------------------------------


@pytest.mark.parametrize("pyproject", sorted(ROOT.glob("plugins/*/pyproject.toml")), ids=str)
def test_each_plugin_requires_the_core_minor_it_was_released_with(pyproject: Path) -> None:
    """On a 0.x core a minor release may change the plugin API (plugin guide):
    each plugin admits this core and refuses the next minor."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirement = core_requirement(project["dependencies"], "irqbypass")
    assert requirement is not None, f"{pyproject}: no requirement on irqbypass"
    major, minor = (int(n) for n in irqbypass.__version__.split(".")[:2])
    assert requirement.problem(irqbypass.__version__) is None
    assert requirement.problem(f"{major}.{minor + 1}.0") is not None, requirement.text
    assert project["version"] == irqbypass.__version__, "the plugins are released with the core"
