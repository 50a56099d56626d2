"""The vhost producer on the model: exact ioctl sequences and payload bytes,
lossless quiesce, pairing through a real Manager, and every refusal.

The device is irqbypass_vhost.testing.FakeVhost, a model of drivers/vhost;
"the device fires" writes whichever eventfd the last recorded
VHOST_SET_VRING_CALL bound to the virtqueue.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator

import irqbypass
import pytest
from irqbypass_vhost import VhostProducer, _abi
from irqbypass_vhost.testing import FEATURES, FakeVhost

NET = "/dev/vhost-net"


def vring_file(index: int, fd: int) -> bytes:
    return struct.pack("=Ii", index, fd)


@pytest.fixture
def fake() -> Iterator[FakeVhost]:
    device = FakeVhost()
    yield device
    assert device.open_fds == [], "the model still has fds open"


def producer(token: irqbypass.Eventfd, fake: FakeVhost, **kw: object) -> VhostProducer:
    if "device_fd" not in kw:
        kw.setdefault("device", NET)
    return VhostProducer(token=token, seam=fake, name="rx", **kw)  # type: ignore[arg-type]


def test_owned_device_bind_and_unbind_sequence(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVhost
) -> None:
    p = producer(token, fake, queue=1)
    p.open()
    fd = p.fd
    assert fd is not None and fake.opened == [NET]
    assert [(c.fd, c.name, c.payload) for c in fake.calls] == [
        (fd, "VHOST_GET_FEATURES", bytes(8)),
        (fd, "VHOST_SET_OWNER", 0),
        (fd, "VHOST_SET_VRING_CALL", vring_file(1, token.fileno())),
    ]
    assert p.features == FEATURES and fake.call_of(fd, 1) == token.fileno() == p.pointed_at
    del fake.calls[:]
    p.close()
    assert [(c.fd, c.payload) for c in fake.calls] == [(fd, vring_file(1, -1))]
    assert fake.closed == [fd] and p.fd is None


def test_handed_fd_is_not_owned_or_closed(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVhost, vmm_fd: int
) -> None:
    with producer(token, fake, device_fd=vmm_fd) as p:
        assert fake.call_of(vmm_fd, 0) == token.fileno() and p.fd == vmm_fd
    assert fake.names() == ["VHOST_GET_FEATURES", "VHOST_SET_VRING_CALL", "VHOST_SET_VRING_CALL"]
    assert fake.calls[-1].payload == vring_file(0, -1)
    assert fake.opened == [] and fake.closed == [] and fake.call_of(vmm_fd, 0) is None


def test_stop_start_swaps_and_every_interrupt_arrives_once(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVhost, vmm_fd: int
) -> None:
    with producer(token, fake, device_fd=vmm_fd, queue=1) as p:
        assert p.quiesce == "swap"
        delivered = fired = 0
        for burst in (1, 9, 0, 500):
            fired += fake.fire(vmm_fd, 1, 2)
            p.stop()
            hold = p.pointed_at
            assert hold not in (None, token.fileno()) and fake.call_of(vmm_fd, 1) == hold
            fired += fake.fire(vmm_fd, 1, burst)
            assert token.read(0) == 2
            delivered += 2
            p.start()
            assert fake.call_of(vmm_fd, 1) == token.fileno()
            delivered += token.read(0)
        assert delivered == fired == 8 + 510
        assert p.stats() == {"held": 510, "replayed": 510, "quiesces": 4, "bound": 1}


def test_close_while_stopped_replays(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVhost, vmm_fd: int
) -> None:
    p = producer(token, fake, device_fd=vmm_fd)
    p.open()
    p.stop()
    fake.fire(vmm_fd, 0, 6)
    p.close()
    assert token.read(0) == 6 and fake.call_of(vmm_fd, 0) is None


def test_pairing_through_a_manager(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVhost, vmm_fd: int
) -> None:
    logging_plugin = pytest.importorskip("irqbypass_logging")
    mgr = irqbypass.Manager()
    consumer = logging_plugin.LoggingConsumer(token=token, name="log")
    p = producer(token, fake, device_fd=vmm_fd)
    with consumer, p:
        mgr.register_consumer(consumer)
        mgr.register_producer(p)
        fake.fire(vmm_fd, 0, 7)
        p.stop()
        fake.fire(vmm_fd, 0, 4)
        p.start()
        mgr.unregister_producer(p)
        mgr.unregister_consumer(consumer)
    assert consumer.stats()["delivered"] == 11
    assert p.stats()["quiesces"] == 3  # register, the stop above, unregister


# -- refusals, worded as the vdpa producer's ------------------------------------


def test_queue_out_of_range_is_the_kernels_enobufs(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVhost
) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, queue=2).open()
    assert err.value.errno == errno.ENOBUFS
    message = str(err.value)
    assert (
        "vhost producer 'rx' (/dev/vhost-net, virtqueue 2): VHOST_SET_VRING_CALL failed" in message
    )
    assert (
        "virtqueue 2 does not exist: the device has 2 virtqueues: 0 receive, 1 transmit" in message
    )
    assert fake.open_fds == []


def test_an_fd_another_process_owns_is_refused_and_explained(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVhost, vmm_fd: int
) -> None:
    fake.mm = "another process"
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device_fd=vmm_fd).open()
    assert err.value.errno == errno.EPERM and isinstance(err.value.__cause__, OSError)
    assert "not the device's vhost owner" in str(err.value) and "embed" in str(err.value)


def test_an_owned_device_is_busy(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVhost
) -> None:
    fake.fail(_abi.VHOST_SET_OWNER, errno.EBUSY)
    with pytest.raises(irqbypass.DeviceError, match="already has an owner") as err:
        producer(token, fake).open()
    assert err.value.errno == errno.EBUSY and fake.open_fds == []


@pytest.mark.parametrize(
    ("path", "code", "words"),
    [
        ("/dev/null", errno.ENOTTY, "VHOST_GET_FEATURES failed: Inappropriate ioctl"),
        ("/dev/vhost-vsock", errno.ENOENT, "does not exist: load the module (`modprobe vhost_net`"),
    ],
)
def test_what_is_not_a_vhost_device_is_refused(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVhost, path: str, code: int, words: str
) -> None:
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake, device=path).open()
    assert err.value.errno == code and words in str(err.value)
    assert fake.open_fds == []


def test_no_permission(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    fake = FakeVhost(denied=(NET,))
    with pytest.raises(irqbypass.DeviceError) as err:
        producer(token, fake).open()
    assert err.value.errno == errno.EACCES and "chown $USER /dev/vhost-net" in str(err.value)


@pytest.mark.parametrize("action", ["stop", "start"])
def test_a_refused_swap_is_reported_and_close_still_cleans_up(
    no_fd_leak: None, token: irqbypass.Eventfd, fake: FakeVhost, action: str
) -> None:
    with producer(token, fake, queue=1) as p:
        if action == "start":
            p.stop()
            assert p.fd is not None
            fake.fire(p.fd, 1, 3)
        fake.fail(_abi.VHOST_SET_VRING_CALL, errno.EFAULT)
        with pytest.raises(irqbypass.DeviceError, match="Bad address") as err:
            getattr(p, action)()
        assert err.value.errno == errno.EFAULT
        if action == "start":
            assert token.read(0) == 3  # replayed anyway
    assert fake.open_fds == []


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({}, "exactly one of device"),
        ({"device": NET, "device_fd": 3}, "exactly one of device"),
        ({"device": NET, "queue": -1}, "queue -1"),
        ({"device_fd": -1}, "not an fd"),
    ],
)
def test_construction_refuses(token: irqbypass.Eventfd, kw: dict[str, object], words: str) -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match=words):
        VhostProducer(token=token, **kw)  # type: ignore[arg-type]


def test_token_must_be_an_open_eventfd(fake: FakeVhost) -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match="not an irqbypass"):
        VhostProducer(token=1, device=NET)
    token = irqbypass.Eventfd()
    token.close()
    with pytest.raises(irqbypass.InvalidEndpointError, match="closed"):
        producer(token, fake).open()
    assert fake.opened == []


def test_the_unavailable_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import irqbypass_vhost

    monkeypatch.setattr(os.path, "exists", lambda path: False)
    assert "modprobe vhost_net" in (irqbypass_vhost.unavailable_reason() or "")
    monkeypatch.setattr(os.path, "exists", lambda path: path == "/dev/vhost-vsock")
    assert irqbypass_vhost.unavailable_reason() is None
