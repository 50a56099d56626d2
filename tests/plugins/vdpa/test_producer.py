"""The vdpa producer through the seam: exact ioctl sequences and payload bytes,
lossless quiesce, pairing through a real Manager, and every refusal.

The device is irqbypass_vdpa.testing.FakeVdpa, a model of drivers/vhost/vdpa.c;
"the device fires" writes whichever eventfd the last recorded
VHOST_SET_VRING_CALL bound to the virtqueue.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Iterator

import irqbypass
import pytest
from irqbypass_vdpa import VdpaProducer, _abi
from irqbypass_vdpa.testing import READY, FakeVdpa

PATH = "/dev/vhost-vdpa-0"


def vring_file(index: int, fd: int) -> bytes:
    return struct.pack("=Ii", index, fd)


@pytest.fixture
def fake() -> Iterator[FakeVdpa]:
    device = FakeVdpa()
    yield device
    assert device.open_fds == [], "the model still has fds open"


def producer(token: irqbypass.Eventfd, fake: FakeVdpa, **kw: object) -> VdpaProducer:
    if "device_fd" not in kw:
        kw.setdefault("device", PATH)
        kw.setdefault("require_driver_ok", False)
    return VdpaProducer(token=token, seam=fake, name="net", **kw)  # type: ignore[arg-type]


def call_payloads(fake: FakeVdpa) -> list[bytes | int]:
    return [c.payload for c in fake.calls if c.request == _abi.VHOST_SET_VRING_CALL]


def assert_clean(fake: FakeVdpa, keep: tuple[int, ...] = ()) -> None:
    assert fake.open_fds == sorted(keep)
    assert all(fake.call_of(q) is None for q in range(len(fake.vq_groups)))


# -- bind and unbind: the exact sequences --------------------------------------------


def test_owned_device_bind_and_unbind_sequence(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa
) -> None:
    p = producer(token, fake, queue=2)
    p.open()
    fd = p.fd
    assert fake.opened == [PATH]
    assert [(c.fd, c.name, c.payload) for c in fake.calls] == [
        (fd, "VHOST_VDPA_GET_DEVICE_ID", bytes(4)),
        (fd, "VHOST_VDPA_GET_STATUS", bytes(1)),
        (fd, "VHOST_VDPA_GET_VQS_COUNT", bytes(4)),
        (fd, "VHOST_SET_OWNER", 0),
        (fd, "VHOST_VDPA_GET_VRING_GROUP", struct.pack("=II", 2, 0)),
        (fd, "VHOST_SET_VRING_CALL", vring_file(2, token.fileno())),
    ]
    assert (p.device_id, p.status, p.vq_count, p.vq_group) == (1, 0, 3, 1)
    assert fake.call_of(2) == token.fileno() == p.bound_to
    del fake.calls[:]
    p.close()
    assert [(c.fd, c.payload) for c in fake.calls] == [(fd, vring_file(2, -1))]
    assert fake.closed == [fd]


def test_handed_fd_is_not_owned_or_closed(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa, vmm_fd: int
) -> None:
    with producer(token, fake, device_fd=vmm_fd, queue=0) as p:
        assert p.status == READY
        assert fake.call_of(0) == token.fileno()
    assert fake.names() == [
        "VHOST_VDPA_GET_DEVICE_ID",
        "VHOST_VDPA_GET_STATUS",
        "VHOST_VDPA_GET_VQS_COUNT",
        "VHOST_VDPA_GET_VRING_GROUP",
        "VHOST_SET_VRING_CALL",
        "VHOST_SET_VRING_CALL",
    ]
    assert call_payloads(fake)[-1] == vring_file(0, -1)
    assert fake.opened == [] and fake.closed == [] and fake.owner == vmm_fd


def test_stop_start_swaps_the_call_eventfd(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa, vmm_fd: int
) -> None:
    with producer(token, fake, device_fd=vmm_fd, queue=1) as p:
        del fake.calls[:]
        p.stop()
        hold = p.bound_to
        assert hold is not None and hold != token.fileno() and fake.call_of(1) == hold
        p.start()
        assert fake.call_of(1) == token.fileno()
        assert [(c.fd, c.payload) for c in fake.calls] == [
            (vmm_fd, vring_file(1, hold)),
            (vmm_fd, vring_file(1, token.fileno())),
        ]


# -- lossless quiesce -------------------------------------------------------------


def test_interrupts_while_stopped_all_arrive_once(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa, vmm_fd: int
) -> None:
    with producer(token, fake, device_fd=vmm_fd, queue=2) as p:
        delivered = fired = 0
        for burst in (1, 9, 0, 500, 3):
            fired += fake.fire(2, 2)
            p.stop()
            fired += fake.fire(2, burst)
            assert token.read(0) == 2
            delivered += 2
            p.start()
            delivered += token.read(0)
            assert token.read(0) == 0, "replayed twice"
        assert delivered == fired == 10 + 513
        assert p.stats() == {"held": 513, "replayed": 513, "quiesces": 5, "bound": 1}


def test_close_while_stopped_replays(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa, vmm_fd: int
) -> None:
    p = producer(token, fake, device_fd=vmm_fd, queue=0)
    p.open()
    p.stop()
    fake.fire(0, 6)
    p.close()
    assert token.read(0) == 6
    assert call_payloads(fake)[-1] == vring_file(0, -1)
    assert fake.call_of(0) is None


class CountingConsumer(irqbypass.Consumer):
    """Reads the token; the device fires during add/del (while stopped)."""

    def __init__(self, token: irqbypass.Eventfd, fake: FakeVdpa, queue: int, burst: int) -> None:
        super().__init__(token=token, name="counter")
        self.fake, self.queue, self.burst = fake, queue, burst
        self.delivered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert isinstance(self.token, irqbypass.Eventfd)
        while not self._stop.is_set():
            self.delivered += self.token.read(0.01)

    def add_producer(self, producer: irqbypass.Producer) -> None:
        self.fake.fire(self.queue, self.burst)

    def del_producer(self, producer: irqbypass.Producer) -> None:
        self.fake.fire(self.queue, self.burst)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        assert isinstance(self.token, irqbypass.Eventfd)
        self.delivered += self.token.read(0)


def test_pairing_through_a_manager_loses_nothing(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa, vmm_fd: int
) -> None:
    mgr = irqbypass.Manager()
    p = producer(token, fake, device_fd=vmm_fd, queue=1)
    consumer = CountingConsumer(token, fake, 1, 40)
    try:
        with p:
            mgr.register_consumer(consumer)
            mgr.register_producer(p)
            assert p.consumer is consumer
            fake.fire(1, 20)
            mgr.unregister_producer(p)
            mgr.unregister_consumer(consumer)
            stats = p.stats()
    finally:
        consumer.close()
    assert consumer.delivered == 100
    assert stats["held"] == stats["replayed"] == 80


def test_pairing_with_the_logging_consumer(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa, vmm_fd: int
) -> None:
    logging_plugin = pytest.importorskip("irqbypass_logging")
    mgr = irqbypass.Manager()
    consumer = logging_plugin.LoggingConsumer(token=token, name="log")
    p = producer(token, fake, device_fd=vmm_fd, queue=0)
    with consumer, p:
        mgr.register_consumer(consumer)
        mgr.register_producer(p)
        fake.fire(0, 7)
        p.stop()
        fake.fire(0, 4)
        p.start()
        mgr.unregister_producer(p)
        mgr.unregister_consumer(consumer)
    assert consumer.stats()["delivered"] == 11


# -- refusals --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOTTY, "not a vhost-vdpa device"),
        (errno.EINVAL, "refused the arguments"),
        (errno.EBUSY, "in use by another owner"),
        # the hints VhostVirtqueue.point takes from the vdpa queue (its queues, its EPERM)
        (errno.ENOBUFS, "virtqueue 0 does not exist: the device has 3 virtqueues"),
        (errno.EPERM, "not the fd's vhost owner"),
    ],
)
def test_bind_refused_by_the_device(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa, code: int, words: str
) -> None:
    fake.fail(_abi.VHOST_SET_VRING_CALL, code)
    p = producer(token, fake, queue=0)
    with pytest.raises(irqbypass.DeviceError) as err:
        p.open()
    assert err.value.errno == code and isinstance(err.value.__cause__, OSError)
    assert "VHOST_SET_VRING_CALL failed" in str(err.value) and words in str(err.value)
    assert "'net'" in str(err.value) and "virtqueue 0" in str(err.value)
    assert_clean(fake)


@pytest.mark.parametrize("code", [errno.ENOTTY, errno.EINVAL, errno.EBUSY])
@pytest.mark.parametrize("action", ["stop", "start"])
def test_quiesce_refused_by_the_device(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa, code: int, action: str
) -> None:
    with producer(token, fake, queue=1) as p:
        if action == "start":
            p.stop()
            fake.fire(1, 3)
        fake.fail(_abi.VHOST_SET_VRING_CALL, code)
        with pytest.raises(irqbypass.DeviceError) as err:
            getattr(p, action)()
        assert err.value.errno == code
        if action == "start":
            assert token.read(0) == 3
    assert_clean(fake)


def test_not_ready_explains_driver_ok(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    fake = FakeVdpa()
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, require_driver_ok=True).open()
    message = str(err.value)
    assert "not ready" in message and "0x00 (reset)" in message and "DRIVER_OK (4)" in message
    assert "require_driver_ok" in message
    assert err.value.errno == errno.EAGAIN
    assert not any(c.request == _abi.VHOST_SET_VRING_CALL for c in fake.calls)
    assert_clean(fake)


def test_failed_device_is_refused(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    fake = FakeVdpa()
    fd = fake.hand_over()
    fake.status = READY | _abi.VIRTIO_CONFIG_S_NEEDS_RESET
    with pytest.raises(irqbypass.DeviceError, match=r"NEEDS_RESET.*reset it") as err:
        producer(token, fake, device_fd=fd).open()
    assert err.value.errno == errno.EIO
    assert_clean(fake, keep=(fd,))
    fake.close(fd)


def test_queue_out_of_range(no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, queue=3).open()
    assert err.value.errno == errno.ENOBUFS
    assert "virtqueue 3 is out of range: the virtio-net device has 3 virtqueues" in str(err.value)
    assert_clean(fake)


def test_queue_out_of_range_without_vqs_count(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    """Before Linux 5.18 there is no GET_VQS_COUNT: the kernel's ENOBUFS tells."""
    fake = FakeVdpa(vqs_count_supported=False)
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, queue=5).open()
    assert err.value.errno == errno.ENOBUFS
    assert "virtqueue 5 does not exist" in str(err.value)
    assert_clean(fake)


