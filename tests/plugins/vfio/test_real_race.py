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

import contextlib
import os
import time

import irqbypass
import pytest
from edu import Edu
from irqbypass_vfio import VfioProducer
from realdevice import (
    CountingConsumer,
    StopStartCycles,
    eventfd_count,
    paired,
    report_race,
    wait_until,
)

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


def measure(token: irqbypass.Eventfd, quiesce: str, cycling: bool) -> dict[str, float]:
    p = VfioProducer(token=token, device=EDU, index="msi", msi_quiesce=quiesce)
    with paired(p, token) as consumer:
        edu = Edu(p.fd or -1)
        cycles = StopStartCycles(p) if cycling else None
        started = time.monotonic()
        lost_waits = 0
        with cycles or contextlib.nullcontext():
            for _ in range(RAISES):
                before = seen(p, consumer, token)
                edu.raise_irq()
                # paced by the interrupt itself: wait until it reached the token or
                # the holding eventfd, so no two MSIs are ever pending together
                if not wait_until(lambda b=before: seen(p, consumer, token) > b, LOST_AFTER_S):
                    lost_waits += 1
                edu.ack()
        elapsed = time.monotonic() - started
        # everything raised has been handled by now; take what is left in flight
        consumer.wait_for(RAISES, timeout=2.0)
        stats = p.stats()
    return {
        "raised": RAISES,
        "delivered": consumer.count,
        "lost": RAISES - consumer.count,
        "cycles": cycles.cycles if cycles else 0,
        "held": stats["held"],
        "timed_out": lost_waits,
        "seconds": round(elapsed, 2),
    }


def report(name: str, figures: dict[str, float]) -> None:
    report_race(name, {"quiesce": name, **figures})


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
