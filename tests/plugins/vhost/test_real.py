"""The vhost producer on the real vhost-net driver, receiving real frames.

Runs in the vdpa test guest (tests/guest loads vhost_net and tun there; on the
host these tests report the guest's results). The test plays the VMM and its
virtio-net driver (tests/guest/vhost_net.py): it owns /dev/vhost-net, gives it
the memory table and the receive ring, and attaches a tap as the backend. A
frame sent out of the tap's interface from a packet socket is received by
vhost-net, which signals virtqueue 0's call eventfd: every such interrupt is
counted by a consumer a Manager paired with the producer. Frames are paced:
each is waited for before the next. The race test's figures go to stdout and
to ``$IRQBYPASS_GUEST_OUT/race-vhost.json``.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import irqbypass
import pytest
from irqbypass_vhost import VhostProducer
from realdevice import (
    CountingConsumer,
    StopStartCycles,
    eventfd_count,
    open_fd_count,
    paired,
    readable,
    report_race,
    wait_until,
)
from vhost_net import VhostNetDriver, set_owner

pytestmark = pytest.mark.guest("vdpa")

NET = os.environ.get("IRQBYPASS_TEST_VHOST_NET", "")
FRAMES = int(os.environ.get("IRQBYPASS_RACE_FRAMES", "500"))


def need() -> str:
    if not NET:
        pytest.skip("no /dev/vhost-net: these run in the vdpa test guest (make guest-test)")
    return NET


@contextmanager
def receiving() -> Iterator[tuple[int, VhostNetDriver]]:
    """A vhost-net fd the way a VMM holds it: owned by this process, with
    memory, the receive ring and a tap backend."""
    fd = os.open(need(), os.O_RDWR | os.O_CLOEXEC)
    try:
        set_owner(fd)
        with VhostNetDriver(fd) as driver:
            driver.start()
            yield fd, driver
    finally:
        os.close(fd)


def receive_one(driver: VhostNetDriver, n: int) -> None:
    driver.receive_buffer(0)
    driver.tap.send(n)


def test_every_received_frame_is_counted(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    with receiving() as (fd, driver):
        p = VhostProducer(token=token, device_fd=fd, queue=0, name="rx")
        with paired(p, token) as consumer:
            assert p.features is not None and p.features >> 27 & 1
            for i in range(1, 31):
                receive_one(driver, i)
                assert consumer.wait_for(i) == i
                assert driver.queues[0].used_idx() == i  # one frame, one interrupt
        assert consumer.count == 30
        driver.receive_buffer(0)
        driver.tap.send(31)  # unbound: the frame is received, nothing signals the token
        assert wait_until(lambda: driver.queues[0].used_idx() == 31)
        assert not readable(token.fileno(), 0.5)


def test_frames_while_stopped_arrive_once_after_start(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    with receiving() as (fd, driver):
        p = VhostProducer(token=token, device_fd=fd)
        with paired(p, token) as consumer:
            total = 0
            for burst in (1, 3, 0, 8):
                p.stop()
                hold = p.pointed_at
                assert hold is not None and hold != token.fileno()
                for i in range(1, burst + 1):
                    receive_one(driver, total + i)
                    # the interrupt landed on the holding eventfd
                    assert wait_until(lambda i=i, hold=hold: eventfd_count(hold) == i)
                assert consumer.count == total
                p.start()
                total += burst
                assert consumer.wait_for(total) == total
                receive_one(driver, total + 1)  # the token is back
                total += 1
                assert consumer.wait_for(total) == total
            assert p.stats()["held"] == p.stats()["replayed"] == 12
        assert consumer.count == 16 == driver.queues[0].used_idx()


def test_open_by_path_binds_and_closes(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    """By path the producer becomes the owner itself: nothing can drive that
    device but code in this process, so this checks the binding and teardown."""
    before = open_fd_count()
    p = VhostProducer(token=token, device=need(), queue=1)
    for _ in range(100):
        with p:
            assert p.pointed_at == token.fileno() and p.fd is not None
    assert p.fd is None and open_fd_count() == before


def test_vhost_vsock_binds_both_virtqueues(no_fd_leak: None) -> None:
    """/dev/vhost-vsock answers the same ioctls: its two virtqueues bind and
    unbind, a third is the kernel's ENOBUFS (nothing here makes it signal)."""
    vsock = os.environ.get("IRQBYPASS_TEST_VHOST_VSOCK", "")
    if not vsock:
        pytest.skip("no /dev/vhost-vsock: this runs in the vdpa test guest (make guest-test)")
    with irqbypass.Eventfd() as rx_token, irqbypass.Eventfd() as tx_token:
        rx = VhostProducer(token=rx_token, device=vsock, queue=0, name="rx")
        tx = VhostProducer(token=tx_token, device=vsock, queue=1, name="tx")
        with rx, tx:  # two openers: vhost-vsock gives each its own device
            assert rx.pointed_at == rx_token.fileno() and tx.pointed_at == tx_token.fileno()
            assert rx.features is not None and rx.fd != tx.fd
        with pytest.raises(irqbypass.DeviceError) as err:
            VhostProducer(token=rx_token, device=vsock, queue=2).open()
        assert err.value.errno == errno.ENOBUFS
        assert "the device has 2 virtqueues" in str(err.value)


