"""One open VFIO device: the device group the producers of its vectors share.

vfio-pci keeps a device's interrupt state per device, not per fd, and a group
node opens only once: so the producers of one device's vectors (one per MSI-X
vector) share one device fd, opened by the first to open and closed by the last
to close (:meth:`irqbypass.plugin.DeviceGroup.share`). The group's lock serializes
their ``VFIO_DEVICE_SET_IRQS`` calls with the bookkeeping those need: which
producer holds each vector (two on one vector would take each other's
trigger), and which MSI/MSI-X block this process enabled (on a ``NORESIZE``
index the first attach enables the whole block). A batch attaches each run of
consecutive vectors with one ``SET_IRQS``, as QEMU and cloud-hypervisor enable
a device's vectors.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

import irqbypass
import irqbypass.plugin

from . import _abi
from ._hints import ATTACH

if TYPE_CHECKING:
    from ._vector import VfioVector

__all__ = ["DISABLE", "EVENTFD_TRIGGER", "VfioDevice"]

EVENTFD_TRIGGER = _abi.VFIO_IRQ_SET_DATA_EVENTFD | _abi.VFIO_IRQ_SET_ACTION_TRIGGER
#: with start 0 and count 0: disable the index (vfio_pci_set_msi_trigger)
DISABLE = _abi.VFIO_IRQ_SET_DATA_NONE | _abi.VFIO_IRQ_SET_ACTION_TRIGGER


class VfioDevice(irqbypass.plugin.DeviceGroup):
    """A device fd and what the producers sharing it must agree on."""

    def __init__(
        self,
        calls: irqbypass.plugin.DeviceCalls,
        fd: int,
        owned: Sequence[int],
        mode: str,
        devid: int | None,
    ) -> None:
        super().__init__(fd, owned, calls)
        self.mode = mode  # "cdev", "group" or "fd"
        self.devid = devid
        #: index -> how many vectors this process enabled on it (NORESIZE blocks)
        self.blocks: dict[int, int] = {}
        #: GET_INFO (-1) and GET_IRQ_INFO (index) answers (they do not change while open)
        self.info: dict[int, object] = {}
        #: the group node the device was taken from (shared with the group's
        #: other devices): its share is given up after the device is closed
        self.node: irqbypass.plugin.DeviceGroup | None = None

    def close(self, failure: Callable[[int, OSError], irqbypass.DeviceError] | None = None) -> None:
        """Close the device (and what it owns), then give up the group node's
        share (the last closes the group, then the container); every step
        attempted, the first failure raised."""
        node, self.node = self.node, None
        first: irqbypass.DeviceError | None = None
        try:
            super().close(failure)
        except irqbypass.DeviceError as exc:
            first = exc
        if node is not None:
            try:
                node.unshare(lambda: node.close(failure))
            except irqbypass.DeviceError as exc:
                first = first or exc
        if first is not None:
            raise first

    def block_to_enable(self, v: VfioVector) -> int:
        """How many vectors the first attach on ``v``'s index must enable (0: attach alone).

        On a NORESIZE MSI/MSI-X index (every MSI index; MSI-X before Linux 6.5
        or without dynamic allocation) vfio-pci cannot add a vector to an
        enabled block: growing it means disabling and re-enabling the whole
        index, which loses what the other vectors raise meanwhile. So on a
        device opened here the first attach enables the whole block, as
        cloud-hypervisor does; a VMM's fd is the VMM's to enable."""
        info = v.irq_info
        msi = v.index in (_abi.VFIO_PCI_MSI_IRQ_INDEX, _abi.VFIO_PCI_MSIX_IRQ_INDEX)
        if not (msi and self.ours and info is not None and info.noresize):
            return 0
        return 0 if v.index in self.blocks else info.count

    def enable_block(self, v: VfioVector, fds: Mapping[int, int], count: int) -> None:
        """Enable vectors 0..count-1 of ``v``'s index with one SET_IRQS, ``fds``
        attached (the rest -1); when the host allocates fewer, enable what it
        could if every vector of ``fds`` fits (QEMU retries MSI so)."""
        while True:
            data = _abi.eventfd_data(*(fds.get(i, -1) for i in range(count)))
            got = v.set_irqs(EVENTFD_TRIGGER, data, start=0, count=count, hints=ATTACH)
            if got <= 0:
                self.blocks[v.index] = count
                return
            if max(fds) >= got:
                raise v.too_few(got, count)
            count = got

    # -- many vectors at once ------------------------------------------------------

    def point_batch(self, batch: Sequence[tuple[irqbypass.plugin.DeviceInterrupt, int]]) -> None:
        """Each run of consecutive vectors of one index attached with one
        ``SET_IRQS`` (a NORESIZE block enabled whole with one), then a paired
        INTx's EOI eventfd wired, as a vector's own point does; on failure none
        is left attached and the error names the vector."""
        fds = {_vector(i): fd for i, fd in batch}
        done: list[list[VfioVector]] = []
        with self.locked():  # the runs cut by what is enabled, as it stays until attached
            try:
                for run in self.runs(list(fds)):
                    self.attach_run(run, fds)
                    done.append(run)
                for v in fds:
                    v.wire_paired()
            except BaseException:
                for run in reversed(done):
                    with contextlib.suppress(irqbypass.IrqBypassError):  # the failure is raised
                        self.detach_run(run)
                raise

    def detach_batch(self, batch: Sequence[irqbypass.plugin.DeviceInterrupt]) -> None:
        for run in self.runs([_vector(i) for i in batch]):
            self.detach_run(run)

    def runs(self, batch: Sequence[VfioVector]) -> list[list[VfioVector]]:
        """The batch cut into runs of consecutive vectors of one index (one
        SET_IRQS each: a vector between two of ours is not ours to touch), or
        all of an index whose whole block the first attach enables."""
        by_index: dict[int, list[VfioVector]] = {}
        for v in batch:
            by_index.setdefault(v.index, []).append(v)
        runs: list[list[VfioVector]] = []
        for group in by_index.values():
            group.sort(key=lambda v: v.vector)
            if self.block_to_enable(group[0]):
                runs.append(group)  # the first attach of a NORESIZE index: its whole block
                continue
            run = [group[0]]
            for v in group[1:]:
                if run[-1].vector + 1 == v.vector:
                    run.append(v)
                else:
                    runs.append(run)
                    run = [v]
            runs.append(run)
        return runs

    def attach_run(self, run: list[VfioVector], tokens: Mapping[VfioVector, int]) -> None:
        """Attach a run's tokens with one SET_IRQS, or the index's whole block
        when it is the first attach on a NORESIZE index; on failure find the
        vector the kernel refused (it does not say which), and leave none attached."""
        first = run[0]
        fds = {v.vector: tokens[v] for v in run}
        block = 0
        try:
            with self.locked():
                block = self.block_to_enable(first)
                if block:
                    self.enable_block(first, fds, block)
                    return
                enabled = self.blocks.get(first.index)
                if enabled is not None and run[-1].vector >= enabled:
                    raise next(v for v in run if v.vector >= enabled).too_few_enabled(enabled)
                data = _abi.eventfd_data(*fds.values())
                got = first.set_irqs(EVENTFD_TRIGGER, data, count=len(run), hints=ATTACH)
                if got > 0:
                    raise next(v for v in run if v.vector >= got).too_few(got, run[-1].vector + 1)
        except irqbypass.DeviceError as exc:
            raise self.name_the_vector(run, fds, exc, block) from exc

    def name_the_vector(
        self, run: list[VfioVector], fds: Mapping[int, int], exc: irqbypass.DeviceError, block: int
    ) -> irqbypass.DeviceError:
        """The run's failure, naming its vector: the kernel unwound the run and
        does not say which vector it refused, so each is tried alone (attached,
        then detached at once; in a NORESIZE block not yet enabled: the block
        enabled with it alone, then disabled again) up to the first refused."""
        culprit, error = run[0], exc
        if exc.errno != errno.ENOSPC and len(run) > 1:
            with self.locked():
                for v in run:
                    try:
                        v.attach_alone(fds[v.vector], block)
                    except irqbypass.DeviceError as probe:
                        culprit, error = v, probe
                        break
                    v.detach_alone(block)
        vectors = f"{run[0].vector}..{run[-1].vector}" if len(run) > 1 else str(run[0].vector)
        where = culprit.calls.describe()
        message = error.message.removeprefix(where + ": ") if where else error.message
        return irqbypass.DeviceError(
            f"{where}: attaching {culprit.label} vectors {vectors} with one "
            f"VFIO_DEVICE_SET_IRQS: vector {culprit.vector}: {message}; none of this group's "
            "vectors was left attached",
            errno=error.errno,
        )

    def detach_run(self, run: list[VfioVector]) -> None:
        with self.locked():
            data = _abi.eventfd_data(*[-1] * len(run))
            run[0].set_irqs(EVENTFD_TRIGGER, data, count=len(run))


def _vector(interrupt: irqbypass.plugin.DeviceInterrupt) -> VfioVector:
    """A vector of this device (only vfio producers' interrupts join its group)."""
    return cast("VfioVector", interrupt)
