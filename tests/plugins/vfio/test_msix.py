"""Many vectors of one device: one producer per MSI-X vector on one shared
device fd, each vector's trigger set alone, NORESIZE blocks enabled whole, and
the batch (open_group/close_group: one VFIO_DEVICE_SET_IRQS per run of vectors,
all or nothing). On the model (irqbypass_vfio.testing.FakeVfio)."""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass_vfio import VfioProducer, _abi
from irqbypass_vfio._device import VfioDevice
from irqbypass_vfio.testing import PCI_IRQS, PCI_IRQS_NORESIZE_MSIX, FakeVfio

MSIX = _abi.VFIO_PCI_MSIX_IRQ_INDEX
TRIGGER = _abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_TRIGGER
CDEV, GROUP, BDF = "/dev/vfio/devices/vfio0", "/dev/vfio/7", "0000:01:00.0"


def set_irqs(index: int, start: int, *fds: int) -> bytes:
    data = b"".join(struct.pack("=i", fd) for fd in fds)
    return struct.pack("=5I", 20 + len(data), TRIGGER, index, start, len(fds)) + data


def set_irqs_calls(fake: FakeVfio) -> list[bytes | int]:
    return [c.payload for c in fake.calls if c.request == _abi.VFIO_DEVICE_SET_IRQS]


@pytest.fixture
def tokens() -> Iterator[list[irqbypass.Eventfd]]:
    with ExitStack() as stack:
        yield [stack.enter_context(irqbypass.Eventfd()) for _ in range(16)]


def producers(
    fake: FakeVfio, tokens: list[irqbypass.Eventfd], vectors: list[int], **kw: object
) -> list[VfioProducer]:
    kw.setdefault("device", GROUP)
    kw.setdefault("device_name", BDF)
    return [
        VfioProducer(token=tokens[i], seam=fake, index="msix", vector=v, name=f"q{v}", **kw)  # type: ignore[arg-type]
        for i, v in enumerate(vectors)
    ]


def counts(tokens: list[irqbypass.Eventfd]) -> list[int]:
    return [t.read(0) for t in tokens]


@pytest.mark.parametrize("how", ["group", "cdev", "device-fd"])
def test_one_producer_per_vector_on_one_device_fd(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd], how: str
) -> None:
    """16 producers, one per vector: the device is opened once (a group opens
    only once), each vector's trigger is set alone (start = that vector,
    count 1), every vector counts exactly its own interrupts, and the device
    is closed only when the last producer closes."""
    fake = FakeVfio()
    handed = None
    if how == "device-fd":
        handed = fake.open(CDEV, os.O_RDWR)
        bind = bytearray(struct.pack("=IIiI", 16, 0, fake.open("/dev/iommu", 0), 0))
        fake.ioctl(handed, _abi.VFIO_DEVICE_BIND_IOMMUFD, bind)
        del fake.calls[:], fake.opened[:]
    where: dict[str, object] = {
        "group": {"device": GROUP, "device_name": BDF},
        "cdev": {"device": CDEV, "device_name": None},
        "device-fd": {"device": None, "device_name": None, "device_fd": handed},
    }[how]  # type: ignore[assignment]
    ps = producers(fake, tokens, list(range(16)), **where)  # type: ignore[arg-type]
    for p in ps:
        p.open()
    opened = {"group": [GROUP, "/dev/vfio/vfio", f"{GROUP}:{BDF}"], "cdev": [CDEV, "/dev/iommu"]}
    assert fake.opened == opened.get(how, [])
    assert len({p.fd for p in ps}) == 1
    assert set_irqs_calls(fake) == [set_irqs(MSIX, v, tokens[v].fileno()) for v in range(16)]
    names = [c.name for c in fake.calls]
    assert names.count("VFIO_DEVICE_GET_IRQ_INFO") == 1  # asked once for the device
    for v in range(16):
        assert fake.fire(MSIX, v, n=v + 1) == v + 1
    assert counts(tokens) == [v + 1 for v in range(16)]
    for p in ps[::2]:
        p.close()
    assert fake.closed == []  # the other vectors still use the device
    assert fake.fire(MSIX, 1) == 1 and fake.fire(MSIX, 0) == 0
    assert counts(tokens)[:2] == [0, 1]
    for p in ps[1::2]:
        p.close()
    if how == "device-fd":
        assert fake.closed == []  # a VMM's fd is never closed
        for fd in list(fake.open_fds):
            fake.close(fd)
    else:
        assert len(fake.closed) == len(opened[how])
    assert fake.open_fds == []
    assert all(fake.trigger_of(MSIX, v) is None for v in range(16))


