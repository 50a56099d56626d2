"""What an install ships for its users (issue 30 items 3, 5, 6; issue 29 item 15):
the examples, the demo's needs, the plugin template's naming rule, the long
version, and no checkout path in what the CLI prints."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import irqbypass
import pytest
from irqbypass._config import parse_config
from irqbypass.cli import DOCS_URL, bundled, main, template

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_the_bundled_examples_are_the_checkouts() -> None:
    shipped = bundled.bundled()
    assert sorted(shipped) == sorted(p.name for p in (ROOT / "examples").iterdir())
    for name, example in shipped.items():
        assert example.read_bytes() == (ROOT / "examples" / name).read_bytes()


#: a relative path into a checkout (docs/plugins/x.md), not part of a URL
CHECKOUT_PATH = r"(?<![\w/.:-])(?:docs|examples|tests|plugins|core|scripts)/\S*"


def test_no_shipped_example_names_a_path_of_the_checkout() -> None:
    """An installed copy (irqbypass examples --write) has no docs/ or examples/
    beside it: an example points at the documentation's URL instead."""
    for name, example in bundled.bundled().items():
        text = example.read_text()
        checkout = re.findall(CHECKOUT_PATH, text)
        assert not checkout, f"{name} names {checkout}"
        for url in re.findall(rf"{re.escape(DOCS_URL)}\S*?(?=[)\s])", text):
            page = url.removeprefix(DOCS_URL).removeprefix("en/latest/")
            assert (ROOT / "docs" / page).with_suffix(".md").is_file(), f"{name}: {url}"


