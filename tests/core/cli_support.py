"""What the command-line tests of tests/core share: the CLI run as a user runs it,
in a clean environment that can import this folder's test plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXE = [sys.executable, "-m", "irqbypass"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run(
    *args: str, env: Mapping[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXE, *args],
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard, not a speed goal
        env=clean_env(**(env or {})),
        input=input,
        check=False,
    )


def topology(tmp_path: Path, text: str, name: str = "t.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def pair(producer: str, consumer: str, token: str = "t", n: int = 0) -> str:
    return (
        f'[[producers]]\nname="p{n}"\nkind="{producer}"\ntoken="{token}"\n'
        f'[[consumers]]\nname="c{n}"\nkind="{consumer}"\ntoken="{token}"\n'
    )