def test_a_second_producer_on_one_vector_is_refused(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd]
) -> None:
    fake = FakeVfio()
    first, second = producers(fake, tokens, [4, 4])
    with first:
        with pytest.raises(irqbypass.DeviceError) as err:
            second.open()
        assert err.value.errno == errno.EBUSY
        assert "msix vector 4 of this device is already attached by producer 'q4'" in str(err.value)
        assert fake.trigger_of(MSIX, 4) == tokens[0].fileno()  # the first keeps its own
        assert fake.closed == []
    assert fake.open_fds == []
    with second:  # free again once the first closed
        assert fake.trigger_of(MSIX, 4) == tokens[1].fileno()


@pytest.mark.parametrize("quiesce", ["swap", "keep"])
def test_stop_start_of_one_vector_leaves_the_others_alone(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd], quiesce: str
) -> None:
    """Vector 2 stopped and started while 0, 1 and 3 fire: only vector 2's
    trigger moves (every SET_IRQS has start 2, count 1), and every interrupt
    is counted once on its own token."""
    fake = FakeVfio()
    ps = producers(fake, tokens, [0, 1, 2, 3], msi_quiesce=quiesce)
    with ExitStack() as stack:
        for p in ps:
            stack.enter_context(p)
        del fake.calls[:]
        for _ in range(3):
            ps[2].stop()
            for v in (0, 1, 2, 3):
                fake.fire(MSIX, v)
            for v in (0, 1, 3):
                assert fake.trigger_of(MSIX, v) == tokens[v].fileno()
            ps[2].start()
            fake.fire(MSIX, 2)
        assert counts(tokens[:4]) == [3, 3, 6, 3]
        moved = set_irqs_calls(fake)
        if quiesce == "keep":
            assert moved == []
        else:
            hold = [struct.unpack_from("=i", m, 20)[0] for m in moved[::2]]  # type: ignore[arg-type]
            assert moved == [
                m
                for h in hold
                for m in (set_irqs(MSIX, 2, h), set_irqs(MSIX, 2, tokens[2].fileno()))
            ]
            assert ps[2].stats()["held"] == ps[2].stats()["replayed"] == 3


def test_a_noresize_index_is_enabled_whole_by_its_first_attach(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd]
) -> None:
    """Linux 6.1's MSI-X (NORESIZE): attaching vector 3 first enables all 16
    vectors in one call (-1 for the others), so vector 9 can be attached
    later alone; attaching 3 alone would have enabled 0..3 and made 9 EINVAL."""
    fake = FakeVfio(irqs=PCI_IRQS_NORESIZE_MSIX)
    three, nine = producers(fake, tokens, [3, 9])
    with three, nine:
        fds = [-1] * 16
        fds[3] = tokens[0].fileno()
        assert set_irqs_calls(fake) == [
            set_irqs(MSIX, 0, *fds),
            set_irqs(MSIX, 9, tokens[1].fileno()),
        ]
        assert fake.enabled_vectors == 16
        assert fake.fire(MSIX, 9) == 1 and fake.fire(MSIX, 3) == 1


def test_a_vmm_fd_is_the_vmms_to_enable(no_fd_leak: None, tokens: list[irqbypass.Eventfd]) -> None:
    """On a handed fd the producer does not know what the VMM enabled: it
    attaches its vector alone, and the kernel's EINVAL beyond a NORESIZE
    block says to open the vectors as a group."""
    fake = FakeVfio(irqs=PCI_IRQS_NORESIZE_MSIX)
    fd = fake.open(CDEV, os.O_RDWR)
    bind = bytearray(struct.pack("=IIiI", 16, 0, fake.open("/dev/iommu", 0), 0))
    fake.ioctl(fd, _abi.VFIO_DEVICE_BIND_IOMMUFD, bind)
    zero, five = producers(fake, tokens, [0, 5], device=None, device_name=None, device_fd=fd)
    with zero:
        with pytest.raises(irqbypass.DeviceError) as err:
            five.open()
        assert err.value.errno == errno.EINVAL and "open the vectors as one group" in str(err.value)
    for f in list(fake.open_fds):
        fake.close(f)


def test_a_host_short_of_vectors_gets_the_block_it_can(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd]
) -> None:
    """The whole block asked, the host gives 6: enabled with 6 (QEMU's retry),
    and a vector beyond them is refused by name, not with the kernel's EINVAL."""
    fake = FakeVfio(irqs=PCI_IRQS_NORESIZE_MSIX, host_vectors={MSIX: 6})
    two, eight = producers(fake, tokens, [2, 8])
    with two:
        assert [len(c) for c in set_irqs_calls(fake)] == [20 + 64, 20 + 24]  # type: ignore[arg-type]
        assert fake.enabled_vectors == 6
        with pytest.raises(irqbypass.DeviceError) as err:
            eight.open()
        assert err.value.errno == errno.ENOSPC
        assert "only 6 msix vectors (0..5)" in str(err.value)


