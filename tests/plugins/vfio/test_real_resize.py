"""The MSI-X resize rule on the real vfio-pci, on both guest kernels.

QEMU's e1000e has 5 MSI-X vectors. Vectors 0-3 are attached and raised the
whole time while vector 4 is added and taken away again, each way the kernel
allows (issue 19, item 3):

- ``up front``: the producer's way. On a NORESIZE index (Linux 6.1) its first
  attach enabled the whole block, so vector 4 is attached inside it, alone; on
  a kernel that clears NORESIZE (6.12: dynamic MSI-X since 6.5) it is added
  alone. Lossless on both: every raise of 0-3 arrives exactly once.
- ``alone``: ``SET_IRQS`` for vector 4 alone on an index enabled with 4
  vectors (what QEMU 8.2+ does on a dynamic-MSI-X kernel). 6.12 allocates it;
  6.1 refuses it with EINVAL.
- ``regrow``: the index disabled and enabled again with one vector more (what
  QEMU does on a NORESIZE kernel when the guest uses a higher vector). What
  vectors 0-3 raise while the index is disabled is what it risks: with MSI-X
  off, e1000e falls back to INTx, which nobody listens to, and keeps the cause
  in ICR. The raises in the window are one of each vector, from between the two
  ioctls (QEMU 7.2's e1000e aborts if MSI-X is disabled or enabled while a
  throttling timer runs, so the raising thread pauses around them); the test
  counts what reached a token (nothing: lost, as far as the kernel goes) and
  what the device latched, which it then clears (a real driver would find it
  at its next interrupt; QEMU 7.2 aborts the enable otherwise: see
  tests/guest/e1000e.py).

The figures go to ``resize-<way>.json`` in the boot's folder (which names the
kernel); docs/plugins/vfio.md quotes them.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import irqbypass
import pytest
from e1000e import EVENTFD_TRIGGER, PACE_S, VECTORS, E1000e, set_irqs
from edu import device_fd
from irqbypass_vfio import VfioProducer
from irqbypass_vfio import _abi as abi
from realdevice import CountingConsumer, Loop, write_figures

pytestmark = pytest.mark.guest("vfio")

E1000E = os.environ.get("IRQBYPASS_TEST_VFIO_E1000E", "")
MSIX = abi.VFIO_PCI_MSIX_IRQ_INDEX
NONE_TRIGGER = abi.VFIO_IRQ_SET_DATA_NONE | abi.VFIO_IRQ_SET_ACTION_TRIGGER
#: the vectors raised the whole time, and the one added and taken away
FIRING, ADDED = (0, 1, 2, 3), 4
CYCLES = 10
#: how long a raise may take to arrive before it counts as late (a TCG guest on a
#: loaded host: generous; a late one still counts when it comes)
ARRIVAL_S = 2.0
#: clear of QEMU 7.2's throttling timers around a disable or an enable (they end
#: late on a loaded host: tests/guest/e1000e.py)
QUIET_S = PACE_S


def need_e1000e() -> None:
    if not E1000E:
        pytest.skip("no e1000e device: these run in the vfio test guest (make guest-test)")


def noresize(fd: int) -> bool:
    """Whether vfio-pci says the MSI-X index cannot grow (GET_IRQ_INFO)."""
    info = abi.vfio_irq_info(argsz=ctypes.sizeof(abi.vfio_irq_info), index=MSIX)
    buf = bytearray(bytes(info))
    fcntl.ioctl(fd, abi.VFIO_DEVICE_GET_IRQ_INFO, buf)
    got = abi.vfio_irq_info.from_buffer_copy(buf)
    assert got.count == VECTORS
    return bool(got.flags & abi.VFIO_IRQ_INFO_NORESIZE)


class Raiser(Loop):
    """A thread raising vectors 0-3 round robin, each raise waiting for its
    message (e1000e's pacing); :meth:`paused` holds it between two raises."""

    name = "raiser"

    def __init__(self, nic: E1000e, consumers: list[CountingConsumer]) -> None:
        super().__init__()
        self.nic, self.consumers = nic, consumers
        self.raised = [0] * VECTORS
        self.late = 0  # raises that had not arrived after ARRIVAL_S
        self._lock = threading.Lock()  # held around each raise and its wait

    def step(self) -> None:
        for v in FIRING:
            with self._lock:
                self.raise_one(v, ARRIVAL_S)

    def raise_one(self, v: int, wait: float) -> bool:
        """Raise vector v once; whether its consumer's count grew within ``wait``."""
        before = self.consumers[v].count
        self.nic.raise_vector(v)
        self.raised[v] += 1
        arrived = self.consumers[v].wait_for(before + 1, wait) > before
        if arrived:
            self.nic.arrived(v)
        else:
            self.late += 1
            self.nic.arrived(v)  # pace from here all the same
        return arrived

    @contextmanager
    def paused(self) -> Iterator[None]:
        with self._lock:
            time.sleep(QUIET_S)
            yield
            time.sleep(QUIET_S)


class Bench:
    """Five tokens with counting consumers."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.tokens = [stack.enter_context(irqbypass.Eventfd()) for _ in range(VECTORS)]
        self.consumers = [
            CountingConsumer(token=t, name=f"c{v}") for v, t in enumerate(self.tokens)
        ]
        for c in self.consumers:
            c.open()
            stack.callback(c.close)

    def device(self, fd: int) -> E1000e:
        """The e1000e set up on ``fd``; quiet again (and clear of the throttling
        timers) before what was registered earlier disables the index."""
        nic = E1000e(fd)
        nic.setup()
        self.stack.callback(nic.quiet)
        self.stack.callback(time.sleep, QUIET_S)
        return nic

    def counts(self) -> list[int]:
        return [c.count for c in self.consumers]

    def settle(self, raised: list[int]) -> list[int]:
        """The counts once every raise arrived, or after a bounded wait."""
        for v in FIRING:
            self.consumers[v].wait_for(raised[v], ARRIVAL_S)
        return self.counts()


def median_ms(seconds: list[float]) -> float:
    return round(sorted(seconds)[len(seconds) // 2] * 1e3, 1)


def test_up_front_adds_a_vector_with_nothing_lost(no_fd_leak: None) -> None:
    """The producer's way: vector 4's producer opened and closed 10 times while
    vectors 0-3 (producers opened as a group) are raised; every raise arrives
    exactly once, and vector 4 counts each of its own raises."""
    need_e1000e()
    with ExitStack() as stack:
        bench = Bench(stack)
        mgr = irqbypass.Manager()
        producers = [
            VfioProducer(token=bench.tokens[v], device=E1000E, vector=v, name=f"v{v}")
            for v in range(VECTORS)
        ]
        for c in bench.consumers:
            mgr.register_consumer(c)
            stack.callback(mgr.unregister_consumer, c)
        VfioProducer.open_group([producers[v] for v in FIRING])
        stack.callback(VfioProducer.close_group, [producers[v] for v in FIRING])
        info = producers[0].irq_info
        assert info is not None and info.count == VECTORS
        nic = bench.device(producers[0].fd or -1)
        added = producers[ADDED]
        stack.callback(added.close)  # closed already, unless a cycle failed
        t0 = time.monotonic()
        with Raiser(nic, bench.consumers) as raiser:
            for _ in range(CYCLES):
                added.open()
                mgr.register_producer(added)
                with raiser.paused():
                    assert raiser.raise_one(ADDED, ARRIVAL_S)
                mgr.unregister_producer(added)
                added.close()
        elapsed = time.monotonic() - t0
        assert not raiser.errors, raiser.errors
        expected = [*raiser.raised[:ADDED], CYCLES]
        assert bench.settle(raiser.raised) == expected
        assert raiser.late == 0
        write_figures(
            "resize-up-front",
            {"noresize": info.noresize, "cycles": CYCLES, "raised": raiser.raised[:ADDED],
             "arrived": bench.counts()[:ADDED], "late": raiser.late, "seconds": round(elapsed, 2)},
        )  # fmt: skip


def test_alone_adds_a_vector_where_the_kernel_can_resize(
    no_fd_leak: None,
) -> None:
    """On a VMM's fd with vectors 0-3 enabled as a block: vector 4's SET_IRQS
    alone. A NORESIZE kernel refuses it (EINVAL); one that resizes adds and
    takes it away 10 times while 0-3 are raised, and nothing is lost."""
    need_e1000e()
    with ExitStack() as stack:
        fd = stack.enter_context(device_fd(E1000E))
        bench = Bench(stack)
        firing = tuple(bench.tokens[v].fileno() for v in FIRING)
        set_irqs(fd, EVENTFD_TRIGGER, 0, len(FIRING), firing)
        stack.callback(set_irqs, fd, NONE_TRIGGER, 0, 0)  # the index disabled again
        nic = bench.device(fd)
        added_fd = bench.tokens[ADDED].fileno()
        if noresize(fd):
            with pytest.raises(OSError) as refused:
                set_irqs(fd, EVENTFD_TRIGGER, ADDED, 1, (added_fd,))
            assert refused.value.errno == errno.EINVAL
            write_figures("resize-alone", {"noresize": True, "refused": "EINVAL"})
            return
        t0 = time.monotonic()
        with Raiser(nic, bench.consumers) as raiser:
            for _ in range(CYCLES):
                set_irqs(fd, EVENTFD_TRIGGER, ADDED, 1, (added_fd,))
                with raiser.paused():
                    assert raiser.raise_one(ADDED, ARRIVAL_S)
                set_irqs(fd, EVENTFD_TRIGGER, ADDED, 1, (-1,))
        elapsed = time.monotonic() - t0
        assert not raiser.errors, raiser.errors
        assert bench.settle(raiser.raised) == [*raiser.raised[:ADDED], CYCLES]
        assert raiser.late == 0
        write_figures(
            "resize-alone",
            {"noresize": False, "cycles": CYCLES, "raised": raiser.raised[:ADDED],
             "arrived": bench.counts()[:ADDED], "late": raiser.late, "seconds": round(elapsed, 2)},
        )  # fmt: skip


def test_regrow_loses_what_is_raised_while_the_index_is_disabled(
    no_fd_leak: None,
) -> None:
    """On a VMM's fd: the index disabled and enabled again with 5 vectors, then
    with 4, 10 times each way, while 0-3 are raised; in every window one raise
    of each of 0-3. Every raise outside the windows arrives exactly once; in
    the windows none reaches its token, and the device latched each. Both
    kernels accept the regrow."""
    need_e1000e()
    with ExitStack() as stack:
        fd = stack.enter_context(device_fd(E1000E))
        bench = Bench(stack)
        fds = tuple(t.fileno() for t in bench.tokens)
        set_irqs(fd, EVENTFD_TRIGGER, 0, len(FIRING), fds[: len(FIRING)])
        stack.callback(set_irqs, fd, NONE_TRIGGER, 0, 0)
        nic = bench.device(fd)
        window = {"raised": 0, "delivered": 0, "latched": 0}
        ioctl_s: dict[str, list[float]] = {"disable": [], "enable": []}
        with Raiser(nic, bench.consumers) as raiser:
            for i in range(2 * CYCLES):
                size = VECTORS if i % 2 == 0 else len(FIRING)
                with raiser.paused():
                    before = bench.counts()
                    t0 = time.monotonic()
                    set_irqs(fd, NONE_TRIGGER, 0, 0)  # disabled: every vector freed
                    ioctl_s["disable"].append(time.monotonic() - t0)
                    for v in FIRING:
                        nic.raise_vector(v, msix=False)
                        nic.arrived(v)  # pace from here
                    window["raised"] += len(FIRING)
                    window["latched"] += len(nic.take_latched(FIRING))
                    time.sleep(QUIET_S)  # the INTx path's timer ends, MSI-X still off
                    t0 = time.monotonic()
                    set_irqs(fd, EVENTFD_TRIGGER, 0, size, fds[:size])
                    ioctl_s["enable"].append(time.monotonic() - t0)
                    time.sleep(QUIET_S)  # anything the enable sends arrives meanwhile
                    window["delivered"] += sum(
                        now - then for now, then in zip(bench.counts(), before, strict=True)
                    )
        assert not raiser.errors, raiser.errors
        final = bench.settle(raiser.raised)
        assert raiser.late == 0
        assert final[: len(FIRING)] == raiser.raised[: len(FIRING)]  # outside the windows
        assert window["delivered"] == 0
        assert window["latched"] == window["raised"]
        write_figures(
            "resize-regrow",
            {"noresize": noresize(fd), "resizes": 2 * CYCLES, "raised": raiser.raised[:ADDED],
             "arrived": final[:ADDED], "window_raises": window["raised"],
             "window_delivered": window["delivered"], "window_latched": window["latched"],
             "disable_ms_median": median_ms(ioctl_s["disable"]),
             "enable_ms_median": median_ms(ioctl_s["enable"])},
        )  # fmt: skip
