"""The whole path on real kernel parts: a device's interrupt through vfio-pci
into a KVM guest by irqfd, no userspace step, the two ends paired by a Manager.

In the test guest (vfio and kvm families: e1000e and edu behind vfio-pci, and
kvm_amd on TCG's SVM), the kvm plugin's own one-vCPU guest counts what arrives:

- MSI-X: e1000e's 5 vectors, vfio producers (opened as one group, as a VMM
  does on a NORESIZE kernel, or one by one), each paired with a kvm-irqfd
  consumer on an MSI route to its own vector of the x2APIC guest;
- INTx with resample: edu's INTx producer paired with a kvm-irqfd consumer in
  resample mode on a level line of the PIC guest; KVM's resample eventfd is
  vfio-pci's unmask eventfd, so the line is unmasked at the guest's EOI by the
  two kernels alone.

Every raise waits for its interrupt (and e1000e's pacing, tests/guest/e1000e.py),
so none coalesce and every count is exact.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import irqbypass
import pytest
from e1000e import NAMES, VECTORS, E1000e, take_pending
from edu import Edu, device_fd
from irqbypass_kvm import Guest, KvmIrqfdConsumer, MsiRoute
from irqbypass_vfio import VfioProducer
from realdevice import WAIT_S, readable, write_figures

pytestmark = pytest.mark.guest("kvm", "vfio")

E1000E = os.environ.get("IRQBYPASS_TEST_VFIO_E1000E", "")
EDU = os.environ.get("IRQBYPASS_TEST_VFIO_EDU", "")
#: the x2APIC guest's vector for e1000e's vector v
GUEST_VECTORS = tuple(0x41 + v for v in range(VECTORS))
#: raises per vector (TCG runs the KVM guest nested: kept small, each one exact)
ROUNDS = 10
#: how long a check that nothing (more) arrives waits (bounded: it can miss a very late one)
QUIET_S = 0.5
#: the PIC guest's level line for INTx (the ELCR allows it)
LINE = 10


def need(device: str, what: str) -> None:
    if not device:
        pytest.skip(f"no {what}: this runs in the test guest (make guest-test)")


class Arrivals:
    """Per-vector waits on a Guest: its ``on_ack`` hook (the vCPU thread, at
    the guest's acknowledgement, after it counted) wakes the waiters."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self._cond = threading.Condition()
        guest.on_ack = self._acked

    def _acked(self, _acks: int) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait(self, vector: int, n: int, timeout: float = WAIT_S) -> int:
        """The vector's count once it reaches ``n`` (or at the hang guard)."""
        with self._cond:
            self._cond.wait_for(lambda: self.guest.vector_count(vector) >= n, timeout)
        return self.guest.vector_count(vector)


class MsixChain:
    """e1000e's vectors through vfio producers and kvm-irqfd consumers, paired
    by a Manager, into the x2APIC guest (vector v -> GUEST_VECTORS[v])."""

    def __init__(self, stack: ExitStack, guest: Guest, *, grouped: bool, fd: int | None) -> None:
        self.guest = guest
        self.arrivals = Arrivals(guest)
        self.tokens = [stack.enter_context(irqbypass.Eventfd()) for _ in range(VECTORS)]
        where: dict[str, object] = {"device": E1000E} if fd is None else {"device_fd": fd}
        self.producers = [
            VfioProducer(token=t, index="msix", vector=v, name=NAMES[v], **where)  # type: ignore[arg-type]
            for v, t in enumerate(self.tokens)
        ]
        self.consumers = [
            KvmIrqfdConsumer(
                token=t, vm=guest, msi=MsiRoute(0xFEE00000, GUEST_VECTORS[v]), name=f"irqfd{v}"
            )
            for v, t in enumerate(self.tokens)
        ]
        self.mgr = irqbypass.Manager()
        KvmIrqfdConsumer.open_group(self.consumers)
        stack.callback(KvmIrqfdConsumer.close_group, self.consumers)
        if grouped:
            VfioProducer.open_group(self.producers)
            stack.callback(VfioProducer.close_group, self.producers)
        else:
            for p in self.producers:
                p.open()
                stack.callback(p.close)
        stack.callback(self._unregister_all)
        for c, p in zip(self.consumers, self.producers, strict=True):
            self.mgr.register_consumer(c)
            self.mgr.register_producer(p)
            assert c.paired_with == p.name
        device = self.producers[0].fd
        assert device is not None and all(p.fd == device for p in self.producers)
        self.nic = E1000e(device)
        self.nic.setup()
        stack.callback(self.nic.quiet)

    def _unregister_all(self) -> None:
        for c, p in zip(self.consumers, self.producers, strict=True):
            if self.mgr.is_registered(p):
                self.mgr.unregister_producer(p)
            if self.mgr.is_registered(c):
                self.mgr.unregister_consumer(c)

    def fire(self, v: int) -> None:
        """Raise vector v once and wait until the guest counted it on its vector."""
        before = self.guest.vector_count(GUEST_VECTORS[v])
        self.nic.raise_vector(v)
        got = self.arrivals.wait(GUEST_VECTORS[v], before + 1)
        assert got == before + 1, f"vector {v}: {got - before} arrived ({self.guest.error})"
        self.nic.arrived(v)

    def counts(self) -> dict[int, int]:
        return self.guest.vector_counts()

    def settle(self, expected: dict[int, int]) -> dict[int, int]:
        """The guest's counts after a bounded wait for anything more."""
        deadline = time.monotonic() + QUIET_S
        while time.monotonic() < deadline and self.counts() == expected:
            time.sleep(0.01)
        return self.counts()


@contextmanager
def msix_chain(*, grouped: bool = True, fd: int | None = None) -> Iterator[MsixChain]:
    with ExitStack() as stack:
        guest = stack.enter_context(Guest(apic="x2apic"))
        yield MsixChain(stack, guest, grouped=grouped, fd=fd)


def expect(rounds: dict[int, int]) -> dict[int, int]:
    """The guest's counts when e1000e's vector v arrived ``rounds[v]`` times."""
    return {GUEST_VECTORS[v]: n for v, n in rounds.items() if n}


@pytest.mark.parametrize("opened", ["group", "one-by-one"])
def test_every_msix_vector_reaches_its_own_guest_vector_exactly(
    opened: str, no_fd_leak: None
) -> None:
    """ROUNDS raises of each of the 5 vectors, round robin: each arrives once on
    its own guest vector, none on a vector nobody routed, nothing after the last;
    KVM took every eventfd write (the process never reads a token)."""
    need(E1000E, "e1000e device")
    with msix_chain(grouped=opened == "group") as chain:
        t0 = time.monotonic()
        for _ in range(ROUNDS):
            for v in range(VECTORS):
                chain.fire(v)
        elapsed = time.monotonic() - t0
        want = expect(dict.fromkeys(range(VECTORS), ROUNDS))
        assert chain.settle(want) == want
        assert chain.guest.count == ROUNDS * VECTORS
        assert [c.stats()["delivered"] for c in chain.consumers] == [ROUNDS] * VECTORS
        assert all(t.read(timeout=0) == 0 for t in chain.tokens)
        write_figures(
            f"chain-msix-{opened}",
            {"vectors": VECTORS, "raised_per_vector": ROUNDS, "guest_counts": list(want.values()),
             "seconds": round(elapsed, 3)},
        )  # fmt: skip


def test_one_vector_unpaired_repaired_stopped_started_while_the_others_fire(
    no_fd_leak: None,
) -> None:
    """Vector 2's pair is taken apart and put back, and its producer stopped and
    started ("keep": the trigger stays on the token), raised in every state,
    while a thread raises vectors 0, 1, 3 and 4. The irqfd path does not depend
    on the pairing (KVM listens to the token either way): every raise arrives
    exactly once on its own vector, and the others' producers are never
    quiesced by vector 2's changes."""
    need(E1000E, "e1000e device")
    cycles = 5
    with msix_chain() as chain:
        fired = dict.fromkeys((0, 1, 3, 4), 0)
        stop = threading.Event()
        errors: list[BaseException] = []

        def others() -> None:
            try:
                while not stop.is_set():
                    for v in fired:
                        chain.fire(v)
                        fired[v] += 1
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=others, name="others")
        thread.start()
        p2, c2 = chain.producers[2], chain.consumers[2]
        try:
            for _ in range(cycles):
                chain.mgr.unregister_producer(p2)
                assert c2.paired_with is None
                chain.fire(2)  # unpaired
                chain.mgr.register_producer(p2)
                assert c2.paired_with == p2.name
                chain.fire(2)  # paired again
                p2.stop()
                chain.fire(2)  # stopped ("keep": the trigger stays on the token)
                p2.start()
                chain.fire(2)
        finally:
            stop.set()
            thread.join()
        assert not errors, errors
        want = expect({**fired, 2: 4 * cycles})
        assert chain.settle(want) == want
        quiesces = [p.stats()["quiesces"] for p in chain.producers]
        assert quiesces[:2] + quiesces[3:] == [1] * 4, quiesces  # each one pairing only
        write_figures("chain-msix-repair", {"cycles": cycles, "guest_counts": chain.counts()})


