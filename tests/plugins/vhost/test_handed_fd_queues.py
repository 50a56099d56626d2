"""The producers of one VMM's vhost fd (vhost-net and vhost-vdpa alike: the
core's VhostVirtqueue), one per virtqueue: a second producer on a virtqueue
is refused, not let take the first's call; others share the fd. On the models.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import irqbypass
import pytest
from irqbypass_vdpa import VdpaProducer
from irqbypass_vdpa.testing import FakeVdpa
from irqbypass_vhost import VhostProducer
from irqbypass_vhost.testing import FakeVhost

pytestmark = pytest.mark.usefixtures("no_fd_leak")

Device = tuple[
    Callable[..., irqbypass.plugin.DeviceProducer],
    FakeVhost | FakeVdpa,
    Callable[[int, int], "int | None"],
]


@pytest.fixture(params=["vhost", "vdpa"])
def device(request: pytest.FixtureRequest) -> Iterator[tuple[Device, int]]:
    """A model, its producer class, where a virtqueue's call points, and a
    VMM's fd handed over (closed after: by the VMM, never by a producer)."""
    if request.param == "vhost":
        vhost = FakeVhost()
        fd = vhost.hand_over()
        made: Device = (VhostProducer, vhost, vhost.call_of)
    else:
        vdpa = FakeVdpa()
        fd = vdpa.hand_over()
        made = (VdpaProducer, vdpa, lambda _fd, queue: vdpa.call_of(queue))
    yield made, fd
    fake = made[1]
    assert fake.closed == []  # no producer closed the VMM's fd
    fake.close(fd)
    assert fake.open_fds == []


@pytest.fixture
def tokens() -> Iterator[list[irqbypass.Eventfd]]:
    with ExitStack() as stack:
        yield [stack.enter_context(irqbypass.Eventfd()) for _ in range(2)]


def test_a_second_producer_on_a_virtqueue_is_refused(
    device: tuple[Device, int], tokens: list[irqbypass.Eventfd]
) -> None:
    (cls, fake, call_of), fd = device
    first, second = (
        cls(token=token, seam=fake, device_fd=fd, queue=0, name=name)
        for token, name in zip(tokens, ("first", "second"), strict=True)
    )
    with first:
        with pytest.raises(irqbypass.DeviceError) as err:
            second.open()
        assert err.value.errno == errno.EBUSY
        assert "virtqueue 0 of this device is already bound by" in str(err.value)
        assert "producer 'first'" in str(err.value)
        assert call_of(fd, 0) == tokens[0].fileno()  # the first keeps its call
        first.stop()
        first.start()  # and goes on as before
        assert call_of(fd, 0) == tokens[0].fileno()
    assert call_of(fd, 0) is None
    with second:  # free again once the first closed
        assert call_of(fd, 0) == tokens[1].fileno()


def test_producers_of_two_virtqueues_share_the_fd(
    device: tuple[Device, int], tokens: list[irqbypass.Eventfd]
) -> None:
    (cls, fake, call_of), fd = device
    queue0, queue1 = (
        cls(token=token, seam=fake, device_fd=fd, queue=queue, name=f"q{queue}")
        for queue, token in enumerate(tokens)
    )
    with queue0:
        with queue1:
            assert (call_of(fd, 0), call_of(fd, 1)) == (tokens[0].fileno(), tokens[1].fileno())
        assert (call_of(fd, 0), call_of(fd, 1)) == (tokens[0].fileno(), None)
