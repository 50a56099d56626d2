"""INTx unmasked at the guest's EOI (issue 19 item 4): a vfio INTx producer paired
with a consumer that offers an EOI eventfd (``Consumer.eoi_eventfd``: KVM's
resample eventfd in resample mode) hands it to vfio-pci as INTx's unmask eventfd
(``DATA_EVENTFD | ACTION_UNMASK``), as QEMU does; unpairing takes it back. On the
model, whose ``service_unmask()`` is vfio's virqfd reading that eventfd."""

from __future__ import annotations

import _thread
import errno
import os
import signal
import struct
import threading
from collections.abc import Iterator

import irqbypass
import pytest
from irqbypass_vfio import VfioProducer, _abi
from irqbypass_vfio.testing import FakeVfio

INTX = _abi.VFIO_PCI_INTX_IRQ_INDEX
UNMASK_EVENTFD = _abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_UNMASK
UNMASK = _abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_UNMASK
MASK = _abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_MASK
GROUP, BDF = "/dev/vfio/7", "0000:01:00.0"


def set_irqs(flags: int, *fds: int) -> bytes:
    data = b"".join(struct.pack("=i", fd) for fd in fds)
    count = len(fds) or 1
    return struct.pack("=5I", 20 + len(data), flags, INTX, 0, count) + data


class EoiConsumer(irqbypass.Consumer):
    """A consumer that offers an EOI eventfd (a stand-in for KVM's resamplefd)."""

    def __init__(self, token: irqbypass.Eventfd, eoi: irqbypass.Eventfd | None) -> None:
        super().__init__(token=token, name="eoi")
        self.eoi = eoi

    @property
    def eoi_eventfd(self) -> irqbypass.Eventfd | None:
        return self.eoi

    def add_producer(self, producer: irqbypass.Producer) -> None:
        pass

    def del_producer(self, producer: irqbypass.Producer) -> None:
        pass


@pytest.fixture
def eoi() -> Iterator[irqbypass.Eventfd]:
    with irqbypass.Eventfd() as eventfd:
        yield eventfd


def intx(token: irqbypass.Eventfd, fake: FakeVfio) -> VfioProducer:
    return VfioProducer(
        token=token, seam=fake, device=GROUP, device_name=BDF, index="intx", name="line"
    )


def paired(
    token: irqbypass.Eventfd, eoi: irqbypass.Eventfd, fake: FakeVfio
) -> tuple[irqbypass.Manager, VfioProducer, EoiConsumer]:
    """An INTx producer registered, not opened, with a consumer offering ``eoi``."""
    mgr = irqbypass.Manager()
    p, consumer = intx(token, fake), EoiConsumer(token, eoi)
    mgr.register_consumer(consumer)
    mgr.register_producer(p)
    return mgr, p, consumer


def unmask_calls(fake: FakeVfio) -> list[bytes | int]:
    return [
        c.payload
        for c in fake.calls
        if c.request == _abi.VFIO_DEVICE_SET_IRQS
        and struct.unpack_from("=I", c.payload, 4)[0] & _abi.VFIO_IRQ_SET_ACTION_UNMASK  # type: ignore[arg-type]
    ]


def test_pairing_wires_the_eoi_eventfd_and_unpairing_takes_it_back(
    no_fd_leak: None, token: irqbypass.Eventfd, eoi: irqbypass.Eventfd
) -> None:
    """Each INTx is delivered, the guest's EOI (a write to the eventfd) unmasks
    the line in the kernel, and the next arrives: 5 of 5, with no unmask ioctl
    after the pairing's own start. Without an EOI the next one waits."""
    fake = FakeVfio()
    mgr = irqbypass.Manager()
    p, consumer = intx(token, fake), EoiConsumer(token, eoi)
    with p:
        mgr.register_consumer(consumer)
        mgr.register_producer(p)  # stop (mask), add (wire), start (unmask)
        assert fake.unmask_eventfd() == eoi.fileno()
        assert unmask_calls(fake) == [set_irqs(UNMASK_EVENTFD, eoi.fileno()), set_irqs(UNMASK)]
        del fake.calls[:]
        assert fake.fire(INTX) == 1  # automasked after it
        assert fake.fire(INTX) == 0  # masked until the EOI: pending
        delivered = token.read(0)
        for _ in range(5):
            eoi.write(1)  # what KVM does at the guest's EOI
            assert fake.service_unmask()  # vfio's virqfd: read it, unmask
            assert fake.intx_masked  # the pending one (then each new one) automasked again
            delivered += token.read(0)
            assert fake.fire(INTX) == 0  # and the next waits for the next EOI
        assert delivered == 6
        assert not fake.service_unmask()  # no EOI, no unmask
        assert unmask_calls(fake) == []  # no userspace unmask
        mgr.unregister_producer(p)  # stop, del (take back), start
        assert fake.unmask_eventfd() is None
        assert unmask_calls(fake) == [set_irqs(UNMASK_EVENTFD, -1), set_irqs(UNMASK)]
        assert token.read(0) == 1  # the pending one, delivered by the start's unmask
        mgr.unregister_consumer(consumer)
    assert fake.open_fds == []