def test_the_examples_listing_fits_an_80_column_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each example is listed on one line: its name and the first clause of
    its leading comment (vhost-user.toml's ran to 113 characters, broken
    mid-word on 80 columns)."""
    assert main(["examples"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(bundled.bundled()) + 1
    assert all(len(ln) <= 79 for ln in lines), [ln for ln in lines if len(ln) > 79]


def test_examples_write_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["examples", "--write", str(tmp_path)]) == 0
    assert (tmp_path / "demo.toml").read_bytes() == bundled.demo_text()
    (tmp_path / "demo.toml").write_text("mine")
    assert main(["examples", "--write", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "demo.toml, irqbypass.service, passthrough.toml, vhost-user.toml already there" in err
    assert (tmp_path / "demo.toml").read_text() == "mine"


def test_the_demo_names_the_plugins_it_needs_when_they_are_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = parse_config(bundled.demo_text(), file=bundled.DEMO)
    assert bundled.demo_missing(config) == [], "installed here"
    monkeypatch.setattr(bundled, "to_install", lambda side, kind: f"irqbypass-{kind}")
    # only the entries that are not optional: mock producers, logging consumers
    assert bundled.demo_missing(config) == ["irqbypass-logging", "irqbypass-mock"]
    with pytest.raises(irqbypass.IrqBypassError) as info:
        bundled.check_demo(config)
    assert str(info.value) == (
        "the demo needs the plugins irqbypass-logging and irqbypass-mock, which are not "
        "installed: pip install irqbypass-logging irqbypass-mock"
    )


def test_no_checkout_path_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert DOCS_URL in out.replace("\n", "") and "docs/" not in out


def test_the_docs_url_is_the_core_metadatas() -> None:
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Documentation"] == DOCS_URL


@pytest.mark.parametrize(
    ("name", "dist", "module"),
    [
        ("ticker", "irqbypass-ticker", "irqbypass_ticker"),
        ("my-nic2", "irqbypass-my-nic2", "irqbypass_my_nic2"),
    ],
)
def test_the_naming_rule(name: str, dist: str, module: str) -> None:
    values = template.names(name)
    assert (values["dist"], values["module"]) == (dist, module)
    assert values["core_next"] == "0.2" and values["core_minor"] == "0.1"


@pytest.mark.parametrize("bad", ["Ticker", "my_nic", "-x", "x-", "2x", "", "irqbypass-x", "a--b"])
def test_a_name_against_the_rule_is_refused_saying_the_rule(bad: str) -> None:
    with pytest.raises(
        irqbypass.IrqBypassError, match="irqbypass-NAME and the module irqbypass_NAME"
    ):
        template.names(bad)


def test_the_project_plugins_follow_the_naming_rule() -> None:
    for pyproject in sorted(ROOT.glob("plugins/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        ((name, module),) = project["entry-points"]["irqbypass"].items()
        values = template.names(name)
        assert (project["name"], module) == (values["dist"], values["module"]), pyproject


def test_new_plugin_writes_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-plugin", "tick", "--directory", str(tmp_path)]) == 0
    root = tmp_path / "irqbypass-tick"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "LICENSE",
        "README.md",
        "irqbypass_tick/__init__.py",
        "irqbypass_tick/py.typed",
        "pyproject.toml",
        "tests/test_tick.py",
    ]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == ["irqbypass>=0.1,<0.2"]
    assert project["entry-points"]["irqbypass"] == {"tick": "irqbypass_tick"}
    assert "$" not in (root / "irqbypass_tick" / "__init__.py").read_text()
    assert main(["new-plugin", "tick", "--directory", str(tmp_path)]) == 1
    assert "already exists; nothing was written" in capsys.readouterr().err


def test_new_plugin_that_fails_halfway_leaves_no_half_written_folder(tmp_path: Path) -> None:
    """A write that fails after the first files (here the kernel's file-size
    limit, EFBIG, as a full disk or a quota would) removes what was written:
    the next try starts clean (before: a half-written plugin stayed, and the
    next new-plugin refused it as "already exists")."""
    import resource

    def limited() -> None:  # files of at most 2 KiB: the module (3 KiB) fails, the 3rd
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))

    result = subprocess.run(
        [sys.executable, "-m", "irqbypass", "new-plugin", "tick", "--directory", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limited,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "File too large" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "irqbypass-tick").exists(), "a half-written plugin was left"
    assert main(["new-plugin", "tick", "--directory", str(tmp_path)]) == 0  # starts clean


def test_the_long_version_lists_the_plugins_without_importing_them() -> None:
    code = (
        "import sys; from irqbypass.cli import main\n"
        "try: main(['--version', '--version'])\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('irqbypass_')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"irqbypass {irqbypass.__version__} at ")
    assert lines[-1] == "[]", "no plugin imported"
    assert any(
        re.match(r"  mock \(irqbypass-mock [^)]+\): irqbypass_mock; needs irqbypass", line)
        for line in lines
    )


def test_the_plugins_page_lists_every_plugin_with_its_install_line() -> None:
    page = (ROOT / "docs" / "plugins.md").read_text()
    for pyproject in sorted(ROOT.glob("plugins/*/pyproject.toml")):
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
        assert f"`pip install {name}`" in page, name


def _another_user() -> int:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory another user owns (chown): run as root")
    return pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def planted(tmp_path: Path) -> dict[str, Path]:
    """What another user can put in a shared sticky directory (as /tmp is)
    for ``--write DIR`` or ``--directory DIR``: a link to a directory of
    their choosing, or a directory of their own (in which they could swap
    what we write, a systemd unit, for a file of theirs)."""
    uid = _another_user()
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    elsewhere.mkdir()
    (shared / "link").symlink_to(elsewhere)
    os.lchown(shared / "link", uid, uid)
    (shared / "theirs").mkdir()
    os.chown(shared / "theirs", uid, uid)
    return {"link": shared / "link", "theirs": shared / "theirs" / "sub",
            "elsewhere": elsewhere}  # fmt: skip


@pytest.mark.parametrize("where", ["link", "theirs"])
@pytest.mark.parametrize("command", ["examples", "new-plugin"])
def test_nothing_is_written_through_a_path_another_user_controls(
    where: str, command: str, planted: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: both commands followed the link (the examples and the unit
    landed in the directory it named) and wrote into a directory under
    another user's. Now refused, naming why, and nothing is written."""
    target = planted[where]
    argv = (
        ["examples", "--write", str(target)]
        if command == "examples"
        else ["new-plugin", "tick", "--directory", str(target)]
    )
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert ("symbolic link" if where == "link" else "not by a trusted user") in err, err
    assert list(planted["elsewhere"].iterdir()) == []
    assert not os.path.lexists(planted["theirs"])
