"""The fixtures a plugin's tests need, as a pytest plugin.

Installed with the core (entry point ``pytest11``: ``irqbypass``), so a
plugin's own test suite has them with no conftest of its own, as pytest's
``pytester`` is there for pytest plugins:

``token``
    a fresh :class:`irqbypass.Eventfd` to pair by, closed after the test.
``no_fd_leak``
    fails the test if it leaves an fd open or a thread running.
``vmm_fd``
    a VMM's fd from the test's device model: the test module gives its model
    (an :class:`irqbypass.testing.FakeDevice` with ``hand_over()``) as a ``fake`` fixture.
``irqbypass_plugins``
    what ``irqbypass_host`` registers: override it with the plugin modules or
    objects under test (the default registers none).
``irqbypass_host``
    a :class:`irqbypass.PluginHost` with exactly those plugins registered
    (no installed plugin is loaded, so the test sees only its own).
``irqbypass_manager``
    a :class:`irqbypass.Manager` using that host.

A project's conftest fixture of the same name wins over these (pytest's rule).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator, Sequence

import pytest

from ._eventfd import Eventfd
from ._loop import event_loop
from ._manager import Manager
from ._plugins import PluginHost
from .testing import HandsOver, open_fds

__all__ = [
    "HandsOver",
    "irqbypass_host",
    "irqbypass_manager",
    "irqbypass_plugins",
    "no_fd_leak",
    "open_fds",
    "token",
    "vmm_fd",
]


@pytest.fixture
def token() -> Iterator[Eventfd]:
    """A fresh eventfd to pair by, closed after the test."""
    with Eventfd() as eventfd:
        yield eventfd


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it leaves an fd open (or a thread running). The
    process's event loop (its epoll fd, wakeup eventfd and two threads) lives as
    long as the process: it is started before the count."""
    event_loop().start()
    gc.collect()
    before = open_fds()
    threads_before = set(threading.enumerate())
    yield
    gc.collect()
    after = open_fds()
    leaked = {fd: target for fd, target in after.items() if before.get(fd) != target}
    assert not leaked, f"fds left open: {leaked}"
    alive = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert not alive, f"threads left running: {alive}"


@pytest.fixture
def vmm_fd(fake: HandsOver) -> Iterator[int]:
    """A VMM's fd, set up as the model's ``hand_over`` says (vdpa: opened, owned,
    DRIVER_OK; vhost: opened and owned); what that recorded is cleared, so a test
    sees only what the producer does. Closed after the test."""
    fd = fake.hand_over()
    del fake.calls[:], fake.opened[:]
    yield fd
    fake.close(fd)


@pytest.fixture
def irqbypass_plugins() -> Sequence[object]:
    """The plugins ``irqbypass_host`` registers: override it in a conftest or
    test module (``return [irqbypass_ticker]``)."""
    return ()


@pytest.fixture
def irqbypass_host(irqbypass_plugins: Sequence[object]) -> Iterator[PluginHost]:
    """A plugin host with ``irqbypass_plugins`` registered, and nothing else."""
    host = PluginHost()
    names = [host.register(plugin) for plugin in irqbypass_plugins]
    try:
        yield host
    finally:
        for name in reversed(names):
            host.unregister(name=name)


@pytest.fixture
def irqbypass_manager(irqbypass_host: PluginHost) -> Manager:
    """A manager whose callbacks go through ``irqbypass_host``'s plugins."""
    return Manager(irqbypass_host)
