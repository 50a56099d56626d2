"""What ships inside the core's distribution for users of an install: the
example topologies and systemd unit (``irqbypass examples``), the demo's file
and what it needs installed, and where the documentation is.

A checkout's paths (``examples/demo.toml``, ``docs/cli.md``) mean nothing to
someone who ran ``pip install irqbypass``: every message here names what an
install has (a bundled file by its name, a command that writes it, the project's
URL).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from typing import TYPE_CHECKING

from .._config import Config
from .._errors import IrqBypassError
from .._kinds import to_install
from .._paths import open_at, open_directory

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

#: how the demo's file is named in messages: what `irqbypass examples --write` writes
DEMO = "demo.toml"


def _folder() -> Traversable:
    return resources.files("irqbypass").joinpath("examples")


def bundled() -> dict[str, Traversable]:
    """Each bundled example by file name."""
    return {f.name: f for f in sorted(_folder().iterdir(), key=lambda f: f.name) if f.is_file()}


def demo_text() -> bytes:
    data: bytes = _folder().joinpath(DEMO).read_bytes()
    return data


def _summary(example: Traversable) -> str:
    """The first clause of the file's leading comment."""
    lines = []
    for line in example.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    return text.split(". ")[0].split(": ")[0].rstrip(".")


def cmd_examples(args: argparse.Namespace) -> int:
    examples = bundled()
    if args.write is None:
        for name, example in examples.items():
            print(f"{name:<20} {_summary(example)}")
        print("write them into a directory with `irqbypass examples --write DIR`")
        return 0
    # made if missing, but never through a link, nor in a directory another
    # user could change (who could swap an example or the unit for their own)
    dirfd = open_directory(args.write, create=True)
    try:
        present = [n for n in examples if _there(dirfd, n)]
        if present:
            raise IrqBypassError(
                f"{args.write}: {', '.join(present)} already there; nothing was written "
                "(remove them, or write into another directory)"
            )
        for name, example in examples.items():
            shown = os.path.join(args.write, name)
            # O_EXCL: never through a link or over a file made meanwhile
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            fd = open_at(dirfd, name, flags, 0o644, what="example", shown=shown)
            with os.fdopen(fd, "wb") as out:
                out.write(example.read_bytes())
            print(shown)
    finally:
        os.close(dirfd)
    return 0


def _there(dirfd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dirfd)
    except FileNotFoundError:
        return False
    return True


def demo_missing(config: Config) -> list[str]:
    """The project's plugin distributions the demo's required (not optional)
    entries need and this environment lacks, read from the metadata only."""
    entries = (*config.producers, *config.consumers)
    needed = {to_install(e.side, e.kind) for e in entries if not e.optional}
    return sorted(d for d in needed if d is not None)


def check_demo(config: Config) -> None:
    """Refuse in one line, naming what to install, a demo this install cannot
    run (the core alone: the demo's mock producers and logging consumers)."""
    missing = demo_missing(config)
    if missing:
        raise IrqBypassError(
            f"the demo needs the plugins {' and '.join(missing)}, which are not installed: "
            f"pip install {' '.join(missing)}"
        )
