"""``irqbypass --version --version``: the core, Python and every installed
plugin with its version and the core releases it accepts, as pytest's
``--version --version`` lists its plugins. Read from the installed metadata
(importlib.metadata) only: no plugin is imported, so a broken one shows too."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from .. import __version__
from .._plugins import GROUP, _installed_entry_points, _source
from .._requires import core_requirement
from .output import fit_to_screen, is_tty, print_warning


def print_versions(out: TextIO) -> None:
    where = Path(__file__).resolve().parents[1]
    out.write(f"irqbypass {__version__} at {where}\n")
    out.write(f"Python {sys.version.split()[0]} at {sys.executable}\n")
    seen: set[tuple[str, str]] = set()
    lines: list[str] = []
    warnings: list[str] = []
    for ep in _installed_entry_points(warnings):  # an unreadable distribution: a warning
        if ep.group != GROUP:
            continue
        source = _source(ep)
        name = source.distribution or "no distribution"
        if (name, ep.name) in seen:
            continue  # one distribution seen twice (an editable install beside another)
        seen.add((name, ep.name))
        version = f" {source.version}" if source.version else ""
        requires = ep.dist.requires if ep.dist is not None and not source.unreadable else None
        requirement = core_requirement(requires, GROUP)
        if source.unreadable is not None:
            needs = source.unreadable
        elif requirement is None:
            needs = "states no irqbypass release"
        else:
            problem = requirement.problem(__version__)
            needs = f"needs {requirement.text}" + (
                f": not this core, so it is refused ({problem})" if problem else ""
            )
        lines.append(f"  {ep.name} ({name}{version}): {ep.value}; {needs}")
    out.write(f"installed plugins (entry-point group {GROUP!r}, none imported):\n")
    wrap = is_tty(out)  # wrapped at a word, under its plugin, as the run's header is
    for line in sorted(lines) or ["  none"]:
        out.write(f"{fit_to_screen(line, out, indent='    ') if wrap else line}\n")
    for warning in warnings:
        print_warning(warning)
