"""The vdpa producer on the real vhost-vdpa driver, with devices that complete requests.

Runs in the vdpa test guest (tests/guest; on the host these tests report the
guest's results): vdpa_sim_blk (``IRQBYPASS_TEST_VDPA_BLK``, one virtqueue)
and vdpa_sim_net (``IRQBYPASS_TEST_VDPA_NET``: receive 0, transmit 1, control 2
in its own group), behind vhost_vdpa. The test plays the virtio driver
(tests/guest/virtio_driver.py), so every completion is the simulator signalling
the virtqueue's call eventfd, counted by a consumer a Manager paired. Requests
are paced: each is waited for before the next.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

import irqbypass
import pytest
from irqbypass_vdpa import VdpaProducer
from realdevice import CountingConsumer, eventfd_count, open_fd_count, paired, readable, wait_until
from virtio_driver import VirtioDriver, set_owner, status

pytestmark = pytest.mark.guest("vdpa")

BLK = os.environ.get("IRQBYPASS_TEST_VDPA_BLK", "")
NET = os.environ.get("IRQBYPASS_TEST_VDPA_NET", "")
DRIVER_OK = 4


def need(path: str) -> str:
    if not path:
        pytest.skip("no vdpa simulator device: these run in the vdpa test guest (make guest-test)")
    return path


@contextmanager
def owned_fd(path: str) -> Iterator[int]:
    """The vhost-vdpa fd the way a VMM holds it: opened, and owned by this process."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        set_owner(fd)
        yield fd
    finally:
        os.close(fd)


def complete_one(driver: VirtioDriver, consumer: CountingConsumer, queue: int = 0) -> int:
    before = consumer.count
    driver.get_id(queue)
    return consumer.wait_for(before + 1) - before


# -- open by path and by a handed-over fd; every completion counted ----------------


