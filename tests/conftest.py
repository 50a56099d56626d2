"""Shared fixtures: a guarded SIGINT; and the hooks that run the tests marked
``guest`` in the test guests (tests/guest/guest_results.py). The fixtures every
plugin test needs (``token``, ``no_fd_leak``, ``vmm_fd``, ``irqbypass_host``)
come from the core's pytest plugin, irqbypass.pytest_plugin, as they do for a
third party's plugin."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import irqbypass
import irqbypass.signalsafe
import pytest
from guest_results import (
    guest_kernel,
    pytest_collection_finish,
    pytest_collection_modifyitems,
    pytest_generate_tests,
    pytest_runtest_protocol,
    pytest_sessionfinish,
)

__all__ = [
    "guest_kernel",
    "pytest_collection_finish",
    "pytest_collection_modifyitems",
    "pytest_generate_tests",
    "pytest_runtest_protocol",
    "pytest_sessionfinish",
]

# Hypothesis: `make test` (and CI) is deterministic: the same commit tries the same
# examples on every run and machine, and no example database carries one run's
# finds into the next. `make fuzz` explores instead: random seeds, many examples
# (docs/testing.md). A bare `pytest` takes the deterministic profile too.
# The test guests run no property-based test and leave Hypothesis out (inside.sh
# also disables its pytest plugin): importing it costs a minute under TCG.
if not os.environ.get("IRQBYPASS_IN_GUEST"):
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
    settings.register_profile("fuzz", derandomize=False, database=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def guarded_sigint() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, with irqbypass's guard in front (as a
    Manager installs it): a signal inside a signal-safe section waits for its
    end. Python's handler and the signal mask are restored after."""
    before = signal.getsignal(signal.SIGINT)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    irqbypass.signalsafe.guard_signals((signal.SIGINT,))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
