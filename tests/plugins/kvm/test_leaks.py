"""Many cycles leave no fd, mapping or thread behind.

In the test guests the cycles are fewer and run on one kernel: there KVM runs
nested under TCG, where each irqfd deassign and routing change waits for an
SRCU grace period, and what they prove (our own fds, mappings and threads)
does not depend on the kernel; the host runs them all where its /dev/kvm works.
"""

from __future__ import annotations

import os

import irqbypass
import pytest
from irqbypass_kvm import Guest, KvmIrqfdConsumer
from irqbypass_mock import MockProducer

IN_GUEST = bool(os.environ.get("IRQBYPASS_IN_GUEST"))
#: register/unregister cycles, and guests created and destroyed
CYCLES, GUESTS = (100, 10) if IN_GUEST else (1000, 100)


@pytest.mark.guest("kvm", kernels=("6.12",))
@pytest.mark.usefixtures("no_fd_leak")
def test_register_unregister_cycles(guest: Guest, token: irqbypass.Eventfd) -> None:
    mgr = irqbypass.Manager()
    producer = MockProducer(token=token, count=0)
    producer.open()
    try:
        for i in range(CYCLES):
            consumer = KvmIrqfdConsumer(token=token, vm=guest, resample=False)
            consumer.open()
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            assert consumer.producer is producer
            if i % (CYCLES // 10) == 0:
                producer.fire()
                assert guest.wait_count(i // (CYCLES // 10) + 1)
            mgr.unregister_producer(producer)
            mgr.unregister_consumer(consumer)
            consumer.close()
    finally:
        producer.close()
    assert guest.count == 10


@pytest.mark.guest("kvm", kernels=("6.12",))
@pytest.mark.usefixtures("no_fd_leak")
def test_guest_create_destroy_cycles(kvm_usable: None, token: irqbypass.Eventfd) -> None:
    for i in range(GUESTS):
        consumer = KvmIrqfdConsumer(token=token, vm="guest", gsi=5, resample=i % 2 == 1)
        consumer.open()
        token.write()
        assert consumer.guest is not None and consumer.guest.wait_count(1)
        if consumer.resample_eventfd is not None:
            # wait for the EOI: deassigning while the line is still asserted lets
            # the guest take it again until KVM lowers it (see docs, Limits)
            assert consumer.resample_eventfd.read(timeout=10) == 1
        consumer.close()
        assert consumer.stats()["delivered"] == 1, f"cycle {i}, resample={i % 2 == 1}"


@pytest.mark.guest("kvm", kernels=("6.12",))
@pytest.mark.usefixtures("no_fd_leak")
def test_guest_with_eventfd_acks_closes_everything(kvm_usable: None) -> None:
    for _ in range(GUESTS // 5):
        with Guest(line=7, ack="eventfd") as guest:
            assert guest.vm is not None and guest.ack_eventfd is not None
            guest.vm.irq_line(7, 1)
            guest.vm.irq_line(7, 0)
            assert guest.ack_eventfd.read(timeout=10) == 1
            assert guest.count == 1 and guest.acks == 0  # the ack never left the kernel


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_a_guest_started_again_after_close_runs_and_counts(kvm_usable: None) -> None:
    guest = Guest(line=5)
    try:
        guest.start()
        assert guest.vm is not None
        guest.vm.irq_line(5, 1)
        guest.vm.irq_line(5, 0)
        assert guest.wait_count(1)
        guest.close()
        guest.start()  # a fresh VM: it must run, not return a stopped guest
        assert guest.running and guest.error is None
        assert guest.vm is not None
        guest.vm.irq_line(5, 1)
        guest.vm.irq_line(5, 0)
        assert guest.wait_count(1)
    finally:
        guest.close()


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_close_releases_everything_when_the_ack_deassign_fails(
    kvm_usable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing KVM_IOEVENTFD deassign is reported, and still nothing leaks."""
    from irqbypass_kvm import _abi
    from irqbypass_kvm import guest as guest_module

    real_ioctl = guest_module.ioctl

    def failing(fd: int, request: int, arg: object, what: str) -> object:
        if request == _abi.KVM_IOEVENTFD and "deassign" in what:
            raise irqbypass.DeviceError("KVM_IOEVENTFD deassign failed (injected)")
        return real_ioctl(fd, request, arg, what)

    guest = Guest(line=5, ack="eventfd")
    guest.start()
    monkeypatch.setattr(guest_module, "ioctl", failing)
    with pytest.raises(irqbypass.DeviceError, match="injected"):
        guest.close()
    assert guest.vm is None and guest.ack_eventfd is None
