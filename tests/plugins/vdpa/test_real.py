"""The vdpa producer against the real kernel (real seam).

Always: fds that are no vhost-vdpa device (an eventfd, /dev/null) get ENOTTY
from the kernel itself, and a missing node ENOENT. With
IRQBYPASS_TEST_VDPA_DEVICE naming /dev/vhost-vdpa-N (IRQBYPASS_TEST_VDPA_QUEUE,
default 0), the bind/quiesce/unbind tests run on it. Nothing here drives the
device to DRIVER_OK (that takes a virtio driver), so they bind with
require_driver_ok = false; "the device fires" by writing the eventfd the
producer bound last, which is what vhost-vdpa's virtqueue callback does.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import irqbypass
import pytest
from irqbypass_vdpa import VdpaProducer


def test_an_eventfd_is_not_a_vdpa_device(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    with irqbypass.Eventfd() as other:
        with pytest.raises(irqbypass.DeviceError) as err:
            VdpaProducer(token=token, device_fd=other.fileno()).open()
        assert not other.closed
    assert err.value.errno == errno.ENOTTY
    assert "not a vhost-vdpa device" in str(err.value)


def test_dev_null_is_not_a_vdpa_device(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        VdpaProducer(token=token, device="/dev/null").open()
    assert err.value.errno == errno.ENOTTY


def test_missing_node_on_this_machine(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        VdpaProducer(token=token, device="/dev/vhost-vdpa-irqbypass-missing").open()
    assert err.value.errno == errno.ENOENT and "vdpa dev add" in str(err.value)


@pytest.fixture
def real_device(token: irqbypass.Eventfd) -> Iterator[VdpaProducer]:
    device = os.environ.get("IRQBYPASS_TEST_VDPA_DEVICE")
    if not device:
        pytest.skip(
            "no vDPA device named: set IRQBYPASS_TEST_VDPA_DEVICE to /dev/vhost-vdpa-N "
            "(e.g. after `modprobe vdpa_sim_net vhost_vdpa; vdpa dev add name vdpa0 mgmtdev "
            "vdpasim_net`) to run these tests on it"
        )
    queue = int(os.environ.get("IRQBYPASS_TEST_VDPA_QUEUE", "0"))
    p = VdpaProducer(token=token, device=device, queue=queue, require_driver_ok=False)
    with p:
        yield p


def fire(p: VdpaProducer, n: int) -> None:
    bound = p.bound_to
    assert bound is not None
    os.write(bound, n.to_bytes(8, "little"))


@pytest.mark.guest("vdpa")
def test_real_bind_reads_the_device(
    no_fd_leak: None, token: irqbypass.Eventfd, real_device: VdpaProducer
) -> None:
    assert real_device.bound_to == token.fileno()
    assert real_device.device_id is not None and real_device.device_id > 0
    assert real_device.vq_count is None or real_device.queue < real_device.vq_count


@pytest.mark.guest("vdpa")
def test_real_quiesce_is_lossless(
    no_fd_leak: None, token: irqbypass.Eventfd, real_device: VdpaProducer
) -> None:
    for burst in (1, 5, 0, 40):
        real_device.stop()
        fire(real_device, burst)
        assert token.read(0) == 0
        real_device.start()
        assert token.read(0) == burst
    stats = real_device.stats()
    assert stats["held"] == stats["replayed"] == 46
