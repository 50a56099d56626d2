"""Kernel vhost-net into a KVM guest: frames played into a tap, received by
vhost-net, whose call signal goes through the vhost producer into a kvm-irqfd
consumer paired by a Manager, injected by KVM into the kvm plugin's x2APIC
guest, which counts every call; this process never reads the eventfd. In the
test guest with the kvm and vdpa families (6.1: kvm_amd on TCG's SVM, Debian's
vhost_net and tun). Frames are paced: each is waited for before the next.
"""

from __future__ import annotations

import irqbypass
import pytest
from irqbypass_kvm import Guest, KvmIrqfdConsumer, MsiRoute
from irqbypass_vhost import VhostProducer
from realdevice import WAIT_S, wait_until

from .test_real import receive_one, receiving

pytestmark = pytest.mark.guest("kvm", "vdpa")

VECTOR = 0x52
N = 20


def test_every_received_frame_is_one_interrupt_in_the_kvm_guest(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    """N frames, each one call and one interrupt on the guest's vector; after
    close() the frame is still received, and nothing reaches the guest."""
    with receiving() as (fd, driver), Guest(apic="x2apic") as guest:
        consumer = KvmIrqfdConsumer(
            token=token, vm=guest, msi=MsiRoute(0xFEE00000, VECTOR), name="irqfd"
        )
        producer = VhostProducer(token=token, device_fd=fd, queue=0, name="rx")
        mgr = irqbypass.Manager()
        with consumer:
            with producer:
                mgr.register_consumer(consumer)
                mgr.register_producer(producer)
                try:
                    assert consumer.paired_with == "rx"
                    for i in range(1, N + 1):
                        receive_one(driver, i)
                        assert guest.wait_count(i, WAIT_S), f"frame {i}: {guest.count}"
                        assert driver.queues[0].used_idx() == i
                finally:
                    mgr.unregister_producer(producer)
                    mgr.unregister_consumer(consumer)
            receive_one(driver, N + 1)  # unbound: received, nothing signals the token
            assert wait_until(lambda: driver.queues[0].used_idx() == N + 1)
            assert not guest.wait_count(N + 1, 0.5)
            assert guest.vector_counts() == {VECTOR: N}
