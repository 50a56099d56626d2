"""The vfio producer through the seam: exact ioctl sequences and payload bytes,
lossless quiesce, pairing through a real Manager, and every refusal.

The device is irqbypass_vfio.testing.FakeVfio, a model of vfio-pci as vfio.h
documents it; "the device fires" writes whichever eventfd the last recorded
VFIO_DEVICE_SET_IRQS attached to the vector.
"""

from __future__ import annotations

import errno
import os
import resource
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import irqbypass
import pytest
from irqbypass_vfio import VfioProducer, _abi
from irqbypass_vfio.testing import FakeVfio

MSIX, INTX = _abi.VFIO_PCI_MSIX_IRQ_INDEX, _abi.VFIO_PCI_INTX_IRQ_INDEX
MSI = _abi.VFIO_PCI_MSI_IRQ_INDEX
TRIGGER_EVENTFD = _abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_TRIGGER
MASK = _abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_MASK
UNMASK = _abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_UNMASK
CDEV, GROUP, BDF = "/dev/vfio/devices/vfio0", "/dev/vfio/7", "0000:01:00.0"


def set_irqs(flags: int, index: int, start: int, *fds: int) -> bytes:
    """The exact bytes of a one-vector VFIO_DEVICE_SET_IRQS."""
    data = b"".join(struct.pack("=i", fd) for fd in fds)
    return struct.pack("=5I", 20 + len(data), flags, index, start, 1) + data


def set_block(flags: int, index: int, start: int, *fds: int) -> bytes:
    """The exact bytes of a VFIO_DEVICE_SET_IRQS for vectors start..start+len(fds)-1."""
    data = b"".join(struct.pack("=i", fd) for fd in fds)
    return struct.pack("=5I", 20 + len(data), flags, index, start, len(fds)) + data


def irq_info(index: int) -> bytes:
    return struct.pack("=4I", 16, 0, index, 0)


DEVICE_INFO = struct.pack("=5I", 20, 0, 0, 0, 0)


@pytest.fixture
def fake() -> Iterator[FakeVfio]:
    device = FakeVfio()
    yield device
    assert device.open_fds == [], "the model still has fds open"


def producer(token: irqbypass.Eventfd, fake: FakeVfio, **kw: object) -> VfioProducer:
    """A producer on the model; MSI/MSI-X quiesce by swapping unless a test says
    otherwise (the sequences below are the swap's; "keep" is tested on its own)."""
    kw.setdefault("device", CDEV)
    kw.setdefault("msi_quiesce", "swap")
    return VfioProducer(token=token, seam=fake, name="nic", **kw)  # type: ignore[arg-type]


def set_irqs_payloads(fake: FakeVfio) -> list[bytes | int]:
    return [c.payload for c in fake.calls if c.request == _abi.VFIO_DEVICE_SET_IRQS]


# -- attach and detach: the exact sequences ----------------------------------------


