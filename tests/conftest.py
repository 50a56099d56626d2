"""Shared fixtures: a guarded SIGINT; and the hooks that run the tests marked
``guest`` in the test guests (tests/guest/guest_results.py). The fixtures every
plugin test needs (``token``, ``no_fd_leak``, ``vmm_fd``, ``irqbypass_host``)
come from the core's pytest plugin, irqbypass.pytest_plugin, as they do for a
third party's plugin."""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable, Iterator

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


def _with_fds_left(call: Callable[[], object], left: int) -> BaseException | None:
    """``call()`` with exactly ``left`` file descriptors free under the real
    RLIMIT_NOFILE (the others taken): what it raised, if anything."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    taken: list[int] = []
    # room for ``left`` above the highest fd open now: every hole below it and
    # that room are filled, then ``left`` given back (a process whose fds have
    # no hole, as in the test guest, still gets them)
    highest = max(map(int, os.listdir("/proc/self/fd")))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + left, hard))
    try:
        while True:
            try:
                taken.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                break
        assert len(taken) >= left, f"{len(taken)} fds could be taken, not {left}"
        for _ in range(left):
            os.close(taken.pop())
        try:
            call()
        except BaseException as exc:
            return exc
        return None
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_under_each_fd_limit(
    make: Callable[[irqbypass.Eventfd], irqbypass.Consumer],
) -> Iterator[tuple[int, BaseException, irqbypass.Consumer]]:
    """Open ``make(token)``'s endpoint (a new token each time) with 0, 1, 2 ...
    fds free until it opens, then close it; yield ``(left, what the open raised,
    the endpoint)`` for each limit it did not open under, while its token is
    open, so the caller checks what the failure left. Fails when 16 free fds
    are not enough, or when the open needed none (nothing was tried)."""
    for left in range(16):
        with irqbypass.Eventfd() as token:
            endpoint = make(token)
            failure = _with_fds_left(endpoint.open, left)
            if failure is None:
                endpoint.close()
                assert left > 0, "open() made no fd: nothing was tried"
                return
            yield left, failure, endpoint
    pytest.fail("16 free fds were not enough to open")


@pytest.fixture
def open_under_each_fd_limit() -> Callable[
    [Callable[[irqbypass.Eventfd], irqbypass.Consumer]],
    Iterator[tuple[int, BaseException, irqbypass.Consumer]],
]:
    """``for left, failure, endpoint in open_under_each_fd_limit(make):`` each
    step of an open that makes an fd meets RLIMIT_NOFILE in turn."""
    return _open_under_each_fd_limit