def test_group_mismatch(no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, queue=2, group=0).open()
    assert "virtqueue 2 is in group 1, not in group 0" in str(err.value)
    assert "control virtqueue" in str(err.value)
    assert_clean(fake)


def test_ungrouped_parent_is_fine_unless_a_group_is_asked(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    fake = FakeVdpa(vq_groups=(None, None))
    with producer(token, fake, queue=1) as p:
        assert p.vq_group is None and fake.call_of(1) == token.fileno()
    with pytest.raises(irqbypass.DeviceError, match="no group"):
        producer(token, fake, queue=1, group=0).open()
    assert_clean(fake)


def test_group_eio_is_explained(no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa) -> None:
    fake.fail(_abi.VHOST_VDPA_GET_VRING_GROUP, errno.EIO)
    with pytest.raises(irqbypass.DeviceError, match="beyond its group count") as err:
        producer(token, fake).open()
    assert err.value.errno == errno.EIO
    assert_clean(fake)


def test_handed_fd_without_owner(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa
) -> None:
    fd = fake.open(PATH, os.O_RDWR)
    fake.status = READY
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device_fd=fd).open()
    assert err.value.errno == errno.EPERM
    assert "VHOST_VDPA_GET_VRING_GROUP failed" in str(err.value)
    assert "the VMM must call it and hand the fd over within its own process" in str(err.value)
    assert not any(c.request == _abi.VHOST_SET_VRING_CALL for c in fake.calls)
    fake.close(fd)