def test_blk_by_path_every_completion_counted(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    p = VdpaProducer(token=token, device=need(BLK), require_driver_ok=False)
    with paired(p, token) as consumer:
        assert p.device_id == 2 and p.vq_count == 1  # virtio-blk, one virtqueue
        with VirtioDriver(p.fd or -1, [0]) as driver:
            driver.start()  # after the bind: a reset would drop the call eventfd
            assert status(p.fd or -1) & DRIVER_OK
            for i in range(1, 31):
                assert complete_one(driver, consumer) == 1
                assert consumer.count == i
            assert driver.queues[0].used_idx() == 30


def test_blk_handed_over_fd_every_completion_counted(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    with owned_fd(need(BLK)) as fd, VirtioDriver(fd, [0]) as driver:
        driver.start()
        p = VdpaProducer(token=token, device_fd=fd)  # require_driver_ok: it is
        with paired(p, token) as consumer:
            assert p.status is not None and p.status & DRIVER_OK
            for i in range(1, 31):
                assert complete_one(driver, consumer) == 1
                assert consumer.count == i
        os.fstat(fd)  # the VMM's fd stays open
        driver.get_id()  # unbound: nothing signals the token
        assert not readable(token.fileno(), 0.5)


def test_net_two_queues_each_counted(no_fd_leak: None) -> None:
    """vdpa_sim_net loops a frame sent on queue 1 back to queue 0: each
    completes once, each on its own call eventfd."""
    with (
        owned_fd(need(NET)) as fd,
        VirtioDriver(fd, [0, 1]) as driver,
        irqbypass.Eventfd() as rx_token,
        irqbypass.Eventfd() as tx_token,
    ):
        driver.start()
        rx = VdpaProducer(token=rx_token, device_fd=fd, queue=0, name="rx")
        tx = VdpaProducer(token=tx_token, device_fd=fd, queue=1, name="tx")
        with paired(rx, rx_token) as rx_count, paired(tx, tx_token) as tx_count:
            assert rx.vq_count == 3 and rx.vq_group == tx.vq_group == 0
            for i in range(1, 11):
                driver.receive_buffer(0)
                driver.send_broadcast(1)
                assert tx_count.wait_for(i) == i
                assert rx_count.wait_for(i) == i
        assert (rx_count.count, tx_count.count) == (10, 10)


def test_net_control_queue_is_in_its_own_group(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    with owned_fd(need(NET)) as fd, VirtioDriver(fd, [0, 1]) as driver:
        driver.start()
        with VdpaProducer(token=token, device_fd=fd, queue=2) as p:
            assert p.vq_group == 1
        p = VdpaProducer(token=token, device_fd=fd, queue=2, group=0)
        with pytest.raises(irqbypass.DeviceError, match="is in group 1, not in group 0"):
            p.open()


# -- stop/start is lossless ------------------------------------------------------


def test_completions_while_stopped_arrive_once_after_start(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    with owned_fd(need(BLK)) as fd, VirtioDriver(fd, [0]) as driver:
        driver.start()
        p = VdpaProducer(token=token, device_fd=fd)
        with paired(p, token) as consumer:
            total = 0
            for burst in (1, 3, 0, 8):
                p.stop()
                hold = p.bound_to
                assert hold is not None and hold != token.fileno()
                for i in range(1, burst + 1):
                    driver.get_id()
                    # the completion landed on the holding eventfd
                    assert wait_until(lambda i=i, hold=hold: eventfd_count(hold) == i)
                assert consumer.count == total
                p.start()
                total += burst
                assert consumer.wait_for(total) == total
                assert complete_one(driver, consumer) == 1  # the token is back
                total += 1
            assert p.stats()["held"] == p.stats()["replayed"] == 12
        assert consumer.count == 16


# -- the documented errors, from the real driver ---------------------------------


def test_not_driver_ok_is_refused(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    p = VdpaProducer(token=token, device=need(BLK))
    with pytest.raises(irqbypass.DeviceError) as err:
        p.open()  # opening resets the device: status 0
    assert err.value.errno == errno.EAGAIN
    assert "without DRIVER_OK" in str(err.value) and "0x00 (reset)" in str(err.value)
    assert p.fd is None


def test_queue_out_of_range_is_refused(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    p = VdpaProducer(token=token, device=need(BLK), queue=1, require_driver_ok=False)
    with pytest.raises(irqbypass.DeviceError) as err:
        p.open()
    assert err.value.errno == errno.ENOBUFS
    assert "virtqueue 1 is out of range" in str(err.value) and "1 virtqueues" in str(err.value)


class NoVqsCount:
    """The real kernel, as before Linux 5.18 (no VHOST_VDPA_GET_VQS_COUNT):
    the driver itself must refuse the queue."""

    sysfs_root = "/sys"

    def __init__(self) -> None:
        from irqbypass_vdpa import RealSeam

        self.real = RealSeam()

    def open(self, path: str, flags: int) -> int:
        return self.real.open(path, flags)

    def close(self, fd: int) -> None:
        self.real.close(fd)

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        from irqbypass_vdpa import _abi

        if request == _abi.VHOST_VDPA_GET_VQS_COUNT:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        return self.real.ioctl(fd, request, arg)


def test_queue_out_of_range_refused_by_the_driver_itself(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    p = VdpaProducer(
        token=token, device=need(BLK), queue=5, require_driver_ok=False, seam=NoVqsCount()
    )
    with pytest.raises(irqbypass.DeviceError) as err:
        p.open()
    assert err.value.errno == errno.ENOBUFS  # vhost-vdpa: idx >= nvqs
    assert "virtqueue 5 does not exist" in str(err.value)
    assert p.fd is None


def test_another_process_owns_the_fd(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    """vhost ownership is the mm that called VHOST_SET_OWNER, not the fd."""
    fd = os.open(need(BLK), os.O_RDWR | os.O_CLOEXEC)
    try:
        child = os.fork()
        if child == 0:  # the other process: becomes the owner, then exits
            try:
                set_owner(fd)
            finally:
                os._exit(0)
        _, code = os.waitpid(child, 0)
        assert code == 0
        p = VdpaProducer(token=token, device_fd=fd, require_driver_ok=False)
        with pytest.raises(irqbypass.DeviceError) as err:
            p.open()
        assert err.value.errno == errno.EPERM
        assert "not the fd's vhost owner" in str(err.value)
    finally:
        os.close(fd)


def test_a_second_opener_is_refused_with_ebusy(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    with owned_fd(need(BLK)):
        p = VdpaProducer(token=token, device=BLK, require_driver_ok=False)
        with pytest.raises(irqbypass.DeviceError) as err:
            p.open()
        assert err.value.errno == errno.EBUSY
        assert "one user at a time" in str(err.value)


def test_no_fd_left_after_1000_open_close_cycles(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    before = open_fd_count()
    p = VdpaProducer(token=token, device=need(BLK), require_driver_ok=False)
    for _ in range(1000):
        p.open()
        p.close()
    assert open_fd_count() == before
