"""docs/examples/embed_topology.py runs, and prints what docs/embedding.md shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "docs/examples/embed_topology.py"


def shown() -> list[tuple[list[str], str]]:
    """(arguments, output) of each ``$ python embed_topology.py`` in the guide."""
    page = (ROOT / "docs" / "embedding.md").read_text()
    block = re.search(
        r"```console\n(\$ \.venv/bin/python docs/examples/embed_topology\.py.*?)```", page, re.S
    )
    assert block is not None, "docs/embedding.md lost the example's output block"
    runs = []
    for chunk in block[1].split("$ ")[1:]:
        command, _, output = chunk.partition("\n")
        runs.append((command.split()[2:], output))
    return runs


@pytest.mark.parametrize("args, output", shown(), ids=lambda v: str(v)[:40])
def test_example_prints_what_the_guide_shows(args: list[str], output: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")}
    proc = subprocess.run(
        [sys.executable, EXAMPLE, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard
        check=False,
    )
    assert proc.stdout + proc.stderr == output
    assert proc.returncode == (1 if "error:" in output else 0)
