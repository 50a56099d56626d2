"""The command output shown in the docs is the real output, so it cannot drift.

A block of output in a page is preceded by a marker naming the command::

    <!-- output: irqbypass check examples/demo.toml -->
    ```text
    ...
    ```

This test runs every such command from the repository's root (``irqbypass`` is
``python -m irqbypass``; ``NAME=value`` before it sets the environment; ``2>&1``
at the end shows standard error too) and compares. Output that depends on
timing (``run``, ``demo``: how many reads, syncs, notifications) is compared with
every number masked (and, with ``2>&1``, as a set of lines: log lines of
threads interleave as they happen). To rewrite the blocks from a fresh run::

    IRQBYPASS_UPDATE_DOCS=1 .venv/bin/pytest tests/core/test_docs_output.py
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import irqbypass
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- output: (?P<command>.+?) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
PAGES = ["cli.md", "quickstart.md", "configuration.md"]
TIMED = ("run", "demo")
HOW = "rewrite with IRQBYPASS_UPDATE_DOCS=1 .venv/bin/pytest tests/core/test_docs_output.py:"


@dataclass(frozen=True)
class Block:
    page: str
    command: str
    body: str


def blocks() -> list[Block]:
    return [
        Block(page, m["command"], m["body"])
        for page in PAGES
        for m in MARKER.finditer((ROOT / "docs" / page).read_text())
    ]


def execute(command: str) -> str:
    words = shlex.split(command)
    merge = words[-1:] == ["2>&1"]
    words = words[:-1] if merge else words
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")}
    while "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[0] == "irqbypass", f"a docs command runs irqbypass: {command}"
    result = subprocess.run(
        [sys.executable, "-m", "irqbypass", *words[1:]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        text=True,
        timeout=300,  # a hang guard
        check=False,
    )
    return result.stdout


#: where the output names the running CPython's version
PYTHON_VERSION = re.compile(r'(\(Python |"python": ")([^)"]+)')


def as_in_the_docs(real: str, body: str) -> str:
    """``real`` with the running CPython's version (where the output names it)
    replaced by the one the docs show: the docs are written under one CPython,
    the suite also runs under others (make test-python)."""
    shown = {m[1]: m[2] for m in PYTHON_VERSION.finditer(body)}
    running = sys.version.split()[0]

    def documented(m: re.Match[str]) -> str:
        return m[1] + (shown.get(m[1], m[2]) if m[2] == running else m[2])

    return PYTHON_VERSION.sub(documented, real)


def masked(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\d+", "N", text)).strip()


def needs_kvm(command: str) -> bool:
    """The output shows a host where KVM works: the demo, the plugin list (unless
    IRQBYPASS_LOAD_PLUGINS leaves the kvm plugin out), or a topology with a
    kvm-irqfd entry (on a host without /dev/kvm, `check` says those pairs would
    be skipped), unless the entry names a device under /nonexistent (skipped on
    every host)."""
    words = shlex.split(command)
    files = [ROOT / w for w in words if w.endswith(".toml") and (ROOT / w).is_file()]
    loads = [w.partition("=")[2] for w in words if w.startswith("IRQBYPASS_LOAD_PLUGINS=")]
    if loads and "irqbypass-kvm" not in loads[0].split(","):
        return False  # the kvm plugin is not loaded: its host's KVM cannot show
    return "demo" in words or "plugins" in words or any(uses_kvm(f) for f in files)


def uses_kvm(file: Path) -> bool:
    entries = [
        e
        for side in ("producers", "consumers")
        for e in tomllib.loads(file.read_text()).get(side, [])
    ]
    return any(
        e.get("kind") == "kvm-irqfd"
        and not str(e.get("options", {}).get("device", "")).startswith("/nonexistent/")
        for e in entries
    )


@pytest.mark.parametrize("block", blocks(), ids=lambda b: f"{b.page}:{b.command}")
def test_the_docs_show_the_real_output(block: Block) -> None:
    if needs_kvm(block.command):
        import irqbypass_kvm

        reason = irqbypass_kvm.unavailable_reason()
        if reason is not None:
            pytest.skip(f"the docs show a host where KVM works: {reason}")
    real = execute(block.command)
    if os.environ.get("IRQBYPASS_UPDATE_DOCS"):
        page = ROOT / "docs" / block.page
        marker = f"<!-- output: {block.command} -->\n```"
        text = page.read_text()
        start = text.index(marker)
        body_start = text.index("\n", start + len(marker)) + 1
        end = text.index("```", body_start)
        page.write_text(text[:body_start] + real + text[end:])
        return
    real = as_in_the_docs(real, block.body)
    timed = any(word in TIMED for word in shlex.split(block.command))
    if timed and block.command.endswith("2>&1"):
        # log lines of threads interleave as they happen: compare which lines, not their order
        assert {masked(ln) for ln in block.body.splitlines()} == {
            masked(ln) for ln in real.splitlines()
        }, f"{HOW} docs/{block.page}; real:\n{real}"
    elif timed:
        assert masked(block.body) == masked(real), f"{HOW} docs/{block.page}; real:\n{real}"
    else:
        assert block.body == real, f"{HOW} docs/{block.page}; real:\n{real}"


def subcommand(command: str) -> str:
    words = shlex.split(command)
    rest = [w for w in words[words.index("irqbypass") + 1 :] if not w.startswith("-")]
    return rest[0] if rest else ""


def test_every_command_has_its_real_output_in_the_cli_page() -> None:
    shown = {subcommand(b.command) for b in blocks() if b.page == "cli.md"}
    assert {"plugins", "check", "run", "demo"} <= shown


def shown_details(page: str, command: str) -> dict[str, list[str]]:
    """The DETAILS keys of each summary row of a page's block, by token."""
    (block,) = [b for b in blocks() if b.page == page and b.command == command]
    rows: dict[str, list[str]] = {}
    in_summary = False
    for line in block.body.splitlines():
        if line.startswith("summary"):
            in_summary = True
            continue
        words = line.split()
        if in_summary and words and words[0] != "TOKEN":
            rows[words[0]] = [w.partition("=")[0] for w in words if "=" in w]
    return rows


