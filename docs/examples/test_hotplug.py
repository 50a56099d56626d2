"""docs/examples/hotplug.py runs, and prints what docs/embedding.md shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_hotplug_example_prints_what_the_guide_shows() -> None:
    page = (ROOT / "docs" / "embedding.md").read_text()
    block = re.search(
        r"```console\n\$ \.venv/bin/python docs/examples/hotplug\.py\n(.*?)```", page, re.S
    )
    assert block is not None, "docs/embedding.md lost the hot-plug example's output block"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")}
    proc = subprocess.run(
        [sys.executable, "docs/examples/hotplug.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == block[1]
