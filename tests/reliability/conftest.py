"""Reliability suite: makes the shared helpers (``rel_support``) importable and
prints the counters each suite collected at the end of the session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import rel_support  # noqa: E402


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The counts docs/reliability.md quotes: cases and operations per suite."""
    counters = rel_support.COUNTERS
    if not counters:
        return
    terminalreporter.section("irqbypass reliability counters")
    for key in sorted(counters):
        terminalreporter.write_line(f"{key}: {counters[key]}")
