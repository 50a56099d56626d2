"""The quiesce race on the real vfio-pci driver, measured.

vfio-pci cannot mask MSI, so to quiesce an MSI vector the producer swaps its
trigger to a holding eventfd; vfio-pci does that swap with free_irq() and
request_irq(), and an MSI that lands between the two has no handler. Here one
thread raises edu MSIs, paced so none coalesce, while another runs stop/start
cycles, and every quiesce the producer offers is measured side by side with a
control run without cycles: raised vs delivered (read by a Manager-paired
consumer once all is replayed). The figures go to stdout and to
``$IRQBYPASS_GUEST_OUT/race-<quiesce>.json``; docs/testing.md shows them.
Runs in the vfio test guest.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import irqbypass
import pytest
from edu import Edu
from irqbypass_vfio import VfioProducer
from realdevice import CountingConsumer, eventfd_count, wait_until

pytestmark = pytest.mark.guest("vfio")

EDU = os.environ.get("IRQBYPASS_TEST_VFIO_EDU", "")
RAISES = int(os.environ.get("IRQBYPASS_RACE_RAISES", "500"))
LOST_AFTER_S = 0.5  # an MSI not seen by then was lost (the control run shows none is slower)


def seen(p: VfioProducer, consumer: CountingConsumer, token: irqbypass.Eventfd) -> int:
    """Interrupts delivered so far, plus those held while stopped (an
    upper bound while a replay moves them: the wait only needs "more")."""
    hold = p.attached_to
    held = eventfd_count(hold) if hold is not None and hold != token.fileno() else 0
    return held + consumer.count


@pytest.fixture
def token() -> Iterator[irqbypass.Eventfd]:
    with irqbypass.Eventfd() as eventfd:
        yield eventfd


def measure(token: irqbypass.Eventfd, quiesce: str, cycling: bool) -> dict[str, float]:
    p = VfioProducer(token=token, device=EDU, index="msi", msi_quiesce=quiesce)
    consumer = CountingConsumer(token=token)
    mgr = irqbypass.Manager()
    done = threading.Event()
    cycles = 0

    def cycle() -> None:
        nonlocal cycles
        while not done.is_set():
            p.stop()
            p.start()
            cycles += 1

    with p, consumer:
        mgr.register_consumer(consumer)
        mgr.register_producer(p)
        edu = Edu(p.fd or -1)
        cycler = threading.Thread(target=cycle, name="stop-start")
        if cycling:
            cycler.start()
        started = time.monotonic()
        lost_waits = 0
        try:
            for _ in range(RAISES):
                before = seen(p, consumer, token)
                edu.raise_irq()
                # paced by the interrupt itself: wait until it reached the token or
                # the holding eventfd, so no two MSIs are ever pending together
                if not wait_until(lambda b=before: seen(p, consumer, token) > b, LOST_AFTER_S):
                    lost_waits += 1
                edu.ack()
        finally:
            done.set()
            if cycling:
                cycler.join()
        elapsed = time.monotonic() - started
        # everything raised has been handled by now; take what is left in flight
        consumer.wait_for(RAISES, timeout=2.0)
        mgr.unregister_producer(p)
        mgr.unregister_consumer(consumer)
        stats = p.stats()
    return {
        "raised": RAISES,
        "delivered": consumer.count,
        "lost": RAISES - consumer.count,
        "cycles": cycles,
        "held": stats["held"],
        "timed_out": lost_waits,
        "seconds": round(elapsed, 2),
    }


def report(name: str, figures: dict[str, float]) -> None:
    line = json.dumps({"quiesce": name, **figures})
    print(f"race: {line}")
    out = os.environ.get("IRQBYPASS_GUEST_OUT")
    if out:
        with open(os.path.join(out, f"race-{name}.json"), "w") as f:
            f.write(line + "\n")


def test_race_raised_vs_delivered_under_stop_start_cycles(token: irqbypass.Eventfd) -> None:
    if not EDU:
        pytest.skip("no edu device: this runs in the vfio test guest (make guest-test)")
    control = measure(token, "swap", cycling=False)
    report("control", control)
    assert control["delivered"] == control["raised"]  # the pacing lets none coalesce
    results = {}
    for quiesce in ("swap", "keep"):
        results[quiesce] = measure(token, quiesce, cycling=True)
        report(quiesce, results[quiesce])
        assert results[quiesce]["delivered"] <= RAISES  # none counted twice
        assert results[quiesce]["cycles"] > 100
    # the default is the least lossy: it lost nothing
    assert results[VfioProducer.DEFAULT_MSI_QUIESCE]["lost"] == 0
