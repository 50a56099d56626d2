"""The quiesce race on the real vhost-vdpa driver, measured.

The vdpa producer quiesces by swapping the virtqueue's call eventfd
(VHOST_SET_VRING_CALL) to a holding eventfd and back. vhost-vdpa swaps the
eventfd pointer under the virtqueue's mutex, and the simulator's completion
reads it without that lock. So a completion either signals the old eventfd or
the new one, and none is lost. This test shows it: one thread completes
virtio-blk requests on vdpa_sim_blk one at a time, while another runs stop/start
cycles. Every completion must be delivered exactly once by the time the
producer is closed, because close() replays what the holding eventfd caught.
Runs in the vdpa test guest; the figures go to stdout and to
``$IRQBYPASS_GUEST_OUT/race-vdpa.json``.
"""

from __future__ import annotations

import os
import time

import irqbypass
import pytest
from irqbypass_vdpa import VdpaProducer
from realdevice import CountingConsumer, StopStartCycles, report_race, wait_until
from virtio_driver import VirtioDriver, set_owner

pytestmark = pytest.mark.guest("vdpa")

BLK = os.environ.get("IRQBYPASS_TEST_VDPA_BLK", "")
COMPLETIONS = int(os.environ.get("IRQBYPASS_RACE_COMPLETIONS", "1000"))


def test_race_completions_vs_delivered_under_stop_start_cycles(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    if not BLK:
        pytest.skip("no vdpa_sim_blk device: this runs in the vdpa test guest (make guest-test)")
    fd = os.open(BLK, os.O_RDWR | os.O_CLOEXEC)
    try:
        set_owner(fd)
        with VirtioDriver(fd, [0]) as driver:
            driver.start()
            queue = driver.queues[0]
            p = VdpaProducer(token=token, device_fd=fd)
            consumer = CountingConsumer(token=token)
            mgr = irqbypass.Manager()
            p.open()
            consumer.open()
            mgr.register_consumer(consumer)
            mgr.register_producer(p)
            with StopStartCycles(p) as cycling:
                started = time.monotonic()
                for i in range(1, COMPLETIONS + 1):
                    driver.get_id()
                    assert wait_until(lambda i=i: queue.used_idx() == i & 0xFFFF)
            elapsed = time.monotonic() - started
            mgr.unregister_producer(p)
            mgr.unregister_consumer(consumer)
            p.close()  # replays what the holding eventfd still has
            delivered = consumer.wait_for(COMPLETIONS)
            consumer.close()
    finally:
        os.close(fd)
    stats = p.stats()
    figures = {
        "quiesce": "swap (VHOST_SET_VRING_CALL)",
        "completed": COMPLETIONS,
        "delivered": delivered,
        "lost": COMPLETIONS - delivered,
        "cycles": cycling.cycles,
        "held": stats["held"],
        "seconds": round(elapsed, 2),
    }
    report_race("vdpa", figures)
    assert cycling.cycles > 100
    assert delivered == COMPLETIONS  # none lost, none twice