# -- the batch: open_group / close_group --------------------------------------


def test_open_group_attaches_a_run_with_one_call(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd]
) -> None:
    """Vectors 0-5 and 9-11 of one device in one group: two runs, two SET_IRQS
    (vectors 6-8 are not the group's to touch); close_group detaches each run
    with one call; every vector then counts only its own."""
    fake = FakeVfio()
    vectors = [5, 0, 1, 2, 3, 4, 9, 10, 11]
    ps = producers(fake, tokens, vectors)
    with irqbypass.Eventfd() as other:
        VfioProducer.open_group(ps)
        fd_of = {v: tokens[i].fileno() for i, v in enumerate(vectors)}
        assert set_irqs_calls(fake) == [
            set_irqs(MSIX, 0, *(fd_of[v] for v in range(6))),
            set_irqs(MSIX, 9, *(fd_of[v] for v in (9, 10, 11))),
        ]
        assert all(p.attached_to == p.token.fileno() for p in ps)  # type: ignore[attr-defined]
        lone = VfioProducer(token=other, seam=fake, device=GROUP, device_name=BDF, vector=7)
        with lone:  # a vector between the runs, attached alone meanwhile
            for v in range(12):
                fake.fire(MSIX, v, n=2)
            assert [t.read(0) for t in tokens[: len(vectors)]] == [2] * len(vectors)
            assert other.read(0) == 2
            del fake.calls[:]
            VfioProducer.close_group(ps)
            assert set_irqs_calls(fake) == [
                set_irqs(MSIX, 0, *[-1] * 6),
                set_irqs(MSIX, 9, -1, -1, -1),
            ]
            assert fake.trigger_of(MSIX, 7) == other.fileno()  # untouched
            assert fake.closed == []  # the lone producer still holds the device
    assert fake.open_fds == [] and all(p.fd is None for p in ps)


def test_open_group_on_a_noresize_index_enables_the_block_once(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd]
) -> None:
    fake = FakeVfio(irqs=PCI_IRQS_NORESIZE_MSIX)
    ps = producers(fake, tokens, [1, 2, 7])
    VfioProducer.open_group(ps)
    fds = [-1] * 16
    fds[1], fds[2], fds[7] = (t.fileno() for t in tokens[:3])
    assert set_irqs_calls(fake) == [set_irqs(MSIX, 0, *fds)]
    VfioProducer.close_group(ps)
    assert fake.open_fds == []


@pytest.mark.parametrize("noresize", [False, True])
def test_a_refused_vector_is_named_and_none_is_left_attached(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd], noresize: bool
) -> None:
    """The host refuses vector 6 (request_irq): vfio-pci unwinds the run (a
    first enable disables the index again) and does not say which vector; the
    error names it, and nothing of the group stays attached or open."""
    fake = FakeVfio(irqs=PCI_IRQS_NORESIZE_MSIX if noresize else PCI_IRQS)
    fake.refuse_vectors[(MSIX, 6)] = errno.EBUSY
    ps = producers(fake, tokens, list(range(10)))
    with pytest.raises(irqbypass.DeviceError) as err:
        VfioProducer.open_group(ps)
    message = str(err.value)
    assert err.value.errno == errno.EBUSY
    assert message.startswith("vfio producer 'q6'")
    assert "attaching msix vectors 0..9 with one VFIO_DEVICE_SET_IRQS: vector 6:" in message
    assert fake.irq_type is None  # the index is disabled again, as it was
    assert "none of this group's vectors was left attached" in message
    assert all(fake.trigger_of(MSIX, v) is None for v in range(16))
    assert fake.open_fds == [] and all(p.fd is None and p.attached_to is None for p in ps)
    del fake.refuse_vectors[(MSIX, 6)]
    VfioProducer.open_group(ps)  # and the same group opens once the host can
    VfioProducer.close_group(ps)


def test_a_failing_second_run_undoes_the_first(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd]
) -> None:
    fake = FakeVfio()
    fake.refuse_vectors[(MSIX, 9)] = errno.EBUSY
    ps = producers(fake, tokens, [0, 1, 2, 8, 9])
    with pytest.raises(irqbypass.DeviceError, match="vector 9"):
        VfioProducer.open_group(ps)
    assert all(fake.trigger_of(MSIX, v) is None for v in range(16))
    assert fake.open_fds == []