def test_a_producer_opened_while_paired_wires_at_open_and_close_takes_it_back(
    no_fd_leak: None, token: irqbypass.Eventfd, eoi: irqbypass.Eventfd
) -> None:
    fake = FakeVfio()
    mgr, p, consumer = paired(token, eoi, fake)  # not open: nothing to wire yet
    assert fake.calls == []
    p.open()
    assert fake.unmask_eventfd() == eoi.fileno()
    fd = p.fd
    del fake.calls[:]
    p.close()  # still paired: the unmask eventfd is taken back before the device closes
    assert [c.payload for c in fake.calls if c.fd == fd][:2] == [
        set_irqs(_abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_TRIGGER, -1),
        set_irqs(UNMASK_EVENTFD, -1),
    ]
    assert fake.open_fds == []
    mgr.unregister_producer(p)
    mgr.unregister_consumer(consumer)


@pytest.mark.parametrize("index", ["msi", "msix"])
def test_only_intx_wires_an_unmask(
    no_fd_leak: None, token: irqbypass.Eventfd, eoi: irqbypass.Eventfd, index: str
) -> None:
    fake = FakeVfio()
    mgr = irqbypass.Manager()
    p = VfioProducer(token=token, seam=fake, device=GROUP, device_name=BDF, index=index)
    consumer = EoiConsumer(token, eoi)
    with p:
        mgr.register_consumer(consumer)
        mgr.register_producer(p)
        assert unmask_calls(fake) == [] and fake.unmask_eventfd() is None
        mgr.unregister_producer(p)
        mgr.unregister_consumer(consumer)


