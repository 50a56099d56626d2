"""What a type checker sees of irqbypass and its plugins, from outside the
repository, as a third-party plugin or VMM would (issue 22, item 17).

Regressions: the plugins installed editable were invisible to mypy (setuptools
installed an import hook for their flat layout; now ``package-dir = {"" = "."}``
makes it a .pth path entry); a kind's factory returned ``Endpoint`` (an
``isinstance`` per call); ``host.hook`` was ``Any``; ``KindRegistry`` and
``Side`` were not exported; unnamed endpoints all bore their class's name.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import irqbypass
import pytest

ROOT = Path(__file__).resolve().parents[2]

THIRD_PARTY = """\
from collections.abc import Generator

import irqbypass
import irqbypass.plugin
import irqbypass.exceptions
import irqbypass_kvm
from irqbypass_mock import MockProducer


def consumer(
    host: irqbypass.PluginHost, spec: irqbypass.plugin.EndpointSpec
) -> irqbypass.Consumer:
    return host.kinds.get("consumer", "kvm-irqfd").factory(spec)  # no isinstance


def producer(
    kinds: irqbypass.plugin.KindRegistry, spec: irqbypass.plugin.EndpointSpec
) -> irqbypass.Producer:
    return kinds.get("producer", "mock").factory(spec)


class Audit:
    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_stop(
        self, endpoint: irqbypass.Endpoint, side: irqbypass.plugin.Side
    ) -> Generator[None, None, None]:
        return (yield)


def stop(host: irqbypass.PluginHost, endpoint: irqbypass.Endpoint) -> list[None]:
    return host.hook.irqbypass_stop(endpoint=endpoint, side="producer")


reveal_type(irqbypass_kvm.unavailable_reason())
side: irqbypass.plugin.Side = "both"  # ERROR
name: int = MockProducer(token=1).name  # ERROR


def hook(host: irqbypass.PluginHost) -> None:
    host.hook.irqbypass_stop(endpoint=1, side="producer")  # ERROR
"""


def test_a_third_party_file_is_type_checked_against_the_plugins(tmp_path: Path) -> None:
    """mypy --strict, run outside the checkout, finds irqbypass_kvm and
    irqbypass_mock through their editable installs and knows their types: it
    reports exactly the three planted errors (an Any anywhere would hide one)."""
    source = tmp_path / "vmm_of_our_own.py"
    source.write_text(THIRD_PARTY)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            source.name,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard
        check=False,
    )
    output = proc.stdout + proc.stderr
    planted = [n for n, line in enumerate(THIRD_PARTY.splitlines(), 1) if line.endswith("# ERROR")]
    errors = sorted(int(m) for m in re.findall(r"^vmm_of_our_own\.py:(\d+): error:", output, re.M))
    assert errors == planted, output
    assert re.search(r'Revealed type is "(builtins\.)?str \| None"', output), output


def test_unnamed_endpoints_get_distinct_names() -> None:
    first = irqbypass.Producer(token="t")
    second = irqbypass.Producer(token="t")
    assert first.name != second.name
    assert all(n.startswith("Producer-") for n in (first.name, second.name))
    assert irqbypass.Producer(token="t", name="dev0").name == "dev0"
    manager = irqbypass.Manager(guard_sigint=False)
    manager.register_producer(first)
    with pytest.raises(irqbypass.exceptions.TokenInUseError) as caught:
        manager.register_producer(second)
    # which of two unnamed producers holds the token: the message can tell
    assert f"held by producer {first.name!r}" in str(caught.value)
    manager.unregister_producer(first)
