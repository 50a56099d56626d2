"""Ctrl-C at every moment of a batch open and close: all or nothing, nothing left behind.

``VfioProducer.open_group`` and ``close_group`` (the core's
``DeviceProducer.open_batch`` / ``close_batch`` under them) on the vfio model,
with a signal swept over every bytecode of the core's device producer, its
state and the device group and the vfio plugin's producer, vector, device and opener
(``interrupts.sweep``), SIGINT guarded as a Manager guards it.
After each run: either the whole batch is open with every vector attached, or
none is open and the model holds no fd and no trigger of the batch's; a close
ends with every producer closed, or (the signal before it began) none; and no
producer's lock is left held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack

import interrupts
import irqbypass
import irqbypass._device as device_module
import irqbypass._devicegroup as group_module
import irqbypass._devicestate as state_module
import irqbypass_vfio._device as shared_module
import irqbypass_vfio._open as open_module
import irqbypass_vfio._vector as vector_module
import irqbypass_vfio.producer as producer_module
import pytest
from irqbypass_vfio import VfioProducer
from irqbypass_vfio import _abi as abi
from irqbypass_vfio.testing import PCI_IRQS_NORESIZE_MSIX, FakeVfio
from rel_support import COUNTERS

pytestmark = pytest.mark.usefixtures("no_fd_leak", "guarded_sigint")

FILES = [
    device_module.__file__,
    group_module.__file__,
    state_module.__file__,
    producer_module.__file__,
    shared_module.__file__,
    vector_module.__file__,
    open_module.__file__,
]
MSIX = abi.VFIO_PCI_MSIX_IRQ_INDEX
VECTORS = 2  # a run of two: one SET_IRQS for both (a sweep costs the square of its length)
#: the two vfio-pci behaviours: a block enabled whole (6.1) or vectors alone (6.5+)
KERNELS = {"noresize": PCI_IRQS_NORESIZE_MSIX, "dynamic": None}


def batch(stack: ExitStack, kernel: str) -> tuple[FakeVfio, list[VfioProducer]]:
    fake = FakeVfio(irqs=KERNELS[kernel])
    tokens = [stack.enter_context(irqbypass.Eventfd()) for _ in range(VECTORS)]
    where = {"device": "/dev/vfio/7", "device_name": "0000:01:00.0"}
    producers = [
        VfioProducer(token=t, seam=fake, index="msix", vector=v, name=f"v{v}", **where)
        for v, t in enumerate(tokens)
    ]
    return fake, producers


def unlocked(producers: list[VfioProducer]) -> bool:
    """Every producer's lock free: another thread can take it (a lock the
    interrupted thread kept would block it; the wait is a hang guard)."""
    free: list[bool] = []

    def take() -> None:
        for p in producers:
            got = p._lock.acquire(timeout=10)
            free.append(got)
            if got:
                p._lock.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    return free == [True] * len(producers)


def attached(fake: FakeVfio, producers: list[VfioProducer]) -> list[bool]:
    return [fake.trigger_of(MSIX, v) is not None for v in range(len(producers))]


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_signal_anywhere_in_open_group_leaves_all_or_nothing(kernel: str) -> None:
    def make() -> tuple[Callable[[], object], Callable[[BaseException | None], None]]:
        stack = ExitStack()
        fake, producers = batch(stack, kernel)

        def check(exc: BaseException | None) -> None:
            with stack:
                assert unlocked(producers), "a producer's lock was left held"
                opened = [p.attached_to is not None for p in producers]
                if opened == [True] * VECTORS:
                    assert attached(fake, producers) == [True] * VECTORS
                    VfioProducer.close_group(producers)
                else:
                    assert exc is not None, "open_group returned with some not open"
                    assert opened == [False] * VECTORS, opened
                    assert not any(attached(fake, producers))
                    assert [p.fd for p in producers] == [None] * VECTORS
                assert fake.open_fds == [], fake.open_fds

        return lambda: VfioProducer.open_group(producers), check

    result = interrupts.sweep(make, FILES)
    COUNTERS[f"signals: open_group ({kernel}) arrival points"] += result.points
    assert result.interrupted > 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_signal_anywhere_in_close_group_still_closes_every_producer(kernel: str) -> None:
    def make() -> tuple[Callable[[], object], Callable[[BaseException | None], None]]:
        stack = ExitStack()
        fake, producers = batch(stack, kernel)
        VfioProducer.open_group(producers)

        def check(exc: BaseException | None) -> None:
            with stack:
                assert unlocked(producers), "a producer's lock was left held"
                if exc is not None and all(p.attached_to is not None for p in producers):
                    # the signal acted before the close began: all still open, intact
                    assert attached(fake, producers) == [True] * VECTORS
                    VfioProducer.close_group(producers)
                assert [p.attached_to for p in producers] == [None] * VECTORS
                assert [p.fd for p in producers] == [None] * VECTORS
                assert not any(attached(fake, producers))
                assert fake.open_fds == [], fake.open_fds

        return lambda: VfioProducer.close_group(producers), check

    result = interrupts.sweep(make, FILES)
    COUNTERS[f"signals: close_group ({kernel}) arrival points"] += result.points
    assert result.interrupted > 0
