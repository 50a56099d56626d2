"""The vfio producer against the real kernel (real seam).

Always: fds that are no VFIO device (an eventfd, /dev/null) get ENOTTY from the
kernel itself, and a missing node ENOENT. With IRQBYPASS_TEST_VFIO_DEVICE
naming a device bound to vfio-pci (a PCI address, /dev/vfio/devices/vfioN, or
/dev/vfio/<group> with IRQBYPASS_TEST_VFIO_NAME), the attach/quiesce/detach
tests run on it; the device "fires" through vfio's loopback trigger
(SET_IRQS DATA_NONE|ACTION_TRIGGER), which signals the vector's current eventfd.
IRQBYPASS_TEST_VFIO_INDEX (default msix) and IRQBYPASS_TEST_VFIO_VECTOR (0) pick it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import irqbypass
import pytest
from irqbypass_vfio import VfioProducer


def test_an_eventfd_is_not_a_vfio_device(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    with irqbypass.Eventfd() as other:
        p = VfioProducer(token=token, device_fd=other.fileno())
        with pytest.raises(irqbypass.DeviceError) as err:
            p.open()
        assert not other.closed  # a handed fd is never closed by the producer
    assert err.value.errno == errno.ENOTTY
    assert "VFIO_DEVICE_GET_INFO failed" in str(err.value)
    assert "is not a VFIO device fd" in str(err.value)
    assert p.attached_to is None


def test_dev_null_is_not_a_vfio_device(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        with pytest.raises(irqbypass.DeviceError) as err:
            VfioProducer(token=token, device_fd=fd).open()
    finally:
        os.close(fd)
    assert err.value.errno == errno.ENOTTY


def test_missing_node_on_this_machine(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    path = "/dev/vfio/devices/vfio-irqbypass-test-missing"
    with pytest.raises(irqbypass.DeviceError) as err:
        VfioProducer(token=token, device=path).open()
    assert err.value.errno == errno.ENOENT
    assert f"{path} does not exist" in str(err.value) and "driver_override" in str(err.value)


@pytest.fixture
def real_device(token: irqbypass.Eventfd, request: pytest.FixtureRequest) -> Iterator[VfioProducer]:
    device = os.environ.get("IRQBYPASS_TEST_VFIO_DEVICE")
    if not device:
        pytest.skip(
            "no VFIO device named: set IRQBYPASS_TEST_VFIO_DEVICE to a PCI address bound to "
            "vfio-pci (or /dev/vfio/devices/vfioN, or /dev/vfio/<group> with "
            "IRQBYPASS_TEST_VFIO_NAME) to run these tests on it"
        )
    index = os.environ.get("IRQBYPASS_TEST_VFIO_INDEX", "msix")
    vector = int(os.environ.get("IRQBYPASS_TEST_VFIO_VECTOR", "0"))
    p = VfioProducer(
        token=token,
        device=device,
        device_name=os.environ.get("IRQBYPASS_TEST_VFIO_NAME"),
        index=int(index) if index.isdigit() else index,
        vector=vector,
        name="real",
        msi_quiesce=getattr(request, "param", None),
    )
    with p:
        yield p


@pytest.mark.guest("vfio")
def test_real_attach_and_loopback(
    no_fd_leak: None, token: irqbypass.Eventfd, real_device: VfioProducer
) -> None:
    assert real_device.attached_to == token.fileno()
    real_device.trigger(3)
    assert token.read(1.0) == 3


@pytest.mark.guest("vfio")
@pytest.mark.parametrize("real_device", ["swap", "keep"], indirect=True)
def test_real_quiesce_is_lossless(
    no_fd_leak: None, token: irqbypass.Eventfd, real_device: VfioProducer
) -> None:
    if real_device.quiesce == "mask":
        pytest.skip("INTx is quiesced by masking; a loopback trigger ignores the mask")
    swap = real_device.quiesce == "swap"
    for burst in (1, 5, 0, 40):
        real_device.stop()
        real_device.trigger(burst)
        # swap: held back until start; keep: already in the token's counter
        assert token.read(0) == (0 if swap else burst)
        real_device.start()
        assert token.read(0) == (burst if swap else 0)
        real_device.trigger(1)
        assert token.read(1.0) == 1
    stats = real_device.stats()
    assert stats["held"] == stats["replayed"] == (46 if swap else 0)


@pytest.mark.guest("vfio")
def test_real_pairing_through_a_manager(
    no_fd_leak: None, token: irqbypass.Eventfd, real_device: VfioProducer
) -> None:
    logging_plugin = pytest.importorskip("irqbypass_logging")
    consumer = logging_plugin.LoggingConsumer(token=token, name="log")
    mgr = irqbypass.Manager()
    with consumer:
        mgr.register_consumer(consumer)
        mgr.register_producer(real_device)
        real_device.trigger(4)
        mgr.unregister_producer(real_device)
        mgr.unregister_consumer(consumer)
    assert consumer.stats()["delivered"] == 4