def test_cdev_attach_and_detach_sequence(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    p = producer(token, fake, index="msix", vector=3)
    p.open()
    dev, iommufd = p.fd, fake.open_fds[-1]
    assert fake.opened == [CDEV, "/dev/iommu"]
    assert [(c.fd, c.name, c.payload) for c in fake.calls] == [
        (dev, "VFIO_DEVICE_BIND_IOMMUFD", struct.pack("=IIiI", 16, 0, iommufd, 0)),
        (dev, "VFIO_DEVICE_GET_INFO", DEVICE_INFO),
        (dev, "VFIO_DEVICE_GET_IRQ_INFO", irq_info(MSIX)),
        (dev, "VFIO_DEVICE_SET_IRQS", set_irqs(TRIGGER_EVENTFD, MSIX, 3, token.fileno())),
    ]
    assert fake.trigger_of(MSIX, 3) == token.fileno() == p.attached_to
    assert p.mode == "cdev" and p.devid == 1
    assert p.irq_info is not None and p.irq_info.count == 16 and p.irq_info.eventfd
    assert not p.irq_info.maskable and not p.irq_info.noresize
    del fake.calls[:]
    p.close()
    assert [(c.fd, c.payload) for c in fake.calls] == [
        (dev, set_irqs(TRIGGER_EVENTFD, MSIX, 3, -1))
    ]
    assert fake.closed == [dev, iommufd]  # the device before its iommufd
    assert fake.trigger_of(MSIX, 3) is None and p.fd is None


def test_group_attach_sets_up_the_container(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    p = producer(token, fake, device=GROUP, device_name=BDF, index="msi", vector=1)
    p.open()
    group, container = fake.open_fds[0], fake.open_fds[1]
    assert fake.opened == [GROUP, "/dev/vfio/vfio", f"{GROUP}:{BDF}"]
    assert [(c.fd, c.name, c.payload) for c in fake.calls] == [
        (group, "VFIO_GROUP_GET_STATUS", struct.pack("=II", 8, 0)),
        (container, "VFIO_GET_API_VERSION", 0),
        (group, "VFIO_GROUP_SET_CONTAINER", struct.pack("=i", container)),
        (container, "VFIO_CHECK_EXTENSION", _abi.VFIO_TYPE1v2_IOMMU),
        (container, "VFIO_SET_IOMMU", _abi.VFIO_TYPE1v2_IOMMU),
        (group, "VFIO_GROUP_GET_DEVICE_FD", BDF.encode() + b"\0"),
        (p.fd, "VFIO_DEVICE_GET_INFO", DEVICE_INFO),
        (p.fd, "VFIO_DEVICE_GET_IRQ_INFO", irq_info(_abi.VFIO_PCI_MSI_IRQ_INDEX)),
        (
            p.fd,
            "VFIO_DEVICE_SET_IRQS",
            # MSI is NORESIZE: the first attach enables its whole block of 8
            set_block(TRIGGER_EVENTFD, MSI, 0, -1, token.fileno(), *[-1] * 6),
        ),
    ]
    dev = p.fd
    p.close()
    assert fake.closed == [dev, group, container]


def test_handed_fd_owns_nothing(no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio) -> None:
    vmm_fd = fake.open(CDEV, os.O_RDWR)  # the VMM opened and bound it
    bind = bytearray(struct.pack("=IIiI", 16, 0, fake.open("/dev/iommu", 0), 0))
    fake.ioctl(vmm_fd, _abi.VFIO_DEVICE_BIND_IOMMUFD, bind)
    del fake.calls[:], fake.opened[:]
    p = VfioProducer(token=token, device_fd=vmm_fd, index="msix", vector=0, seam=fake)
    with p:
        assert p.mode == "fd" and p.fd == vmm_fd
    assert fake.opened == [] and fake.closed == []
    assert [c.name for c in fake.calls] == [
        "VFIO_DEVICE_GET_INFO",
        "VFIO_DEVICE_GET_IRQ_INFO",
        "VFIO_DEVICE_SET_IRQS",
        "VFIO_DEVICE_SET_IRQS",
    ]
    assert fake.calls[-1].payload == set_irqs(TRIGGER_EVENTFD, MSIX, 0, -1)
    for fd in list(fake.open_fds):
        fake.close(fd)


def test_bdf_resolves_to_the_cdev_or_the_group(
    no_fd_leak: None, token: irqbypass.Eventfd, tmp_path: Path
) -> None:
    dev = tmp_path / "bus/pci/devices" / BDF
    (dev / "vfio-dev/vfio0").mkdir(parents=True)
    (dev / "vfio-dev/vfio0/dev").write_text("511:0\n")  # a cdev has a device number
    (tmp_path / "bus/pci/drivers/vfio-pci").mkdir(parents=True)
    (dev / "driver").symlink_to(tmp_path / "bus/pci/drivers/vfio-pci")
    fake = FakeVfio(sysfs_root=str(tmp_path))
    with producer(token, fake, device=BDF) as p:
        assert p.mode == "cdev"
    assert fake.opened == [CDEV, "/dev/iommu"]
    (dev / "vfio-dev/vfio0/dev").unlink()
    (dev / "vfio-dev/vfio0").rmdir()
    (tmp_path / "kernel/iommu_groups/7").mkdir(parents=True)
    (dev / "iommu_group").symlink_to(tmp_path / "kernel/iommu_groups/7")
    fake = FakeVfio(sysfs_root=str(tmp_path))
    with producer(token, fake, device=BDF) as p:
        assert p.mode == "group" and p.device_name == BDF
    assert fake.opened[0] == GROUP


def test_bdf_on_a_kernel_without_the_vfio_cdev_opens_the_group(
    no_fd_leak: None, token: irqbypass.Eventfd, tmp_path: Path
) -> None:
    """Linux 6.1-6.5 have /sys/bus/pci/devices/<bdf>/vfio-dev/vfioN but no
    /dev/vfio/devices/vfioN (no device number): found on vfio-pci in the guest."""
    dev = tmp_path / "bus/pci/devices" / BDF
    (dev / "vfio-dev/vfio0").mkdir(parents=True)
    (tmp_path / "bus/pci/drivers/vfio-pci").mkdir(parents=True)
    (dev / "driver").symlink_to(tmp_path / "bus/pci/drivers/vfio-pci")
    (tmp_path / "kernel/iommu_groups/7").mkdir(parents=True)
    (dev / "iommu_group").symlink_to(tmp_path / "kernel/iommu_groups/7")
    fake = FakeVfio(sysfs_root=str(tmp_path), cdev_path="/dev/vfio/devices/absent")
    with producer(token, fake, device=BDF) as p:
        assert p.mode == "group" and p.device_name == BDF
    assert fake.opened[0] == GROUP


def test_bdf_not_bound_to_vfio_says_how_to_bind(token: irqbypass.Eventfd, tmp_path: Path) -> None:
    dev = tmp_path / "bus/pci/devices" / BDF
    dev.mkdir(parents=True)
    (tmp_path / "drivers/e1000e").mkdir(parents=True)
    (dev / "driver").symlink_to(tmp_path / "drivers/e1000e")
    fake = FakeVfio(sysfs_root=str(tmp_path))
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device=BDF).open()
    assert err.value.errno == errno.ENODEV
    assert "bound to e1000e" in str(err.value)
    assert f"echo vfio-pci > /sys/bus/pci/devices/{BDF}/driver_override" in str(err.value)
    with pytest.raises(irqbypass.DeviceError, match=r"there is no PCI device 0000:02:00\.0"):
        producer(token, fake, device="0000:02:00.0").open()
    assert fake.opened == []


# -- quiesce: exact sequences -------------------------------------------------------


def test_msix_stop_start_swaps_to_a_holding_eventfd(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    with producer(token, fake, index="msix", vector=5) as p:
        del fake.calls[:]
        p.stop()
        hold = p.attached_to
        assert hold is not None and hold != token.fileno()
        assert fake.trigger_of(MSIX, 5) == hold
        p.start()
        assert fake.trigger_of(MSIX, 5) == token.fileno()
        assert set_irqs_payloads(fake) == [
            set_irqs(TRIGGER_EVENTFD, MSIX, 5, hold),
            set_irqs(TRIGGER_EVENTFD, MSIX, 5, token.fileno()),
        ]
        assert p.quiesce == "swap"


def test_the_default_msi_quiesce_is_keep(token: irqbypass.Eventfd, fake: FakeVfio) -> None:
    """The least lossy on the real driver (swap loses MSIs: docs/testing.md)."""
    p = VfioProducer(token=token, seam=fake, device=CDEV, index="msix")
    assert p.msi_quiesce == p.quiesce == VfioProducer.DEFAULT_MSI_QUIESCE == "keep"


def test_msi_keep_quiesce_leaves_the_trigger_on_the_token(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    """msi_quiesce="keep": no SET_IRQS on stop or start (vfio-pci would free and
    request the host IRQ, losing an MSI in between); the token's counter keeps
    what arrives meanwhile."""
    with producer(token, fake, index="msi", msi_quiesce="keep") as p:
        del fake.calls[:]
        p.stop()
        assert p.attached_to == token.fileno() == fake.trigger_of(MSI, 0)
        fake.fire(MSI, 0)
        p.start()
        assert set_irqs_payloads(fake) == []
        assert token.read(0) == 1
        assert p.quiesce == "keep" and p.stats()["quiesces"] == 1
    with pytest.raises(irqbypass.InvalidEndpointError, match="msi_quiesce 'mask' is not one of"):
        producer(token, fake, msi_quiesce="mask")


def test_intx_stop_start_masks_and_unmasks(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    with producer(token, fake, index="intx") as p:
        del fake.calls[:]
        p.stop()
        assert fake.intx_masked
        p.start()
        assert not fake.intx_masked
        assert set_irqs_payloads(fake) == [set_irqs(MASK, INTX, 0), set_irqs(UNMASK, INTX, 0)]
        assert fake.trigger_of(INTX, 0) == token.fileno()  # never swapped
        assert p.quiesce == "mask"


def test_close_while_stopped_restores_and_replays(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    p = producer(token, fake, index="msix", vector=2)
    p.open()
    p.stop()
    fake.fire(MSIX, 2, 4)
    p.close()
    assert token.read(0) == 4  # held interrupts are not dropped by close
    assert fake.calls[-1].payload == set_irqs(TRIGGER_EVENTFD, MSIX, 2, -1)
    q = producer(token, fake, index="intx")
    q.open()
    q.stop()
    q.close()
    assert [c.payload for c in fake.calls[-2:]] == [
        set_irqs(TRIGGER_EVENTFD, INTX, 0, -1),
        set_irqs(UNMASK, INTX, 0),
    ]


def test_open_while_stopped_quiesces_at_once(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    p = producer(token, fake, index="msix", vector=1)
    p.stop()
    with p:
        assert fake.trigger_of(MSIX, 1) not in (None, token.fileno())
        fake.fire(MSIX, 1, 2)
        assert token.read(0) == 0
        p.start()
        assert token.read(0) == 2


# -- lossless quiesce -----------------------------------------------------------


@pytest.mark.parametrize("vector", [0, 15])
def test_msix_interrupts_fired_while_stopped_all_arrive_once(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio, vector: int
) -> None:
    with producer(token, fake, index="msix", vector=vector) as p:
        delivered = fired = 0
        for cycle, burst in enumerate([1, 7, 0, 300, 2]):
            fired += fake.fire(MSIX, vector, 3)  # running: straight to the token
            p.stop()
            fake.fire(MSIX, vector, burst)  # stopped: into the holding eventfd
            fired += burst
            assert token.read(0) == 3, f"cycle {cycle}"
            delivered += 3
            p.start()
            delivered += token.read(0)
            assert token.read(0) == 0, "replayed twice"
        assert delivered == fired == 5 * 3 + 310
        assert p.stats() == {
            "held": 310,
            "replayed": 310,
            "triggered": 0,
            "quiesces": 5,
            "attached": 1,
        }


def test_loopback_trigger_while_stopped_is_held_then_replayed(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    with producer(token, fake, index="msix", vector=4) as p:
        p.trigger(2)
        assert token.read(0) == 2
        p.stop()
        p.trigger(3)
        assert token.read(0) == 0
        p.start()
        assert token.read(0) == 3
        loop = set_irqs(_abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_TRIGGER, MSIX, 4)
        assert set_irqs_payloads(fake).count(loop) == 5
        assert p.stats()["triggered"] == 5


def test_intx_fired_while_masked_is_delivered_on_unmask(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    """INTx is a level: the device holds the line while masked, and vfio-pci
    signals once on unmask (then automasks until the EOI unmask)."""
    with producer(token, fake, index="intx") as p:
        p.stop()
        assert fake.fire(INTX, 0, 3) == 0
        assert token.read(0) == 0
        p.start()
        assert token.read(0) == 1
        assert fake.intx_masked  # automasked, waiting for the consumer's EOI
        assert p.stats()["held"] == 0  # the device held it, not us


class CountingConsumer(irqbypass.Consumer):
    """Reads the token in a thread; ``during_add``/``during_del`` make the
    device fire while the manager has the producer stopped."""

    def __init__(self, token: irqbypass.Eventfd, fake: FakeVfio, vector: int) -> None:
        super().__init__(token=token, name="counter")
        self.fake, self.vector = fake, vector
        self.fire_in_callbacks = 0
        self.delivered = 0
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert isinstance(self.token, irqbypass.Eventfd)
        while not self._stop.is_set():
            self.delivered += self.token.read(0.01)

    def add_producer(self, producer: irqbypass.Producer) -> None:
        self.fake.fire(MSIX, self.vector, self.fire_in_callbacks)

    def del_producer(self, producer: irqbypass.Producer) -> None:
        self.fake.fire(MSIX, self.vector, self.fire_in_callbacks)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        assert isinstance(self.token, irqbypass.Eventfd)
        self.delivered += self.token.read(0)


def test_pairing_through_a_manager_loses_nothing(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    mgr = irqbypass.Manager()
    p = producer(token, fake, index="msix", vector=7)
    consumer = CountingConsumer(token, fake, 7)
    consumer.fire_in_callbacks = 25
    try:
        with p:
            mgr.register_consumer(consumer)
            mgr.register_producer(p)  # stop, add (fires 25 while held), start
            assert p.consumer is consumer and consumer.producer is p
            fake.fire(MSIX, 7, 50)
            mgr.unregister_producer(p)  # stop, del (fires 25 while held), start
            mgr.unregister_consumer(consumer)
            stats = p.stats()
    finally:
        consumer.close()
    assert consumer.delivered == 100
    assert stats["held"] == stats["replayed"] == 50
    assert stats["quiesces"] == 2


def test_pairing_with_the_logging_consumer(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    logging_plugin = pytest.importorskip("irqbypass_logging")
    mgr = irqbypass.Manager()
    consumer = logging_plugin.LoggingConsumer(token=token, name="log")
    p = producer(token, fake, index="msix", vector=0)
    with consumer, p:
        mgr.register_consumer(consumer)
        mgr.register_producer(p)
        fake.fire(MSIX, 0, 10)
        p.stop()
        fake.fire(MSIX, 0, 5)
        p.start()
        mgr.unregister_producer(p)
        mgr.unregister_consumer(consumer)
    assert consumer.stats()["delivered"] == 15
    assert consumer.events[:4] == ["open", "stop", "add_producer", "start"]


# -- refusals ------------------------------------------------------------------


def assert_clean(fake: FakeVfio) -> None:
    """Nothing attached, nothing open."""
    assert fake.open_fds == []
    assert all(fake.trigger_of(i, v) is None for i in range(5) for v in range(16))


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOTTY, "is not a VFIO device fd"),
        (errno.EINVAL, "NORESIZE"),
        (errno.EBUSY, "in use"),
    ],
)
def test_attach_refused_by_the_device(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio, code: int, words: str
) -> None:
    fake.fail(_abi.VFIO_DEVICE_SET_IRQS, code)
    p = producer(token, fake, index="msix", vector=1)
    with pytest.raises(irqbypass.DeviceError) as err:
        p.open()
    assert err.value.errno == code
    assert isinstance(err.value.__cause__, OSError)
    message = str(err.value)
    assert "VFIO_DEVICE_SET_IRQS failed" in message and words in message
    assert "'nic'" in message and "msix vector 1" in message
    assert_clean(fake)
    assert p.fd is None and p.attached_to is None


@pytest.mark.parametrize("code", [errno.ENOTTY, errno.EINVAL, errno.EBUSY])
@pytest.mark.parametrize("action", ["stop", "start"])
def test_quiesce_refused_by_the_device(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio, code: int, action: str
) -> None:
    p = producer(token, fake, index="msix", vector=1)
    with p:
        if action == "start":
            p.stop()
            fake.fire(MSIX, 1, 2)
        fake.fail(_abi.VFIO_DEVICE_SET_IRQS, code)
        with pytest.raises(irqbypass.DeviceError) as err:
            getattr(p, action)()
        assert err.value.errno == code
        if action == "start":
            assert token.read(0) == 2  # what was held is replayed anyway
    assert_clean(fake)


def test_stop_refused_inside_a_manager_is_reported(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    mgr = irqbypass.Manager()
    consumer = CountingConsumer(token, fake, 1)
    p = producer(token, fake, index="msix", vector=1)
    try:
        with p:
            mgr.register_consumer(consumer)
            fake.fail(_abi.VFIO_DEVICE_SET_IRQS, errno.EINVAL)
            with pytest.raises(irqbypass.IrqBypassError) as err:
                mgr.register_producer(p)
            assert err.value.errno == errno.EINVAL
            mgr.unregister_producer(p)
            mgr.unregister_consumer(consumer)
    finally:
        consumer.close()
    assert_clean(fake)


def test_missing_cdev_names_it_and_says_how_to_bind(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device="/dev/vfio/devices/vfio9").open()
    assert err.value.errno == errno.ENOENT
    assert "/dev/vfio/devices/vfio9 does not exist" in str(err.value)
    assert "driver_override" in str(err.value) and "drivers_probe" in str(err.value)
    assert_clean(fake)


def test_no_permission(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    fake = FakeVfio(denied=(CDEV,))
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake).open()
    assert err.value.errno == errno.EACCES
    assert f"no permission to open {CDEV}" in str(err.value) and "chown" in str(err.value)
    assert_clean(fake)


def test_missing_iommufd_closes_the_device(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    with pytest.raises(irqbypass.DeviceError, match="modprobe iommufd") as err:
        producer(token, fake, iommufd="/dev/no-iommu").open()
    assert err.value.errno == errno.ENOENT
    assert_clean(fake)
    assert fake.closed and fake.opened == [CDEV]


def test_unbound_cdev_is_refused_by_the_kernel(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    """A handed-over cdev fd nobody bound: vfio refuses device ioctls (EINVAL)."""
    fd = fake.open(CDEV, os.O_RDWR)
    with pytest.raises(irqbypass.DeviceError) as err:
        VfioProducer(token=token, device_fd=fd, seam=fake).open()
    assert err.value.errno == errno.EINVAL
    assert "bound to an iommufd" in str(err.value)
    fake.close(fd)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"index": "req", "vector": 0}, "3 interrupt indexes (0..2); req (4) is out of range"),
        ({"index": "msix", "vector": 16}, "vector 16 is out of range: msix has 16 vector(s)"),
        ({"index": "msi", "vector": 0}, "no msi interrupts (VFIO_DEVICE_GET_IRQ_INFO count 0)"),
        ({"index": "intx", "vector": 0}, "intx does not support eventfd signalling"),
    ],
)
def test_index_or_vector_the_device_lacks(
    no_fd_leak: None, token: irqbypass.Eventfd, kw: dict[str, object], words: str
) -> None:
    fake = FakeVfio(
        irqs={0: (0, 1), 1: (_abi.VFIO_IRQ_INFO_EVENTFD, 0), 2: (_abi.VFIO_IRQ_INFO_EVENTFD, 16)},
    )
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, **kw).open()
    assert err.value.errno == errno.EINVAL
    assert words in str(err.value)
    assert not any(c.request == _abi.VFIO_DEVICE_SET_IRQS for c in fake.calls)
    assert_clean(fake)


def test_dev_null_is_not_a_vfio_device(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device="/dev/null").open()
    assert err.value.errno == errno.ENOTTY
    assert "VFIO_DEVICE_BIND_IOMMUFD failed" in str(err.value)
    assert_clean(fake)


def test_group_not_viable(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    fake = FakeVfio(viable=False)
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device=GROUP, device_name=BDF).open()
    assert err.value.errno == errno.EPERM
    assert "not viable" in str(err.value) and "/sys/kernel/iommu_groups/7/devices" in str(err.value)
    assert_clean(fake)


def test_group_without_the_named_device(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device=GROUP, device_name="0000:09:00.0").open()
    assert err.value.errno == errno.ENODEV
    assert "'0000:09:00.0'" in str(err.value)
    assert_clean(fake)


def test_group_already_open_elsewhere(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    other = fake.open(GROUP, os.O_RDWR)
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device=GROUP, device_name=BDF).open()
    assert err.value.errno == errno.EBUSY and "already open elsewhere" in str(err.value)
    fake.close(other)


def test_group_path_needs_a_device_name(token: irqbypass.Eventfd) -> None:
    """A group path without device_name is taken as a cdev and refused there."""
    fake = FakeVfio(cdev_path="/dev/vfio/devices/unused")
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device=GROUP).open()
    # GROUP opens as a group node; the cdev bind on it is not a device ioctl
    assert err.value.errno == errno.ENOTTY
    assert_clean(fake)


# -- construction ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({}, "exactly one of device"),
        ({"device": CDEV, "device_fd": 3}, "exactly one of device"),
        ({"device": CDEV, "index": "msy"}, "unknown VFIO interrupt index 'msy'"),
        ({"device": CDEV, "index": "intx", "vector": 1}, "INTx has a single vector"),
        ({"device": CDEV, "vector": -1}, "vector -1"),
        ({"device_fd": -2}, "not an fd"),
    ],
)
def test_construction_refuses(token: irqbypass.Eventfd, kw: dict[str, object], words: str) -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match=words):
        VfioProducer(token=token, **kw)  # type: ignore[arg-type]


def test_token_must_be_an_eventfd() -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match=r"not an irqbypass\.Eventfd"):
        VfioProducer(token="t", device=CDEV)