def test_nothing_arrives_after_close(no_fd_leak: None) -> None:
    """On a VMM's device fd, which stays open: after close_group (one SET_IRQS
    of -1s; MSI-X stays enabled with nothing attached) a raise of each vector
    reaches neither its token nor the guest within a bounded wait; the device
    holds it, and sends it once when a vector is attached again."""
    need(E1000E, "e1000e device")
    with device_fd(E1000E) as fd, msix_chain(fd=fd) as chain:
        for v in range(VECTORS):
            chain.fire(v)
        want = expect(dict.fromkeys(range(VECTORS), 1))
        chain._unregister_all()
        VfioProducer.close_group(chain.producers)
        assert all(p.attached_to is None for p in chain.producers)
        for v in range(VECTORS):
            chain.nic.raise_vector(v)
            assert not readable(chain.tokens[v].fileno(), QUIET_S), f"vector {v} after close"
            chain.nic.arrived(v)
        assert chain.settle(want) == want
        chain.nic.quiet()
        # not lost either: each vector held its message (masked, in the PBA) and
        # sends it once something is attached again, as a VMM re-attaching finds
        assert take_pending(fd, QUIET_S) == [1] * VECTORS


class HandlerAcks:
    """The PIC guest's handler acknowledges the device before its EOI, as a
    driver does: its ack port (an exit to this process, in the vCPU thread)
    writes edu's ack register, which lowers INTx. :meth:`wait` returns once
    the ``n``-th was written: a raise before that would be acknowledged (and
    lost) by the previous interrupt's handler."""

    def __init__(self, guest: Guest, edu: Edu) -> None:
        self.count = 0
        self._cond = threading.Condition()
        self._edu = edu
        guest.on_ack = self._ack

    def _ack(self, _acks: int) -> None:
        self._edu.ack()
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= n, timeout)


