"""The PIC guest counts an interrupt once even if a hypervisor delivers it twice.

With KVM nested under QEMU's TCG (the test guest's kvm family), the kvm
plugin's PIC guest counted one interrupt more than was raised, now and then,
on Linux 6.12 (docs/testing.md, "KVM nested under TCG"): an event delivered
again after the exit that the handler's acknowledgement causes. The handler
runs with interrupts off, so nothing but such a re-injection can enter it
while it runs: it counts those apart (:attr:`Guest.reentered`). Here one is
provoked on purpose, as the nested hypervisor would: KVM_SET_VCPU_EVENTS with
the line's vector as an injected interrupt, from the vCPU thread while it is
stopped at the handler's acknowledgement.
"""

from __future__ import annotations

import ctypes
import fcntl

import irqbypass
import pytest
from irqbypass_kvm import Guest, KvmIrqfdConsumer
from irqbypass_mock import MockProducer

KVMIO = 0xAE


class kvm_vcpu_events(ctypes.Structure):
    """<linux/kvm.h> (x86): the vCPU's pending and injected events."""

    _fields_ = [
        ("exception", ctypes.c_uint8 * 4),  # injected, nr, has_error_code, pending
        ("exception_error_code", ctypes.c_uint32),
        ("interrupt_injected", ctypes.c_uint8),
        ("interrupt_nr", ctypes.c_uint8),
        ("interrupt_soft", ctypes.c_uint8),
        ("interrupt_shadow", ctypes.c_uint8),
        ("nmi", ctypes.c_uint8 * 4),
        ("sipi_vector", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("smi", ctypes.c_uint8 * 4),
        ("triple_fault", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8 * 26),
        ("exception_has_payload", ctypes.c_uint8),
        ("exception_payload", ctypes.c_uint64),
    ]


assert ctypes.sizeof(kvm_vcpu_events) == 64
KVM_GET_VCPU_EVENTS = (2 << 30) | (64 << 16) | (KVMIO << 8) | 0x9F
KVM_SET_VCPU_EVENTS = (1 << 30) | (64 << 16) | (KVMIO << 8) | 0xA0


def reinject(vcpu_fd: int, vector: int) -> None:
    """Make the vCPU's next entry deliver ``vector`` as an injected interrupt
    (as a nested hypervisor re-injects an event from EXITINTINFO)."""
    events = kvm_vcpu_events()
    fcntl.ioctl(vcpu_fd, KVM_GET_VCPU_EVENTS, events)
    events.interrupt_injected, events.interrupt_nr, events.interrupt_soft = 1, vector, 0
    events.flags = 0  # nothing else of the state is set
    fcntl.ioctl(vcpu_fd, KVM_SET_VCPU_EVENTS, events)


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_a_reinjected_interrupt_is_counted_apart(guest: Guest, token: irqbypass.Eventfd) -> None:
    producer = MockProducer(token=token, count=0, name="dev0")
    consumer = KvmIrqfdConsumer(token=token, vm=guest, name="irqfd0")
    mgr = irqbypass.Manager()
    reinjected: list[int] = []

    def once(acks: int) -> None:  # the vCPU thread, stopped at the handler's ack
        if acks == 2:
            reinject(guest._vcpu_fd, guest.vector)  # the test reaches in: no API for this
            reinjected.append(acks)

    guest.on_ack = once
    with consumer, producer:
        mgr.register_consumer(consumer)
        mgr.register_producer(producer)
        for i in range(1, 4):
            producer.fire()
            assert guest.wait_count(i), f"the guest stopped at {guest.count}, error {guest.error}"
        mgr.unregister_producer(producer)
        mgr.unregister_consumer(consumer)
    assert reinjected == [2]
    assert (guest.count, guest.reentered, guest.acks) == (3, 1, 3)