def test_closed_token_is_refused_at_open(fake: FakeVfio) -> None:
    token = irqbypass.Eventfd()
    token.close()
    with pytest.raises(irqbypass.InvalidEndpointError, match="closed"):
        producer(token, fake).open()
    assert fake.opened == []


def test_vector_defaults_to_irq(token: irqbypass.Eventfd) -> None:
    p = VfioProducer(token=token, device=CDEV, irq=6)
    assert (p.vector, p.irq, p.index) == (6, 6, MSIX)


# -- vfio-pci's MSI/MSI-X enabling, as vfio_pci_intrs.c does it ------------------------


def test_enabling_fewer_vectors_than_asked_is_a_refusal(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    """vfio_msi_enable enables vectors 0..vector at once; when the host can
    allocate fewer, SET_IRQS *returns* that number (> 0, not an error) and
    attaches nothing. Taking that for success left the producer "attached"
    to a vector that never signals."""
    fake = FakeVfio(host_vectors={MSIX: 4})
    p = producer(token, fake, index="msix", vector=5)
    with pytest.raises(irqbypass.DeviceError) as err:
        p.open()
    assert err.value.errno == errno.ENOSPC
    message = str(err.value)
    assert "only 4 msix vectors" in message and "vector below 4" in message
    assert p.attached_to is None and p.fd is None
    assert_clean(fake)


def test_the_model_enables_like_vfio_pci(token: irqbypass.Eventfd) -> None:
    """The model refuses what vfio-pci refuses: a second index while one of
    INTx/MSI/MSI-X is enabled, a vector beyond an enabled NORESIZE block, and
    mask/unmask on MSI/MSI-X (ENOTTY) or on INTx before it is enabled."""
    fake = FakeVfio()
    fd = fake.open(CDEV, os.O_RDWR)
    fake.ioctl(
        fd,
        _abi.VFIO_DEVICE_BIND_IOMMUFD,
        bytearray(struct.pack("=IIiI", 16, 0, fake.open("/dev/iommu", 0), 0)),
    )
    msi = _abi.VFIO_PCI_MSI_IRQ_INDEX

    def call(flags: int, index: int, start: int, *fds: int) -> int:
        return fake.ioctl(
            fd, _abi.VFIO_DEVICE_SET_IRQS, bytearray(set_irqs(flags, index, start, *fds))
        )

    def refused(code: int, flags: int, index: int, start: int, *fds: int) -> None:
        with pytest.raises(OSError) as err:
            call(flags, index, start, *fds)
        assert err.value.errno == code

    refused(errno.EINVAL, MASK, INTX, 0)  # INTx not enabled
    assert call(TRIGGER_EVENTFD, msi, 1, token.fileno()) == 0  # enables vectors 0..1
    refused(errno.EINVAL, TRIGGER_EVENTFD, msi, 2, token.fileno())  # NORESIZE, beyond
    refused(errno.EINVAL, TRIGGER_EVENTFD, MSIX, 0, token.fileno())  # MSI is enabled
    refused(errno.EINVAL, TRIGGER_EVENTFD, INTX, 0, token.fileno())
    refused(errno.ENOTTY, MASK, msi, 1)
    assert call(TRIGGER_EVENTFD, msi, 0, token.fileno()) == 0  # within the block
    for f in list(fake.open_fds):
        fake.close(f)


def test_attach_while_another_index_is_enabled_says_so(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio
) -> None:
    """vfio-pci enables one of INTx/MSI/MSI-X at a time: the VMM's MSI makes
    the kernel refuse an MSI-X attach with EINVAL, and the hint must name that
    cause (not only NORESIZE and the iommufd bind)."""
    vmm_fd = fake.open(CDEV, os.O_RDWR)
    bind = bytearray(struct.pack("=IIiI", 16, 0, fake.open("/dev/iommu", 0), 0))
    fake.ioctl(vmm_fd, _abi.VFIO_DEVICE_BIND_IOMMUFD, bind)
    with irqbypass.Eventfd() as vmm_vector:
        msi = _abi.VFIO_PCI_MSI_IRQ_INDEX
        fake.ioctl(
            vmm_fd,
            _abi.VFIO_DEVICE_SET_IRQS,
            bytearray(set_irqs(TRIGGER_EVENTFD, msi, 0, vmm_vector.fileno())),
        )
        p = VfioProducer(token=token, device_fd=vmm_fd, index="msix", vector=0, seam=fake)
        with pytest.raises(irqbypass.DeviceError) as err:
            p.open()
        assert err.value.errno == errno.EINVAL
        assert "only one of INTx, MSI and MSI-X" in str(err.value)
        assert fake.trigger_of(msi, 0) == vmm_vector.fileno()  # the VMM's is untouched
        for fd in list(fake.open_fds):
            fake.close(fd)


@pytest.mark.parametrize(
    ("left", "failing"),
    [(0, "open(/dev/vfio/7)"), (1, "open(/dev/vfio/vfio)"), (2, "VFIO_GROUP_GET_DEVICE_FD")],
)
def test_out_of_fds_says_so_and_how_to_raise_the_limit(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVfio, left: int, failing: str
) -> None:
    """The process at its fd limit (RLIMIT_NOFILE, real: the model's fds are
    real) with ``left`` fds to spare: the open, or the ioctl that hands out a
    new fd, fails with EMFILE, and the message says to raise the limit, not to
    look in the kernel log for the device's complaint."""
    p = producer(token, fake, device=GROUP, device_name=BDF)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(n) for n in os.listdir("/proc/self/fd"))
    holes = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)]
    while holes[-1] <= highest:  # every fd number up to the highest taken: the next is new
        holes.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    try:
        os.close(holes.pop())  # free again: with the limit, `left` new fds from here
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + left, hard))
        with pytest.raises(irqbypass.DeviceError) as err:
            p.open()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in holes:
            os.close(fd)
    assert err.value.errno == errno.EMFILE
    message = str(err.value)
    assert f"{failing} failed: Too many open files" in message
    assert "out of file descriptors" in message and "ulimit -n" in message
    assert "dmesg" not in message
    assert_clean(fake)