@contextmanager
def intx_chain() -> Iterator[tuple[Guest, VfioProducer, KvmIrqfdConsumer, Edu, HandlerAcks]]:
    """edu's INTx producer and a resample kvm-irqfd consumer on the PIC guest's
    level line, both open, not yet paired; the guest's handler acks the device."""
    with ExitStack() as stack:
        guest = stack.enter_context(Guest(line=LINE, level=True))
        token = stack.enter_context(irqbypass.Eventfd())
        consumer = KvmIrqfdConsumer(token=token, vm=guest, gsi=LINE, resample=True, name="irqfd")
        producer = VfioProducer(token=token, device=EDU, index="intx", name="edu-intx")
        stack.enter_context(consumer)
        stack.enter_context(producer)
        assert producer.fd is not None
        edu = Edu(producer.fd)
        yield guest, producer, consumer, edu, HandlerAcks(guest, edu)


def test_intx_resample_every_raise_once_unmasked_by_the_kernels_alone(no_fd_leak: None) -> None:
    """Unpaired, the first raise arrives and vfio-pci's automask then holds the
    line: a second raise does not arrive (no one unmasks it). Pairing hands
    KVM's resample eventfd to vfio-pci as the unmask eventfd (and the pairing's
    start unmasks once: the held raise arrives). From then on every raise
    arrives exactly once, the line unmasked at each of the guest's EOIs by KVM
    and vfio-pci alone: this process makes no unmask ioctl (the vector's unmask is
    never called) and never reads an eventfd."""
    need(EDU, "edu device")
    n = 20
    with intx_chain() as (guest, producer, consumer, edu, acks):
        unmasks: list[float] = []
        original = producer.interrupt.unmask

        def unmask() -> None:
            unmasks.append(time.monotonic())
            original()

        producer.interrupt.unmask = unmask  # type: ignore[method-assign]
        mgr = irqbypass.Manager()
        mgr.register_consumer(consumer)
        edu.raise_irq()
        assert guest.wait_count(1, WAIT_S) and acks.wait(1), guest.error
        edu.raise_irq()  # automasked, and nothing wired to unmask it
        assert not guest.wait_count(2, QUIET_S) and guest.count == 1
        mgr.register_producer(producer)  # KVM's resamplefd becomes the unmask eventfd
        try:
            assert consumer.paired_with == producer.name
            assert consumer.eoi_eventfd is consumer.resample_eventfd is not None
            assert guest.wait_count(2, WAIT_S) and acks.wait(2), guest.error
            unmasks.clear()
            t0 = time.monotonic()
            for i in range(3, n + 3):
                edu.raise_irq()
                assert guest.wait_count(i, WAIT_S), f"raise {i}: {guest.count} ({guest.error})"
                assert acks.wait(i)
            elapsed = time.monotonic() - t0
            assert not guest.wait_count(n + 3, QUIET_S) and guest.count == n + 2
            assert unmasks == []
            assert guest.acks == acks.count == n + 2
        finally:
            mgr.unregister_producer(producer)
            mgr.unregister_consumer(consumer)
        write_figures(
            "chain-intx-resample",
            {"raised": n + 2, "guest_counted": guest.count, "seconds": round(elapsed, 3)},
        )