def test_the_drivers_errors_are_mapped(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        VhostProducer(token=token, device=need(), queue=2).open()
    assert err.value.errno == errno.ENOBUFS  # vhost_vring_ioctl: idx >= nvqs
    assert "virtqueue 2 does not exist: the device has 2 virtqueues" in str(err.value)
    with pytest.raises(irqbypass.DeviceError) as err:
        VhostProducer(token=token, device="/dev/null").open()
    assert err.value.errno == errno.ENOTTY and "not a kernel vhost device" in str(err.value)
    fd = os.open(need(), os.O_RDWR | os.O_CLOEXEC)
    try:  # nobody owns it: the kernel refuses the virtqueue ioctls
        with pytest.raises(irqbypass.DeviceError) as err:
            VhostProducer(token=token, device_fd=fd).open()
        assert err.value.errno == errno.EPERM and "vhost owner" in str(err.value)
        child = os.fork()
        if child == 0:  # another process becomes the owner, then exits
            try:
                set_owner(fd)
            finally:
                os._exit(0)
        _, code = os.waitpid(child, 0)
        assert code == 0
        with pytest.raises(irqbypass.DeviceError) as err:
            VhostProducer(token=token, device_fd=fd).open()
        assert err.value.errno == errno.EPERM
    finally:
        os.close(fd)


def test_race_frames_vs_delivered_under_stop_start_cycles(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    """vhost swaps the call eventfd under the virtqueue's mutex, which
    handle_rx holds while it signals: a frame's interrupt signals either the
    old eventfd or the new one. One thread receives frames one at a time while
    another runs stop/start cycles; every interrupt must be delivered once."""
    with receiving() as (fd, driver):
        queue = driver.queues[0]
        p = VhostProducer(token=token, device_fd=fd)
        consumer = CountingConsumer(token=token)
        mgr = irqbypass.Manager()
        with p, consumer:
            mgr.register_consumer(consumer)
            mgr.register_producer(p)
            with StopStartCycles(p) as cycling:
                started = time.monotonic()
                for i in range(1, FRAMES + 1):
                    receive_one(driver, i)
                    assert wait_until(lambda i=i: queue.used_idx() == i & 0xFFFF)
            elapsed = time.monotonic() - started
            mgr.unregister_producer(p)
            mgr.unregister_consumer(consumer)
            p.close()  # replays what the holding eventfd still has
            delivered = consumer.wait_for(FRAMES)
        stats = p.stats()
        cycles = cycling.cycles
    figures = {
        "quiesce": "swap (VHOST_SET_VRING_CALL)",
        "received": FRAMES,
        "delivered": delivered,
        "lost": FRAMES - delivered,
        "cycles": cycles,
        "held": stats["held"],
        "seconds": round(elapsed, 2),
    }
    report_race("vhost", figures)
    assert cycles > 100
    assert delivered == FRAMES  # none lost, none twice