@pytest.mark.parametrize("node", ["cdev", "group"])
def test_a_bound_device_whose_node_is_missing_says_so(
    no_fd_leak: None, token: irqbypass.Eventfd, tmp_path: Path, node: str
) -> None:
    """sysfs shows the device bound to vfio-pci, but its node is not in this
    /dev (a container given sysfs, not the node): the message says the node
    is missing here and how to pass it in, not to bind a device that is bound."""
    dev = tmp_path / "bus/pci/devices" / BDF
    (tmp_path / "bus/pci/drivers/vfio-pci").mkdir(parents=True)
    dev.mkdir(parents=True)
    (dev / "driver").symlink_to(tmp_path / "bus/pci/drivers/vfio-pci")
    if node == "cdev":
        (dev / "vfio-dev/vfio3").mkdir(parents=True)
        (dev / "vfio-dev/vfio3/dev").write_text("511:3\n")
        missing = "/dev/vfio/devices/vfio3"
    else:
        (tmp_path / "kernel/iommu_groups/12").mkdir(parents=True)
        (dev / "iommu_group").symlink_to(tmp_path / "kernel/iommu_groups/12")
        missing = "/dev/vfio/12"
    fake = FakeVfio(sysfs_root=str(tmp_path))
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device=BDF).open()
    message = str(err.value)
    assert err.value.errno == errno.ENOENT and f"{missing} does not exist" in message
    assert f"{BDF} is bound to vfio-pci" in message and "--device" in message
    assert "driver_override" not in message
    assert fake.open_fds == []