#: the counts that have columns of their own, not DETAILS
COLUMNS = ("fired", "delivered", "coalesced")


@pytest.mark.parametrize("page", ["cli.md", "quickstart.md"])
def test_the_demo_details_are_the_endpoints_stats_in_their_order(page: str) -> None:
    """The demo's DETAILS keys, as the docs show them, are the producer's stats
    then the consumer's, in the order the endpoints give them. Unlike the
    comparison of the demo's whole output, this needs no /dev/kvm: a host
    without KVM skips the kvm-irqfd consumers and still checks every producer
    (the vhost-user producer's keys changed their order unseen on such hosts,
    issue 27), and a consumer it builds is checked too. The endpoints are built,
    not opened (as `irqbypass check` builds them), so an opened endpoint's extra
    keys (the posted consumer's) follow the ones compared."""
    shown = shown_details(page, "irqbypass demo")
    topology = irqbypass.Topology(
        irqbypass.load_config(str(ROOT / "examples" / "demo.toml")), irqbypass.load_plugins()
    )
    topology.build(check_only=True)
    try:
        rows = topology.status()
    finally:
        topology.teardown()
    assert {row.token for row in rows} <= set(shown)
    for row in rows:
        producer = [k for k in row.producer_stats if k not in COLUMNS]
        consumer = [k for k in row.consumer_stats if k not in COLUMNS]
        keys = shown[row.token]
        assert keys[: len(producer)] == producer, f"{page}: {row.token}'s producer stats"
        rest = keys[len(producer) :]
        assert rest[: len(consumer)] == consumer, f"{page}: {row.token}'s consumer stats"


def test_only_the_output_of_a_host_with_kvm_waits_for_one() -> None:
    """Which docs blocks skip on a host without /dev/kvm: the demo, the full
    plugin list and topologies with a kvm-irqfd entry; not a plugin list the
    environment limits to other plugins, nor a topology whose kvm entry is
    skipped on every host."""
    assert needs_kvm("irqbypass demo")
    assert needs_kvm("irqbypass plugins")
    assert needs_kvm("irqbypass check examples/demo.toml")
    assert not needs_kvm("IRQBYPASS_LOAD_PLUGINS=irqbypass-mock irqbypass plugins --json")
    assert needs_kvm("IRQBYPASS_LOAD_PLUGINS=irqbypass-mock,irqbypass-kvm irqbypass plugins")
    assert not needs_kvm("irqbypass check docs/examples/topologies/optional.toml")
    assert not needs_kvm("irqbypass run docs/examples/topologies/small.toml")


#: the plugin guide's run of the example plugins' tests: the environment, then pytest's arguments
PLUGIN_TESTS_RUN = re.compile(
    r"```console\n\$ (?P<env>PYTHONPATH=\S+) \.venv/bin/pytest (?P<args>.+?)\n(?P<body>.*?)```",
    re.S,
)


def test_the_plugin_guide_s_run_of_the_example_plugins_tests_prints_what_it_shows() -> None:
    """docs/plugin-guide.md, "Testing a plugin in-process": the command that runs the
    example plugins' tests prints what the page shows, its duration aside. Before, it
    ran all of docs/examples (10 tests by then, while the page showed 5) without -q
    (pytest's header too)."""
    page = (ROOT / "docs" / "plugin-guide.md").read_text()
    block = PLUGIN_TESTS_RUN.search(page)
    assert block is not None, "docs/plugin-guide.md lost the run of the example plugins' tests"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IRQBYPASS_", "PYTEST_"))}
    key, _, value = block["env"].partition("=")
    env[key] = value
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *shlex.split(block["args"])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    def timeless(text: str) -> str:
        return re.sub(r" in [\d.]+s$", " in Ns", text, flags=re.M)

    assert timeless(result.stdout) == timeless(block["body"]), result.stdout
