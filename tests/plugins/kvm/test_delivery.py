"""Interrupts really reach a guest through the kvm-irqfd consumer, exactly."""

from __future__ import annotations

import time

import irqbypass
import pytest
from irqbypass_kvm import Guest, KvmIrqfdConsumer
from irqbypass_mock import MockProducer

N = 50


def fire_paced(producer: MockProducer, guest: Guest, n: int) -> None:
    """Fire ``n`` interrupts, each after the guest counted the previous one."""
    start = guest.count
    for i in range(1, n + 1):
        producer.fire()
        assert guest.wait_count(start + i), (
            f"the guest stopped at {guest.count}, error {guest.error}"
        )


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_mock_to_guest_through_the_manager_exactly(guest: Guest, token: irqbypass.Eventfd) -> None:
    producer = MockProducer(token=token, count=0, name="dev0")
    consumer = KvmIrqfdConsumer(token=token, vm=guest, name="irqfd0")
    mgr = irqbypass.Manager()
    consumer.open()
    producer.open()
    try:
        mgr.register_consumer(consumer)
        mgr.register_producer(producer)
        assert consumer.producer is producer and consumer.paired_with == "dev0"

        fire_paced(producer, guest, N)
        assert guest.count == N
        assert consumer.stats()["delivered"] == N
        assert producer.stats()["fired"] == N
        assert producer.stats()["eventfd"] == N  # no direct path: the irqfd is the path

        consumer.close()
        assert not consumer.assigned
        producer.fire(3)
        # nobody consumed them: KVM no longer listens to the eventfd
        assert token.read(timeout=0) == 3
        assert guest.count == N

        consumer.open()
        assert consumer.assigned
        fire_paced(producer, guest, N)
        assert guest.count == 2 * N
        assert token.read(timeout=0) == 0  # KVM took every write
    finally:
        mgr.unregister_producer(producer)
        mgr.unregister_consumer(consumer)
        producer.close()
        consumer.close()
    assert consumer.producer is None and consumer.paired_with is None


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_own_guest_counts_and_reports_delivered(kvm_usable: None, token: irqbypass.Eventfd) -> None:
    consumer = KvmIrqfdConsumer(token=token, vm="guest", gsi=9, name="own")
    assert "delivered" in consumer.stats() and consumer.stats()["delivered"] == 0
    consumer.open()
    try:
        guest = consumer.guest
        assert guest is not None and guest.line == 9 and guest.vector == 0x29
        for i in range(1, 11):
            token.write()
            assert guest.wait_count(i)
        assert consumer.stats()["delivered"] == 10
        assert "guest counted 10" in consumer.status()
    finally:
        consumer.close()
    assert consumer.guest is None
    assert consumer.stats()["delivered"] == 10  # what the guest counted before it went


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_edge_line_latches_one_interrupt_while_the_guest_is_busy(
    guest: Guest, token: irqbypass.Eventfd
) -> None:
    """The contrast to resample: on an edge line, writes made while the guest
    is in its handler leave one latched interrupt that arrives without any new
    write."""
    consumer = KvmIrqfdConsumer(token=token, vm=guest)
    with consumer:
        guest.hold_acks()
        token.write()
        assert guest.wait_count(1)
        token.write(3)
        guest.release_acks()
        assert guest.wait_count(2)


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_resample_redelivers_only_after_the_guests_eoi(
    level_guest: Guest, token: irqbypass.Eventfd
) -> None:
    guest = level_guest
    consumer = KvmIrqfdConsumer(token=token, vm=guest, resample=True)
    with consumer:
        resample = consumer.resample_eventfd
        assert resample is not None
        guest.hold_acks()  # the guest waits in its handler, before its EOI
        token.write()
        assert guest.wait_count(1)
        token.write(3)  # the line is still asserted: these change nothing
        assert token.read(timeout=0) == 0  # KVM consumed them...
        assert resample.read(timeout=0) == 0  # ...and no EOI yet, so no resample
        assert guest.count == 1
        # KVM consumed the writes synchronously but injects from a kworker; let
        # those (no-op) injections run before the EOI, or a late one would
        # re-raise the line after it and look like a re-delivery
        time.sleep(0.05)

        guest.release_acks()  # EOI: KVM lowers the line and signals resample
        assert resample.read(timeout=10) == 1
        assert guest.count == 1

        # the device still wants service: it signals again, once per resample
        for i in range(2, 6):
            token.write()
            assert resample.read(timeout=10) == 1
            assert guest.count == i
        assert guest.count == 5


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_resample_with_own_guest_uses_a_level_line(
    kvm_usable: None, token: irqbypass.Eventfd
) -> None:
    consumer = KvmIrqfdConsumer(token=token, vm="guest", gsi=10, resample=True)
    with consumer:
        assert consumer.guest is not None and consumer.guest.level
        resample = consumer.resample_eventfd
        assert resample is not None
        for i in range(1, 4):
            token.write()
            assert resample.read(timeout=10) == 1
            assert consumer.guest.count == i
    assert consumer.resample_eventfd is None


@pytest.mark.guest("kvm")
def test_stop_and_start_call_the_vmm_hooks(guest: Guest, token: irqbypass.Eventfd) -> None:
    calls: list[str] = []
    producer = MockProducer(token=token, count=0)
    consumer = KvmIrqfdConsumer(
        token=token,
        vm=guest,
        on_stop=lambda c: calls.append(f"stop {c.name}"),
        on_start=lambda c: calls.append(f"start {c.name}"),
        name="c",
    )
    mgr = irqbypass.Manager()
    mgr.register_producer(producer)
    mgr.register_consumer(consumer)
    assert calls == ["stop c", "start c"]
    assert consumer.stats()["paired"] == 1
    assert "paired with" in consumer.status()
    mgr.unregister_producer(producer)
    assert calls == ["stop c", "start c", "stop c", "start c"]
    assert consumer.stats()["stops"] == 2 and consumer.stats()["starts"] == 2
    assert consumer.stats()["paired"] == 0
    mgr.unregister_consumer(consumer)


@pytest.mark.guest("kvm")
def test_default_stop_and_start_do_nothing(guest: Guest, token: irqbypass.Eventfd) -> None:
    consumer = KvmIrqfdConsumer(token=token, vm=guest)
    with consumer:
        consumer.stop()
        token.write()
        assert guest.wait_count(1)  # not paused: the default hook does nothing
        consumer.start()