def test_open_group_while_stopped_quiesces_after(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd]
) -> None:
    fake = FakeVfio()
    ps = producers(fake, tokens, [0, 1, 2], msi_quiesce="swap")
    ps[1].stop()
    VfioProducer.open_group(ps)
    assert fake.trigger_of(MSIX, 1) == ps[1].attached_to != tokens[1].fileno()
    fake.fire(MSIX, 1, n=2)
    ps[1].start()
    assert tokens[1].read(0) == 2
    VfioProducer.close_group(ps)
    assert fake.open_fds == []


def test_open_group_refuses_what_is_no_vfio_producer(tokens: list[irqbypass.Eventfd]) -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match="is not a vfio producer"):
        VfioProducer.open_group([object()])  # type: ignore[list-item]


def test_2048_vectors_in_one_call(no_fd_leak: None) -> None:
    fake = FakeVfio(irqs={**PCI_IRQS, MSIX: (_abi.VFIO_IRQ_INFO_EVENTFD, 2048)})
    with ExitStack() as stack:
        tokens = [stack.enter_context(irqbypass.Eventfd()) for _ in range(2048)]
        ps = producers(fake, tokens, list(range(2048)))
        VfioProducer.open_group(ps)
        assert len(set_irqs_calls(fake)) == 1
        assert fake.fire(MSIX, 2047) == 1 and tokens[2047].read(0) == 1
        VfioProducer.close_group(ps)
        assert len(set_irqs_calls(fake)) == 2
    assert fake.open_fds == []


def test_a_batch_takes_its_locks_in_one_global_order(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd]
) -> None:
    """Two batches sharing producers in opposite orders must not each hold a
    lock the other waits for: a batch takes its producers' locks in one global
    order, whatever its own. Here the second producer of that order is held
    elsewhere, and open_group is given the two reversed: it still takes the
    first one first, and waits for the second holding it (taken in batch
    order, it would wait holding nothing, and another batch holding the
    first would deadlock with it). The waits are hang guards."""
    fake = FakeVfio(irqs=PCI_IRQS)
    first, second = sorted(producers(fake, tokens, [0, 1]), key=lambda p: p._lock_order)

    def held_elsewhere(p: VfioProducer) -> bool:
        if p._lock.acquire(blocking=False):
            p._lock.release()
            return False
        return True

    second._lock.acquire()
    opener = threading.Thread(target=VfioProducer.open_group, args=([second, first],))
    try:
        opener.start()
        deadline = time.monotonic() + 30
        while not held_elsewhere(first) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert held_elsewhere(first), "open_group did not take the first lock of the order first"
    finally:
        second._lock.release()
        opener.join(timeout=30)
    assert not opener.is_alive()
    assert first.attached_to is not None and second.attached_to is not None
    VfioProducer.close_group([first, second])
    assert fake.open_fds == []


def held_elsewhere(lock: object) -> bool:
    """Whether a thread other than a fresh one holds ``lock`` (asked from a fresh thread)."""
    free: list[bool] = []

    def probe() -> None:
        got = lock.acquire(blocking=False)  # type: ignore[attr-defined]
        free.append(got)
        if got:
            lock.release()  # type: ignore[attr-defined]

    prober = threading.Thread(target=probe)
    prober.start()
    prober.join()
    return free == [False]