def test_missing_device_says_how_to_create_one(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa
) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device="/dev/vhost-vdpa-9").open()
    assert err.value.errno == errno.ENOENT
    assert "/dev/vhost-vdpa-9 does not exist" in str(err.value)
    assert "vdpa dev add name vdpa0 mgmtdev" in str(err.value)
    assert_clean(fake)


def test_no_permission(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    fake = FakeVdpa(denied=(PATH,))
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake).open()
    assert err.value.errno == errno.EACCES and "no permission to open" in str(err.value)
    assert_clean(fake)


def test_second_opener_is_busy(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa, vmm_fd: int
) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake).open()
    assert err.value.errno == errno.EBUSY and "already open" in str(err.value)
    assert_clean(fake, keep=(vmm_fd,))


def test_dev_null_is_not_vhost_vdpa(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa
) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device="/dev/null").open()
    assert err.value.errno == errno.ENOTTY
    assert "VHOST_VDPA_GET_DEVICE_ID failed" in str(err.value)
    assert "not a vhost-vdpa device" in str(err.value)
    assert_clean(fake)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({}, "exactly one of device"),
        ({"device": PATH, "device_fd": 3}, "exactly one of device"),
        ({"device": PATH, "queue": -1}, "queue -1"),
        ({"device": PATH, "group": -1}, "group -1"),
        ({"device_fd": -1}, "not an fd"),
    ],
)
def test_construction_refuses(token: irqbypass.Eventfd, kw: dict[str, object], words: str) -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match=words):
        VdpaProducer(token=token, **kw)  # type: ignore[arg-type]


def test_token_must_be_an_open_eventfd(fake: FakeVdpa) -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match="not an irqbypass"):
        VdpaProducer(token=1, device=PATH)
    token = irqbypass.Eventfd()
    token.close()
    with pytest.raises(irqbypass.InvalidEndpointError, match="closed"):
        producer(token, fake).open()
    assert fake.opened == []


def test_fd_owned_by_another_process_is_refused_and_explained(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVdpa, vmm_fd: int
) -> None:
    """vhost ownership is the mm that called VHOST_SET_OWNER (vhost_dev_check_owner:
    dev->mm == current->mm), not the fd: a VMM's owned fd inherited by another
    process (a topology's fd = N) gets EPERM there, and the message must not
    tell the VMM to call VHOST_SET_OWNER, which it did."""
    fake.mm = "another process"
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device_fd=vmm_fd, queue=0).open()
    assert err.value.errno == errno.EPERM
    message = str(err.value)
    assert "VHOST_VDPA_GET_VRING_GROUP failed" in message
    assert "ownership belongs to the process" in message
    assert "another process" in message and "embed" in message
    assert_clean(fake, keep=(vmm_fd,))
