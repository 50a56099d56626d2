"""The chain end to end: qemu-storage-daemon -> call eventfd -> kvm-irqfd
consumer -> the kvm plugin's own guest, which counts every interrupt while
this process never reads the eventfd."""

from __future__ import annotations

from collections.abc import Iterator

import irqbypass
import irqbypass_kvm
import pytest
from irqbypass_kvm import Guest, KvmIrqfdConsumer
from irqbypass_vhost_user import StorageDaemon, VhostUserProducer

from .conftest import complete, wait_for

# in both test guests (the kvm family: KVM nested under TCG, qemu-storage-daemon
# from the host's root filesystem) and on a host whose /dev/kvm works
pytestmark = [pytest.mark.guest("kvm"), pytest.mark.usefixtures("no_fd_leak")]

N = 300


@pytest.fixture
def guest(request: pytest.FixtureRequest) -> Iterator[Guest]:
    reason = irqbypass_kvm.unavailable_reason()
    if reason is not None:
        pytest.skip(f"/dev/kvm is unusable here: {reason}")
    with Guest(line=5) as running:
        yield running
        if running.reentered:  # not counted (Guest.reentered); noted for the docs' figures
            request.node.user_properties.append(("guest_reentered", running.reentered))


def counts(guest: Guest, n: int, what: str) -> None:
    wait_for(lambda: guest.count >= n, f"{what} (guest at {guest.count}, error {guest.error})")
    assert guest.count == n, f"{what}: the guest counted {guest.count}, not {n}"


def test_backend_to_guest_through_the_manager_exactly(
    daemon: StorageDaemon, token: irqbypass.Eventfd, guest: Guest
) -> None:
    consumer = KvmIrqfdConsumer(token=token, vm=guest, gsi=5, name="irqfd0")
    producer = VhostUserProducer(token=token, socket=daemon.socket_path, name="vq0")
    mgr = irqbypass.Manager()
    consumer.open()
    try:
        mgr.register_consumer(consumer)
        producer.open()
        counts(guest, 1, "open's phantom")  # libvhost-user's kick on the bound token
        mgr.register_producer(producer)
        assert consumer.producer is producer
        # pairing stopped an idle ring: nothing sent, no second phantom
        assert producer.stats()["phantom"] == 1 and producer.stats()["swaps"] == 0

        for i in range(1, N + 1):
            assert producer.submit(1) == 1
            counts(guest, 1 + i, f"completion {i}")
            complete(producer, 1)

        # stopped with an idle ring: a submitted request waits, unpublished
        producer.stop()
        assert producer.submit(1) == 1
        assert producer.ring is not None and producer.ring.unpublished == 1
        assert producer.ring.in_flight == 0 and guest.count == 1 + N
        producer.start()
        counts(guest, 1 + N + 1, "the deferred request")
        complete(producer, 1)
        stats = producer.stats()
        assert (stats["deferred"], stats["held"], stats["phantom"]) == (1, 0, 1)
        assert stats["completed"] == N + 1 and stats["failed"] == 0
        assert consumer.stats()["delivered"] == guest.count
        # this process never read the call eventfd: KVM took every signal
        assert token.read(0) == 0
    finally:
        mgr.unregister_producer(producer)
        mgr.unregister_consumer(consumer)
        producer.close()
        consumer.close()
