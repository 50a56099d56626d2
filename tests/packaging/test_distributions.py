"""The 9 distributions as a user, a third party and a distribution get them
(issue 30's proofs). Marked ``packaging``: this module builds every sdist and
wheel (offline: ``python -m build --no-isolation`` with the .venv's setuptools),
checks them with ``twine check --strict``, installs the wheels non-editable into
fresh venvs with no source tree on the path (``--no-index``: the built wheels,
and pluggy/pytest from a wheelhouse in .cache/wheelhouse, filled from the
registry the first time only) and runs the CLI there; then a plugin made with
``irqbypass new-plugin`` builds, passes its own tests with the fixtures the core
ships, and passes ``twine check --strict``; one that requires a newer core is
refused when it loads. docs/testing.md says what this costs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from collections.abc import Mapping, Sequence
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path

import irqbypass
import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROJECTS = [ROOT, *sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))]
PLUGINS = sorted(f"irqbypass-{p.name.replace('_', '-')}" for p in PROJECTS[1:])
WHEELHOUSE = ROOT / ".cache" / "wheelhouse"
#: what the fresh venvs need besides our wheels, as the .venv has them
NEEDS = [f"{n}=={metadata.version(n)}" for n in ("pluggy", "pytest")]
#: what the core needs under 3.10 (its pyproject.toml)
TOMLI = "tomli>=1.1; python_version < '3.11'"
#: and for the core sdist's own tests (tests/conftest.py), under the host's Python only
SDIST_TESTS_NEED = f"hypothesis=={metadata.version('hypothesis')}"
VERSION = irqbypass.__version__
PIP: list[str | Path] = [sys.executable, "-m", "pip"]


def _run(
    args: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    ok: bool = True,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,  # a hang guard only
        check=False,
    )
    if ok:
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def _build(out: Path, *projects: Path) -> None:
    """Each project's sdist, then its wheel from that sdist (tests/packaging/build_all.py)."""
    _run([sys.executable, Path(__file__).with_name("build_all.py"), out, *projects], cwd=out)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    _build(out, *PROJECTS)
    print(f"built 9 sdists and wheels in {time.monotonic() - started:.1f} s")
    return out


#: the CPythons besides the host's that the wheels are installed and run under
#: (make pythons finds or fetches them: scripts/python-for, scripts/debian-python)
OTHER_PYTHONS = ["3.10", "3.14"]


def _python_for(version: str) -> Path | None:
    found = _run([ROOT / "scripts" / "python-for", version], ok=False)
    return Path(found.stdout.strip()) if found.returncode == 0 else None


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """pluggy and pytest (and what they need, which differs by Python version:
    tomli and exceptiongroup under 3.10) as wheels, fetched once per version;
    hypothesis for the host's."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    wanted = {here: (Path(sys.executable), [*NEEDS, SDIST_TESTS_NEED])}
    for version in OTHER_PYTHONS:
        if (python := _python_for(version)) is not None:
            wanted[version] = (python, NEEDS)
    for version, (python, needs) in wanted.items():
        done = WHEELHOUSE / f".{'_'.join(needs)}-py{version}"
        if done.exists():
            continue
        # pip run by that Python: the markers of what they need are its own
        download = ["--python", python, "download", "-q", "--only-binary=:all:"]
        got = _run([*PIP, *download, "--dest", WHEELHOUSE, *needs, TOMLI], ok=False)
        if got.returncode != 0:
            pytest.skip(f"{needs} could not be fetched once: {got.stderr[-300:]}")
        done.touch()
    return WHEELHOUSE


def _clean_env(venv_dir: Path, **extra: str) -> dict[str, str]:
    """No source tree, no IRQBYPASS_ setting, the venv's scripts first."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IRQBYPASS_", "PYTHON", "PYTEST_", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _offline(dist: Path, wheelhouse: Path) -> list[str | Path]:
    return ["-q", "--no-index", "--find-links", dist, "--find-links", wheelhouse]