def test_a_consumer_without_an_eoi_eventfd_changes_nothing(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    fake = FakeVfio()
    mgr = irqbypass.Manager()
    p, consumer = intx(token, fake), EoiConsumer(token, None)
    with p:
        mgr.register_consumer(consumer)
        mgr.register_producer(p)
        assert unmask_calls(fake) == [set_irqs(UNMASK)]  # the pairing's start only
        mgr.unregister_producer(p)
        mgr.unregister_consumer(consumer)


def test_an_unmask_eventfd_the_vmm_set_is_refused_by_the_kernel(
    no_fd_leak: None, token: irqbypass.Eventfd, eoi: irqbypass.Eventfd
) -> None:
    """vfio_virqfd_enable takes one unmask eventfd at a time: EBUSY, named,
    and the pairing is refused (the manager undoes it)."""
    fake = FakeVfio()
    mgr = irqbypass.Manager()
    with irqbypass.Eventfd() as vmm, intx(token, fake) as p:
        assert p.fd is not None
        fake.ioctl(
            p.fd, _abi.VFIO_DEVICE_SET_IRQS, bytearray(set_irqs(UNMASK_EVENTFD, vmm.fileno()))
        )
        consumer = EoiConsumer(token, eoi)
        mgr.register_consumer(consumer)
        with pytest.raises(irqbypass.IrqBypassError) as err:
            mgr.register_producer(p)
        assert "INTx already has an unmask eventfd" in str(err.value)
        assert getattr(err.value, "errno", None) in (errno.EBUSY, None)
        assert fake.unmask_eventfd() == vmm.fileno()
        mgr.unregister_consumer(consumer)
        fake.ioctl(p.fd, _abi.VFIO_DEVICE_SET_IRQS, bytearray(set_irqs(UNMASK_EVENTFD, -1)))


def test_the_kvm_consumer_offers_its_resample_eventfd(
    token: irqbypass.Eventfd, eoi: irqbypass.Eventfd
) -> None:
    """The real pairing's other half, without /dev/kvm: a kvm-irqfd consumer in
    resample mode offers its resample eventfd; otherwise none."""
    kvm = pytest.importorskip("irqbypass_kvm")
    resample = kvm.KvmIrqfdConsumer(token=token, gsi=5, resample=True, resample_eventfd=eoi)
    assert resample.eoi_eventfd is eoi
    assert kvm.KvmIrqfdConsumer(token=token, gsi=5).eoi_eventfd is None
    fake = FakeVfio()
    mgr = irqbypass.Manager()
    with intx(token, fake) as p:
        mgr.register_consumer(resample)  # not opened: pairing needs no KVM
        mgr.register_producer(p)
        assert fake.unmask_eventfd() == eoi.fileno()
        mgr.unregister_producer(p)
        assert fake.unmask_eventfd() is None
        mgr.unregister_consumer(resample)
    assert os.get_blocking(eoi.fileno()) is False


def vmm_intx(fake: FakeVfio, trigger: irqbypass.Eventfd) -> int:
    """A VMM's device fd (cdev, bound) whose INTx it enabled, with an unmask eventfd of its own."""
    fd = fake.open("/dev/vfio/devices/vfio0", os.O_RDWR)
    bind = bytearray(struct.pack("=IIiI", 16, 0, fake.open("/dev/iommu", 0), 0))
    fake.ioctl(fd, _abi.VFIO_DEVICE_BIND_IOMMUFD, bind)
    for flags in (
        _abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_TRIGGER,
        UNMASK_EVENTFD,
    ):
        fake.ioctl(fd, _abi.VFIO_DEVICE_SET_IRQS, bytearray(set_irqs(flags, trigger.fileno())))
    return fd


@pytest.mark.parametrize("how", ["open", "open_group"])
def test_an_open_whose_unmask_is_refused_leaves_no_trigger_on_the_vmms_fd(
    no_fd_leak: None, token: irqbypass.Eventfd, eoi: irqbypass.Eventfd, how: str
) -> None:
    """Opened while paired, the producer attaches the token, then hands over the
    EOI eventfd: vfio-pci refuses it (EBUSY, the VMM set one), and the open
    fails all or nothing: the VMM's device does not keep signalling the token."""
    fake = FakeVfio()
    mgr = irqbypass.Manager()
    with irqbypass.Eventfd() as vmm:
        fd = vmm_intx(fake, vmm)
        p = VfioProducer(token=token, seam=fake, device_fd=fd, index="intx", name="line")
        consumer = EoiConsumer(token, eoi)
        mgr.register_consumer(consumer)
        mgr.register_producer(p)  # not open: nothing to wire yet
        with pytest.raises(irqbypass.DeviceError) as err:
            p.open() if how == "open" else VfioProducer.open_group([p])
        assert err.value.errno == errno.EBUSY and "already has an unmask eventfd" in str(err.value)
        assert p.fd is None and p.attached_to is None
        assert fake.trigger_of(INTX, 0) is None, "the token is still the line's trigger"
        assert fake.unmask_eventfd() == vmm.fileno()  # the VMM's, untouched
        mgr.unregister_producer(p)
        mgr.unregister_consumer(consumer)
        fake.ioctl(fd, _abi.VFIO_DEVICE_SET_IRQS, bytearray(set_irqs(UNMASK_EVENTFD, -1)))
        for f in list(fake.open_fds):
            fake.close(f)


def test_a_group_opened_while_paired_wires_the_eoi_eventfd_as_open_does(
    no_fd_leak: None, token: irqbypass.Eventfd, eoi: irqbypass.Eventfd
) -> None:
    fake = FakeVfio()
    mgr, p, consumer = paired(token, eoi, fake)
    VfioProducer.open_group([p])
    assert fake.unmask_eventfd() == eoi.fileno()
    assert fake.fire(INTX) == 1
    eoi.write(1)  # the guest's EOI unmasks the line without a userspace step
    assert fake.service_unmask() and fake.fire(INTX) == 1
    assert token.read(0) == 2
    VfioProducer.close_group([p])  # still paired: taken back before the device closes
    assert fake.unmask_eventfd() is None and fake.open_fds == []
    mgr.unregister_producer(p)
    mgr.unregister_consumer(consumer)


class CutVfio(FakeVfio):
    """A Ctrl-C arrives as the SET_IRQS of INTx's unmask eventfd (fd ``cut_fd``:
    the EOI, or -1 to take it back) begins or as vfio-pci has done it (``when``)."""

    cut_fd: int | None = None
    when = "after"

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        cut = self._cut(request, arg)
        if cut and self.when == "before":
            _thread.interrupt_main()  # handled as the call below begins
        result = super().ioctl(fd, request, arg)
        if cut and self.when == "after":
            _thread.interrupt_main()  # handled as this call returns
        return result

    def _cut(self, request: int, arg: bytearray | int) -> bool:
        if request != _abi.VFIO_DEVICE_SET_IRQS or not isinstance(arg, bytearray) or len(arg) < 24:
            return False
        flags, fd = struct.unpack_from("=I", arg, 4)[0], struct.unpack_from("=i", arg, 20)[0]
        if flags != UNMASK_EVENTFD or fd != self.cut_fd:
            return False
        self.cut_fd = None  # once
        return True


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", ["pairing", "unpairing"])
def test_a_ctrl_c_as_the_unmask_eventfd_is_handed_over_leaves_the_record_true(
    no_fd_leak: None,
    guarded_sigint: None,
    token: irqbypass.Eventfd,
    eoi: irqbypass.Eventfd,
    step: str,
    when: str,
) -> None:
    """Whenever a Ctrl-C lands in the pairing's wiring (or the unpairing's
    taking back), the producer's record of INTx's unmask eventfd is what
    vfio-pci holds, so close() takes back what is there: on a VMM's fd, which
    the producer does not close, none is left to refuse the next pairing."""
    fake = CutVfio()
    mgr = irqbypass.Manager()
    with irqbypass.Eventfd() as vmm:
        fd = vmm_intx(fake, vmm)
        fake.ioctl(fd, _abi.VFIO_DEVICE_SET_IRQS, bytearray(set_irqs(UNMASK_EVENTFD, -1)))
        p = VfioProducer(token=token, seam=fake, device_fd=fd, index="intx", name="line")
        consumer = EoiConsumer(token, eoi)
        p.open()
        mgr.register_consumer(consumer)
        fake.when, fake.cut_fd = when, eoi.fileno() if step == "pairing" else -1
        with pytest.raises(KeyboardInterrupt):
            mgr.register_producer(p)
            mgr.unregister_producer(p)
        assert fake.cut_fd is None, "the Ctrl-C was never sent"
        recorded = p.interrupt.unmask_eventfd
        assert fake.unmask_eventfd() == (None if recorded is None else recorded.fileno())
        p.close()
        assert fake.unmask_eventfd() is None, "the producer left its unmask eventfd on the VMM's fd"
        if mgr.is_registered(p):
            mgr.unregister_producer(p)
        mgr.unregister_consumer(consumer)
        for f in list(fake.open_fds):
            fake.close(f)


class HangingConsumer(EoiConsumer):
    """A consumer whose ``eoi_eventfd`` hangs (a partner's code: another
    plugin's), until a Ctrl-C cuts it or the hang guard lets it go."""

    def __init__(self, token: irqbypass.Eventfd, eoi: irqbypass.Eventfd) -> None:
        super().__init__(token, eoi)
        self.entered = threading.Event()
        self.never = threading.Event()
        self.cut = False

    @property
    def eoi_eventfd(self) -> irqbypass.Eventfd | None:
        if not self.entered.is_set():  # the pairing's own read does not hang
            return self.eoi
        try:
            self.never.wait(10)  # the hang guard
        except KeyboardInterrupt:
            self.cut = True
            raise
        return self.eoi


@pytest.mark.parametrize("how", ["open", "open_group"])
def test_a_ctrl_c_ends_a_partner_hanging_in_the_open(
    no_fd_leak: None, guarded_sigint: None, token: irqbypass.Eventfd, eoi: irqbypass.Eventfd,
    how: str,
) -> None:  # fmt: skip
    """Opened while paired, the producer reads the consumer's EOI eventfd: a
    partner's code, which a Ctrl-C must be able to end (it is called out of
    the open's signal-safe section); the open is then undone."""
    fake = FakeVfio()
    mgr = irqbypass.Manager()
    p, consumer = intx(token, fake), HangingConsumer(token, eoi)
    mgr.register_consumer(consumer)
    mgr.register_producer(p)
    consumer.entered.set()
    main = threading.main_thread().ident
    assert main is not None
    interrupter = threading.Thread(target=signal.pthread_kill, args=(main, signal.SIGINT))
    original = consumer.never.wait

    def wait(timeout: float | None = None) -> bool:
        interrupter.start()  # the Ctrl-C, once the partner hangs
        return original(timeout)

    consumer.never.wait = wait  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            p.open() if how == "open" else VfioProducer.open_group([p])
    finally:
        interrupter.join()
    assert consumer.cut, "the Ctrl-C waited for the partner's hang guard"
    assert p.fd is None and fake.trigger_of(INTX, 0) is None and fake.open_fds == []
    mgr.unregister_producer(p)
    mgr.unregister_consumer(consumer)
