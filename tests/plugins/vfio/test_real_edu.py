"""The vfio producer on the real vfio-pci driver, with a device that really fires.

Runs in the vfio test guest (tests/guest; on the host these tests report the
guest's results): QEMU's ``edu`` PCI device behind an emulated intel-iommu,
bound to vfio-pci. Writing BAR0+0x60 raises an interrupt (MSI when enabled,
else the INTx line, which stays asserted until BAR0+0x64 acks it). Every count
is exact: interrupts are raised one at a time and each is waited for, as
back-to-back MSIs coalesce in the APIC. ``IRQBYPASS_TEST_VFIO_EDU`` names the
edu's PCI address; ``IRQBYPASS_TEST_VFIO_NONVIABLE`` a group that is not
viable (an edu next to a virtio device behind one PCI bridge).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

import irqbypass
import pytest
from edu import Edu, device_fd, group_of
from irqbypass_vfio import VfioProducer
from realdevice import CountingConsumer, open_fd_count, paired, readable, wait_until

pytestmark = pytest.mark.guest("vfio")

EDU = os.environ.get("IRQBYPASS_TEST_VFIO_EDU", "")


def need_edu() -> None:
    if not EDU:
        pytest.skip("no edu device: these run in the vfio test guest (make guest-test)")


def fire(edu: Edu, consumer: CountingConsumer, intx: bool = False) -> int:
    """Raise one interrupt and wait for it; ack it (and unmask INTx)."""
    before = consumer.count
    edu.raise_irq()
    got = consumer.wait_for(before + 1)
    edu.ack()
    if intx:
        assert wait_until(lambda: edu.status() == 0)
        edu.unmask_intx()
    return got - before


# -- every way to open ---------------------------------------------------------


@pytest.mark.parametrize("how", ["pci-address", "group", "device-fd"])
def test_msi_counted_exactly_every_way_to_open(
    no_fd_leak: None, token: irqbypass.Eventfd, how: str
) -> None:
    need_edu()
    with device_fd(EDU) if how == "device-fd" else _nothing() as handed:
        if how == "pci-address":
            p = VfioProducer(token=token, device=EDU, index="msi", name=how)
        elif how == "group":
            p = VfioProducer(token=token, device=group_of(EDU), device_name=EDU, index="msi")
        else:
            p = VfioProducer(token=token, device_fd=handed, index="msi", name=how)
        with paired(p, token) as consumer:
            assert p.mode == {"pci-address": "group", "group": "group", "device-fd": "fd"}[how]
            assert p.irq_info is not None and p.irq_info.count == 1  # edu: one MSI vector
            edu = Edu(p.fd or -1)
            for i in range(1, 21):
                assert fire(edu, consumer) == 1
                assert consumer.count == i
        assert consumer.added == [f"add {p.name}", f"del {p.name}"]
        assert consumer.count == 20


@contextmanager
def _nothing() -> Iterator[int]:
    yield -1


def test_intx_counted_exactly(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    need_edu()
    p = VfioProducer(token=token, device=EDU, index="intx")
    with paired(p, token) as consumer:
        assert p.irq_info is not None and p.irq_info.maskable and p.irq_info.automasked
        edu = Edu(p.fd or -1)
        for i in range(1, 11):
            assert fire(edu, consumer, intx=True) == 1
            assert consumer.count == i


# -- stop/start is lossless -------------------------------------------------


def test_msi_raised_while_stopped_arrives_once(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    """The default quiesce ("keep") leaves the trigger on the token: an MSI
    raised while stopped is in its counter, delivered exactly once."""
    need_edu()
    p = VfioProducer(token=token, device=EDU, index="msi")
    with paired(p, token) as consumer:
        assert p.quiesce == "keep"
        edu = Edu(p.fd or -1)
        for cycle in range(1, 6):
            p.stop()
            assert p.attached_to == token.fileno()
            assert fire(edu, consumer) == 1
            p.start()
            assert fire(edu, consumer) == 1
            assert consumer.count == 2 * cycle
        assert p.stats()["quiesces"] == 1 + 5 and p.stats()["held"] == 0  # 1: the pairing


def test_msi_raised_while_swapped_out_arrives_once_after_start(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    need_edu()
    p = VfioProducer(token=token, device=EDU, index="msi", msi_quiesce="swap")
    with paired(p, token) as consumer:
        edu = Edu(p.fd or -1)
        for cycle in range(1, 6):
            p.stop()
            hold = p.attached_to
            assert hold is not None and hold != token.fileno()
            edu.raise_irq()
            assert readable(hold)  # the MSI landed on the holding eventfd
            edu.ack()
            assert consumer.count == 2 * (cycle - 1)
            p.start()
            assert consumer.wait_for(2 * cycle - 1) == 2 * cycle - 1
            assert fire(edu, consumer) == 1  # and the token is back
        assert p.stats()["held"] == p.stats()["replayed"] == 5
    assert consumer.count == 10


def test_intx_raised_while_masked_signals_once_on_unmask(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    need_edu()
    p = VfioProducer(token=token, device=EDU, index="intx")
    with paired(p, token) as consumer:
        assert p.quiesce == "mask"
        edu = Edu(p.fd or -1)
        for cycle in range(1, 4):
            p.stop()
            edu.raise_irq()
            edu.raise_irq()  # a level line: raised twice, one signal
            assert wait_until(lambda: edu.status() != 0)
            assert not readable(token.fileno(), 0.2) and consumer.count == 2 * (cycle - 1)
            p.start()
            assert consumer.wait_for(2 * cycle - 1) == 2 * cycle - 1
            edu.ack()
            assert wait_until(lambda: edu.status() == 0)
            edu.unmask_intx()
            assert fire(edu, consumer, intx=True) == 1
        assert p.stats()["held"] == 0  # INTx waits in the device, not in a holding eventfd


# -- close ---------------------------------------------------------------------


def test_close_detaches_the_vector_and_leaves_a_handed_fd_open(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    need_edu()
    with device_fd(EDU) as fd:
        edu = Edu(fd)
        p = VfioProducer(token=token, device_fd=fd, index="msi")
        with paired(p, token) as consumer:
            assert fire(edu, consumer) == 1
        os.fstat(fd)  # still open: the VMM's
        edu.raise_irq()  # detached: nothing signals the token
        assert not readable(token.fileno(), 0.5)
        edu.ack()
        # the index stays enabled with no trigger; the VMM can attach again
        again = VfioProducer(token=token, device_fd=fd, index="msi")
        with paired(again, token) as consumer2:
            assert fire(edu, consumer2) == 1


def test_close_while_stopped_unmasks_intx_for_the_vmm(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    need_edu()
    with device_fd(EDU) as fd:
        edu = Edu(fd)
        p = VfioProducer(token=token, device_fd=fd, index="intx")
        p.open()
        p.stop()
        p.close()
        with irqbypass.Eventfd() as other:
            q = VfioProducer(token=other, device_fd=fd, index="intx")
            with paired(q, other) as consumer:
                assert fire(edu, consumer, intx=True) == 1


# -- the documented errors, from the real driver ---------------------------------


def test_another_index_already_enabled_is_refused_with_einval(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    need_edu()
    with (
        device_fd(EDU) as fd,
        irqbypass.Eventfd() as other,
        VfioProducer(token=token, device_fd=fd, index="msi"),
    ):
        q = VfioProducer(token=other, device_fd=fd, index="intx")
        with pytest.raises(irqbypass.DeviceError) as err:
            q.open()
        assert err.value.errno == errno.EINVAL
        assert "only one of INTx, MSI and MSI-X at a time" in str(err.value)
        assert q.fd is None and q.attached_to is None


def test_vector_out_of_range_is_refused(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    need_edu()
    p = VfioProducer(token=token, device=EDU, index="msi", vector=1)
    with pytest.raises(irqbypass.DeviceError) as err:
        p.open()
    assert err.value.errno == errno.EINVAL
    assert "vector 1 is out of range: msi has 1 vector(s), 0..0" in str(err.value)
    msix = VfioProducer(token=token, device=EDU, index="msix")
    with pytest.raises(irqbypass.DeviceError) as err:
        msix.open()  # edu has no MSI-X
    assert "no msix interrupts" in str(err.value)


def test_a_group_not_viable_is_refused(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    group = os.environ.get("IRQBYPASS_TEST_VFIO_NONVIABLE", "")
    name = os.environ.get("IRQBYPASS_TEST_VFIO_NONVIABLE_NAME", "")
    if not group:
        pytest.skip("no non-viable group: these run in the vfio test guest (make guest-test)")
    p = VfioProducer(token=token, device=group, device_name=name, index="msi")
    with pytest.raises(irqbypass.DeviceError) as err:
        p.open()
    assert err.value.errno == errno.EPERM
    assert f"VFIO group {group} is not viable" in str(err.value)
    by_address = VfioProducer(token=token, device=name, index="msi")
    with pytest.raises(irqbypass.DeviceError) as err:
        by_address.open()
    assert err.value.errno == errno.EPERM


# -- no fd left ------------------------------------------------------------------


# our own fds over 1000 cycles, whatever the kernel: on 6.1 only (70 s under TCG),
# the budget of make test is the 2 cores the two guests share with the host's tests
@pytest.mark.guest("vfio", kernels=("6.1",))
def test_no_fd_left_after_1000_open_close_cycles(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    need_edu()
    before = open_fd_count()
    p = VfioProducer(token=token, device=EDU, index="msi")
    for _ in range(1000):
        p.open()
        p.close()
    assert open_fd_count() == before
    with paired(p, token) as consumer:  # and it still works
        assert fire(Edu(p.fd or -1), consumer) == 1