def _venv(where: Path, dist: Path, wheelhouse: Path, *requirements: str) -> Path:
    venv.EnvBuilder(with_pip=False).create(where)
    _run(
        [
            *PIP,
            "--python",
            where / "bin" / "python",
            "install",
            *_offline(dist, wheelhouse),
            *list(requirements),
        ]
    )
    return where


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory, dist: Path, wheelhouse: Path) -> Path:
    """A venv with the core, its 8 plugins, pytest and hypothesis, all from the wheels."""
    where = tmp_path_factory.mktemp("all") / "venv"
    return _venv(where, dist, wheelhouse, "irqbypass", *PLUGINS, "pytest", "hypothesis")


@pytest.fixture(scope="module")
def core_alone(tmp_path_factory: pytest.TempPathFactory, dist: Path, wheelhouse: Path) -> Path:
    return _venv(tmp_path_factory.mktemp("core") / "venv", dist, wheelhouse, "irqbypass")


def _cli(venv_dir: Path, *args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(
        [venv_dir / "bin" / "irqbypass", *args], cwd=venv_dir, env=_clean_env(venv_dir), ok=ok
    )


# -- what was built ---------------------------------------------------------------


def test_every_distribution_passes_twine_check_strict(dist: Path) -> None:
    files = sorted(dist.iterdir())
    assert len(files) == 18, [f.name for f in files]
    _run([BIN / "twine", "check", "--strict", *files])


def test_the_plugin_guides_examples_pass_twine_check_strict(tmp_path: Path) -> None:
    """The ticker and counter of docs/plugin-guide.md, as a reader would publish them."""
    _build(tmp_path, ROOT / "docs" / "examples" / "ticker", ROOT / "docs" / "examples" / "counter")
    files = sorted(tmp_path.iterdir())
    assert len(files) == 4, [f.name for f in files]
    _run([BIN / "twine", "check", "--strict", *files])


def _wheel_metadata(wheel: Path) -> tuple[list[str], dict[str, list[str]]]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        headers = HeaderParser().parsestr(archive.read(info).decode())
    fields: dict[str, list[str]] = {}
    for key, value in headers.items():
        fields.setdefault(key, []).append(value)
    return names, fields


@pytest.mark.parametrize("name", ["irqbypass", *PLUGINS])
def test_each_wheel_carries_its_licence_types_and_metadata(dist: Path, name: str) -> None:
    wheel = next(dist.glob(f"{name.replace('-', '_')}-{VERSION}-py3-none-any.whl"))
    names, fields = _wheel_metadata(wheel)
    module = "irqbypass" if name == "irqbypass" else name.replace("-", "_")
    assert f"{module}/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    assert fields["License-Expression"] == ["MIT"]
    urls = dict(u.split(", ", 1) for u in fields["Project-URL"])
    assert {"Homepage", "Documentation", "Source", "Changelog", "Issues"} <= set(urls)
    classifiers = set(fields["Classifier"])
    assert {"Typing :: Typed", "Operating System :: POSIX :: Linux"} <= classifiers
    assert "Programming Language :: Python :: 3.10" in classifiers
    if name != "irqbypass":
        assert fields["Requires-Dist"] == ["irqbypass<0.2,>=0.1"]
    else:
        pins = [r for r in fields["Requires-Dist"] if "==" in r.split(";")[0]]
        assert not pins, "no development pin is published"
        assert fields["Provides-Extra"] == ["metrics"], "no dev extra"


def test_the_help_points_at_the_project_url_the_metadata_names(dist: Path) -> None:
    from irqbypass.cli import DOCS_URL

    _, fields = _wheel_metadata(next(dist.glob(f"irqbypass-{VERSION}-*.whl")))
    assert f"Documentation, {DOCS_URL}" in fields["Project-URL"]


def test_the_core_sdist_holds_what_a_distribution_tests_from(dist: Path) -> None:
    with tarfile.open(dist / f"irqbypass-{VERSION}.tar.gz") as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for needed in [
        "LICENSE",
        "tests/conftest.py",
        "tests/core/test_cli.py",
        "examples/demo.toml",
        "examples/irqbypass.service",
        "docs/changelog.md",
        "docs/_vendor/mermaid/mermaid.min.js",
        "changelog.d/30.packaging.md",
    ]:
        assert needed in names, needed
    assert not [n for n in names if "__pycache__" in n or n.startswith("docs/_build")]
    for plugin in PLUGINS:
        with tarfile.open(dist / f"{plugin.replace('-', '_')}-{VERSION}.tar.gz") as archive:
            assert any(n.endswith("/LICENSE") for n in archive.getnames()), plugin


# -- installed: every plugin ------------------------------------------------------


def test_the_installed_cli_runs_from_the_wheels(everything: Path) -> None:
    where = _run(
        [everything / "bin" / "python", "-c", "import irqbypass; print(irqbypass.__file__)"],
        cwd=everything,
        env=_clean_env(everything),
    )
    assert where.stdout.startswith(str(everything)), "the installed copy, not the checkout"
    assert _cli(everything, "--version").stdout == f"irqbypass {VERSION}\n"
    listed = _cli(everything, "--version", "--version").stdout
    for plugin in PLUGINS:
        assert f"({plugin} {VERSION}): " in listed, listed
    assert "refused" not in listed
    plugins = _cli(everything, "plugins")
    assert "failed" not in plugins.stderr, plugins.stderr
    for plugin in PLUGINS:
        assert f"({plugin} {VERSION})" in plugins.stdout


def test_every_shipped_example_checks_from_the_install(everything: Path) -> None:
    out = everything / "examples"
    written = _cli(everything, "examples", "--write", out).stdout.split()
    names = sorted(Path(p).name for p in written)
    assert names == ["demo.toml", "irqbypass.service", "passthrough.toml", "vhost-user.toml"]
    for example in sorted(out.glob("*.toml")):
        result = _cli(everything, "check", example)
        assert f"{example}: OK" in result.stdout, result.stdout


def test_the_demo_runs_from_the_install(everything: Path) -> None:
    result = _cli(everything, "demo", "--duration", "1")
    assert "demo.toml: applied" in result.stdout
    assert "examples/" not in result.stdout + result.stderr, "no checkout path"


def test_the_core_sdist_s_tests_pass_against_the_installed_wheels(
    dist: Path, everything: Path, tmp_path: Path
) -> None:
    """As a distribution tests what it built (Debian's pybuild): the core sdist's
    own tests, run from the unpacked sdist against the installed wheels, with no
    source tree on the path. Two fast files here; make test-sdist runs the sdist's
    whole host suite so (minutes)."""
    with tarfile.open(dist / f"irqbypass-{VERSION}.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    source = tmp_path / f"irqbypass-{VERSION}"
    python = everything / "bin" / "python"
    where = _run([python, "-c", "import irqbypass; print(irqbypass.__file__)"], cwd=source)
    assert where.stdout.startswith(str(everything)), "the installed copy, not the sdist's"
    files = ["tests/core/test_bundled.py", "tests/core/test_compat.py"]
    tests = _run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=source,
        env=_clean_env(everything),
    )
    assert re.search(r"\b\d+ passed\b", tests.stdout), tests.stdout
    assert " failed" not in tests.stdout and " error" not in tests.stdout, tests.stdout


# -- installed: the core alone ----------------------------------------------------


def test_the_core_alone_says_in_one_line_what_the_demo_needs(core_alone: Path) -> None:
    result = _cli(core_alone, "demo", ok=False)
    assert result.returncode == 1
    assert result.stderr == (
        "irqbypass: error: the demo needs the plugins irqbypass-logging and irqbypass-mock, "
        "which are not installed: pip install irqbypass-logging irqbypass-mock\n"
    )
    help_text = _cli(core_alone, "--help").stdout
    assert "https://" in help_text and "docs/" not in help_text
    assert "demo.toml" in _cli(core_alone, "examples").stdout


# -- a third party's plugin from the template -------------------------------------


def _plugin(name: str, directory: Path, everything: Path, edit: str = "") -> Path:
    """irqbypass new-plugin NAME, built (sdist and wheel); its source folder."""
    _cli(everything, "new-plugin", name, "--directory", directory)
    source = directory / f"irqbypass-{name}"
    if edit:
        pyproject = source / "pyproject.toml"
        pyproject.write_text(re.sub(r'"irqbypass>=[^"]*"', f'"{edit}"', pyproject.read_text()))
    (source / "dist").mkdir()
    _build(source / "dist", source)
    return source


def test_a_plugin_from_the_template_builds_passes_its_tests_and_twine(
    everything: Path, dist: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    source = _plugin("ticker2", tmp_path, everything)
    _run([BIN / "twine", "check", "--strict", *sorted((source / "dist").iterdir())])
    _run(
        [
            *PIP,
            "--python",
            everything / "bin" / "python",
            "install",
            *_offline(dist, wheelhouse),
            *list((source / "dist").glob("*.whl")),
        ]
    )
    tests = _run(
        [everything / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=source,
        env=_clean_env(everything),
    )
    assert re.search(r"\b4 passed\b", tests.stdout), tests.stdout
    assert "ticker2 (irqbypass-ticker2 0.1.0)" in _cli(everything, "plugins").stdout


def test_a_plugin_needing_a_newer_core_is_refused_when_it_loads(
    everything: Path, tmp_path: Path
) -> None:
    source = _plugin("future", tmp_path, everything, edit="irqbypass>=99")
    target = tmp_path / "site"  # installed beside the venv, so the venv stays as it was
    _run(
        [
            *PIP,
            "install",
            "-q",
            "--no-deps",
            "--target",
            target,
            *list((source / "dist").glob("*.whl")),
        ]
    )
    result = _run(
        [everything / "bin" / "irqbypass", "plugins"],
        cwd=tmp_path,
        env=_clean_env(everything, PYTHONPATH=str(target)),
    )
    assert (
        "irqbypass: warning: plugin 'future' (irqbypass-future 0.1.0) failed to load: "
        f"it requires irqbypass>=99, and this is irqbypass {VERSION}; install a release of "
        "irqbypass-future made for irqbypass"
    ) in result.stderr, result.stderr
    assert "mock (irqbypass-mock" in result.stdout, "the others are loaded"


# -- the docs -----------------------------------------------------------------------


TYPOGRAPHIC_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def test_the_changelog_page_is_in_the_built_docs_with_this_releases_entries() -> None:
    html = ROOT / "docs" / "_build" / "html"
    if not (html / ".complete").exists():
        pytest.skip("the docs are not built here: make docs (make test builds them first)")
    page = (html / "changelog.html").read_text()
    assert f"{VERSION} (unreleased)" in page or f"{VERSION} (" in page
    # the page's text as a reader sees it: Sphinx makes quotes typographic (U+2019)
    text = re.sub(r"<[^>]+>", "", page).translate(TYPOGRAPHIC_QUOTES)
    for fragment in sorted((ROOT / "changelog.d").glob("*.md")):
        if fragment.name == "README.md":
            continue
        first_words = " ".join(re.sub(r"[`*]", "", fragment.read_text()).split()[:4])
        assert first_words in text, fragment.name


# -- the oldest CPython requires-python claims, and the newest Debian ships (make pythons)


@pytest.fixture(scope="module")
def template_plugin(tmp_path_factory: pytest.TempPathFactory, everything: Path) -> Path:
    """A plugin from the template, built once for the other Pythons; its source."""
    return _plugin("ticker3", tmp_path_factory.mktemp("ticker3"), everything)


@pytest.mark.parametrize("version", OTHER_PYTHONS)
def test_the_wheels_and_a_template_plugin_work_under_other_pythons(
    dist: Path, wheelhouse: Path, template_plugin: Path, tmp_path: Path, version: str
) -> None:
    """The host has 3.11: pyenv's 3.10 and Debian's 3.14 run the installed CLI,
    the demo and a third party's plugin tests from the same wheels."""
    python = _python_for(version)
    if python is None:
        pytest.skip(f"no CPython {version} here: make pythons finds or fetches it")
    where = tmp_path / "venv"
    _run([python, "-m", "venv", "--without-pip", where])
    source = template_plugin
    wanted = ["irqbypass", *PLUGINS, "pytest", *(source / "dist").glob("*.whl")]
    _run(
        [
            *PIP,
            "--python",
            where / "bin" / "python",
            "install",
            *_offline(dist, wheelhouse),
            *wanted,
        ]
    )
    listed = _cli(where, "--version", "--version").stdout
    assert f"Python {version}." in listed and f"(irqbypass-mock {VERSION})" in listed, listed
    assert "demo.toml: applied" in _cli(where, "demo", "--duration", "1").stdout
    tests = _run(
        [where / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=source,
        env=_clean_env(where),
    )
    assert re.search(r"\b4 passed\b", tests.stdout), tests.stdout
