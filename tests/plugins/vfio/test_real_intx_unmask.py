"""INTx unmasked at the guest's EOI on the real vfio-pci driver (issue 19 item 4):
QEMU's edu in the vfio test guest, its INTx producer paired with a consumer that
offers an EOI eventfd. The guest has no KVM, so the consumer is a stand-in for a
kvm-irqfd consumer in resample mode: the test writes its EOI eventfd where KVM
would at the guest's EOI, and vfio-pci's virqfd unmasks the line; no
userspace unmask ioctl is made."""

from __future__ import annotations

import os
from collections.abc import Hashable

import irqbypass
import pytest
from edu import Edu
from irqbypass_vfio import VfioProducer
from realdevice import CountingConsumer, wait_until

pytestmark = pytest.mark.guest("vfio")

EDU = os.environ.get("IRQBYPASS_TEST_VFIO_EDU", "")
QUIET_S = 0.5


class EoiCountingConsumer(CountingConsumer):
    """Counts its token; offers ``eoi`` as its EOI eventfd (KVM's resamplefd)."""

    def __init__(self, *, token: Hashable, eoi: irqbypass.Eventfd) -> None:
        super().__init__(token=token, name="resample")
        self.eoi = eoi

    @property
    def eoi_eventfd(self) -> irqbypass.Eventfd | None:
        return self.eoi


def stays(consumer: CountingConsumer, count: int) -> bool:
    """The count is still ``count`` after a bounded wait (it can miss a late one)."""
    return consumer.wait_for(count + 1, QUIET_S) == count


def test_the_eoi_eventfd_unmasks_intx_and_unpairing_takes_it_back(no_fd_leak: None) -> None:
    if not EDU:
        pytest.skip("no edu device: this runs in the vfio test guest (make guest-test)")
    with irqbypass.Eventfd() as token, irqbypass.Eventfd() as eoi:
        p = VfioProducer(token=token, device=EDU, index="intx", name="line")
        consumer = EoiCountingConsumer(token=token, eoi=eoi)
        mgr = irqbypass.Manager()
        with p, consumer:
            assert p.fd is not None
            edu = Edu(p.fd)
            mgr.register_consumer(consumer)
            mgr.register_producer(p)  # add_consumer: SET_IRQS(DATA_EVENTFD|ACTION_UNMASK)

            def raise_and_ack(expected: int) -> None:
                edu.raise_irq()
                assert consumer.wait_for(expected) == expected
                edu.ack()
                assert wait_until(lambda: edu.status() == 0)

            for i in range(10):  # each EOI unmasks: every interrupt arrives
                raise_and_ack(i + 1)
                eoi.write(1)  # the guest's EOI, where KVM would signal its resamplefd
            # without the EOI the line stays masked (vfio-pci automasks INTx)
            raise_and_ack(11)
            edu.raise_irq()
            assert stays(consumer, 11)
            eoi.write(1)  # now the kernel unmasks, and the asserted line signals
            assert consumer.wait_for(12) == 12
            edu.ack()
            assert wait_until(lambda: edu.status() == 0)
            eoi.write(1)
            raise_and_ack(13)
            mgr.unregister_producer(p)  # del_consumer: the unmask eventfd taken back
            # the line (automasked by the 13th) was unmasked by the unpairing's start
            raise_and_ack(14)
            eoi.write(1)  # no longer wired: this unmasks nothing
            edu.raise_irq()
            assert stays(consumer, 14)
            edu.ack()
            mgr.unregister_consumer(consumer)
