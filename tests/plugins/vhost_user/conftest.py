"""Fixtures: a private qemu-storage-daemon per test (killed on every path), a
token, and waits that wait for events rather than sleep."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import irqbypass_vhost_user
import pytest
from irqbypass_vhost_user import StorageDaemon, VhostUserProducer

#: a hang guard, not a speed limit: generous for a loaded 2-core machine
GUARD = 30.0


@pytest.fixture(scope="session")
def daemon_usable() -> None:
    reason = irqbypass_vhost_user.unavailable_reason()
    if reason is not None:
        pytest.skip(f"{reason} (or run `make pytest`, whose scripts/provision installs it)")


@pytest.fixture
def daemon(daemon_usable: None) -> Iterator[StorageDaemon]:
    backend = StorageDaemon(queues=2)
    try:
        backend.start()
        yield backend
    finally:
        backend.close()


def wait_for(condition: Callable[[], bool], what: str, guard: float = GUARD) -> None:
    """Wait until ``condition()`` holds; fail (never hang) after ``guard`` s."""
    deadline = time.monotonic() + guard
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.001)


def complete(producer: VhostUserProducer, n: int) -> None:
    """Wait until the back-end has returned ``n`` more requests than were reaped."""
    done = 0

    def reaped() -> bool:
        nonlocal done
        done += producer.reap()
        return done >= n

    wait_for(reaped, f"{n} completions")