class Alongside:
    """Just before the batch's VfioDevice ``step``, another thread opens
    ``other`` (a vector of the same device, alone): the interleaving two
    threads opening vectors of one device can make. When the batch holds the
    lock there (``lock_of``: the device's), the other open waits for it
    (:meth:`join` after the batch); otherwise it is waited for at once, in the
    batch's window."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        step: str,
        other: VfioProducer,
        lock_of: Callable[[VfioDevice], object] = lambda device: device.lock,
    ) -> None:
        self.other = other
        self.error: list[BaseException] = []
        self.thread: threading.Thread | None = None
        original = getattr(VfioDevice, step)

        def interleaved(device: VfioDevice, *args: object) -> object:
            if self.thread is None:
                self.thread = threading.Thread(target=self.open_other)
                self.thread.start()
                if not held_elsewhere(lock_of(device)):
                    self.thread.join()
            return original(device, *args)

        monkeypatch.setattr(VfioDevice, step, interleaved)

    def open_other(self) -> None:
        try:
            self.other.open()
        except BaseException as exc:  # told to the test
            self.error.append(exc)

    def join(self) -> None:
        assert self.thread is not None, "the batch never reached the step"
        self.thread.join(timeout=60)  # a hang guard
        assert not self.thread.is_alive() and self.error == []


def test_a_batch_attaches_its_own_vectors_when_another_thread_enables_the_block_first(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd], monkeypatch: pytest.MonkeyPatch
) -> None:
    """6.1 (NORESIZE): the batch's vectors 0 and 5 are one run (the first
    attach enables the whole block); another thread enables the block first
    (vector 2 alone). The batch still attaches vectors 0 and 5, not 0 and 1."""
    fake = FakeVfio(irqs=PCI_IRQS_NORESIZE_MSIX)
    zero, five, two = producers(fake, tokens, [0, 5, 2])
    other = Alongside(monkeypatch, "attach_run", two)
    try:
        VfioProducer.open_group([zero, five])
        other.join()
        assert two.attached_to == tokens[2].fileno()
        triggers = [fake.trigger_of(MSIX, v) for v in range(6)]
        assert triggers == [tokens[0].fileno(), None, tokens[2].fileno(), None, None,
                            tokens[1].fileno()]  # fmt: skip
        VfioProducer.close_group([zero, five])
        assert fake.trigger_of(MSIX, 2) == tokens[2].fileno()
    finally:
        VfioProducer.close_group([zero, five, two])
    assert fake.open_fds == []


def test_naming_a_refused_vector_leaves_another_threads_vector_attached(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd], monkeypatch: pytest.MonkeyPatch
) -> None:
    """6.1 (NORESIZE): the batch's first attach (the whole block, vectors 0
    and 1) is refused for vector 1; before its vectors are tried one by one
    to name it, another thread enables the block with vector 5. Naming the
    vector neither detaches vector 5 nor disables the index under it."""
    fake = FakeVfio(irqs=PCI_IRQS_NORESIZE_MSIX)
    fake.refuse_vectors[(MSIX, 1)] = errno.EINVAL
    zero, one, five = producers(fake, tokens, [0, 1, 5])
    other = Alongside(monkeypatch, "name_the_vector", five)
    try:
        with pytest.raises(irqbypass.DeviceError) as err:
            VfioProducer.open_group([zero, one])
        assert "vector 1:" in str(err.value)
        other.join()
        assert five.attached_to == tokens[2].fileno()
        assert fake.trigger_of(MSIX, 5) == tokens[2].fileno(), "vector 5 was detached"
        assert fake.irq_type == MSIX, "the index was disabled under vector 5"
        assert [fake.trigger_of(MSIX, v) for v in (0, 1)] == [None, None]
        assert fake.fire(MSIX, 5) == 1
    finally:
        VfioProducer.close_group([zero, one, five])
    assert fake.open_fds == []


def test_a_vector_opened_as_the_devices_last_closes_opens_it_again(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last producer of a device gives up its share and closes the device
    (a group node opens once); another thread opening a vector of it in
    between opens it again: after the close, not before (EBUSY: "already
    open elsewhere")."""
    fake = FakeVfio()
    zero, one = producers(fake, tokens, [0, 1])
    zero.open()
    other = Alongside(
        monkeypatch, "close", one, lock_of=lambda device: irqbypass.plugin.DeviceGroup._SHARED_LOCK
    )
    zero.close()
    other.join()
    assert one.attached_to == tokens[1].fileno() and fake.trigger_of(MSIX, 1) is not None
    one.close()
    assert fake.open_fds == []


def test_two_devices_of_one_iommu_group_share_the_group_node(
    no_fd_leak: None, tokens: list[irqbypass.Eventfd]
) -> None:
    """Two functions of a multifunction device in one IOMMU group, a vector of
    each: the group node opens once (a second open is EBUSY), so the second
    device is taken from the group the first opened, and the group (then the
    container) is closed after the last device."""
    fake = FakeVfio()
    fake.group_peers = ("0000:01:00.1",)
    first = producers(fake, tokens, [0])[0]
    second = producers(fake, tokens[1:], [1], device_name="0000:01:00.1")[0]
    with first, second:
        assert first.fd != second.fd
        assert fake.opened == [GROUP, "/dev/vfio/vfio", f"{GROUP}:{BDF}", f"{GROUP}:0000:01:00.1"]
        assert fake.trigger_of(MSIX, 0) == tokens[0].fileno()
        assert fake.trigger_of(MSIX, 1) == tokens[1].fileno()
        fds = {file.path: fd for fd, file in fake.files.items()}
        second.close()  # the group stays open for the first
        assert fake.closed == [fds[f"{GROUP}:0000:01:00.1"]]
    assert fake.closed[1:] == [fds[f"{GROUP}:{BDF}"], fds[GROUP], fds["/dev/vfio/vfio"]]
    assert fake.open_fds == []
