"""vhost-vdpa into a KVM guest: vdpa_sim_blk's virtqueue call, through the vdpa
producer, into a kvm-irqfd consumer paired by a Manager, injected by KVM into
the kvm plugin's x2APIC guest, which counts every completion; this process
never reads the eventfd. In the test guest with the kvm and vdpa families
(6.1: kvm_amd on TCG's SVM, vdpa_sim). Completions are paced: each is waited
for before the next.
"""

from __future__ import annotations

import os

import irqbypass
import pytest
from irqbypass_kvm import Guest, KvmIrqfdConsumer, MsiRoute
from irqbypass_vdpa import VdpaProducer
from realdevice import WAIT_S, eventfd_count, wait_until
from virtio_driver import VirtioDriver

pytestmark = pytest.mark.guest("kvm", "vdpa")

BLK = os.environ.get("IRQBYPASS_TEST_VDPA_BLK", "")
VECTOR = 0x51
N = 20


def test_every_completion_reaches_the_kvm_guest_across_stop_start(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    """N completions, each counted once on the guest's vector; then, three
    times, a completion while stopped lands on the producer's holding eventfd
    (vhost-vdpa swaps the call under the virtqueue's mutex), the guest sees
    nothing, and start() replays it into the token: KVM injects it, once. (A
    burst of several would be one eventfd write, so one interrupt: one at a
    time, every completion is counted in the guest.)"""
    if not BLK:
        pytest.skip("no vdpa_sim_blk: this runs in the test guest (make guest-test)")
    with Guest(apic="x2apic") as guest:
        consumer = KvmIrqfdConsumer(
            token=token, vm=guest, msi=MsiRoute(0xFEE00000, VECTOR), name="irqfd"
        )
        producer = VdpaProducer(token=token, device=BLK, require_driver_ok=False, name="blk")
        mgr = irqbypass.Manager()
        with consumer, producer:
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            try:
                assert producer.fd is not None and consumer.paired_with == "blk"
                with VirtioDriver(producer.fd, [0]) as driver:
                    driver.start()  # after the bind: a reset would drop the call eventfd
                    for i in range(1, N + 1):
                        driver.get_id(0)
                        assert guest.wait_count(i, WAIT_S), f"completion {i}: {guest.count}"
                    expected = N
                    for _ in range(3):
                        producer.stop()
                        hold = producer.bound_to
                        assert hold is not None and hold != token.fileno()
                        driver.get_id(0)
                        assert wait_until(lambda h=hold: eventfd_count(h) == 1)
                        assert guest.count == expected  # held, not injected
                        producer.start()  # replayed into the token: KVM injects it
                        expected += 1
                        assert guest.wait_count(expected, WAIT_S), guest.count
                    driver.get_id(0)
                    expected += 1
                    assert guest.wait_count(expected, WAIT_S)
                    assert not guest.wait_count(expected + 1, 0.5)
                    assert guest.vector_counts() == {VECTOR: expected}
                    assert driver.queues[0].used_idx() == N + 3 + 1
                    stats = producer.stats()
                    assert stats["held"] == stats["replayed"] == 3, stats
            finally:
                mgr.unregister_producer(producer)
                mgr.unregister_consumer(consumer)
