"""Many kvm-irqfd consumers at once: the MSI consumers of one VM share one
routing table, written once for all of them (``open_group``/``close_group``)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import irqbypass
import irqbypass.plugin

from ._irqfd import Irqfd
from ._kvm import Vm
from ._routing import describe

if TYPE_CHECKING:
    from .consumer import KvmIrqfdConsumer

__all__ = ["close_group", "open_group"]


def open_group(cls: type[KvmIrqfdConsumer], endpoints: Sequence[irqbypass.Endpoint]) -> None:
    """See :meth:`KvmIrqfdConsumer.open_group`."""
    singles, batches = _partition(cls, endpoints, opening=True)
    opened: list[KvmIrqfdConsumer] = []
    try:
        for consumer in singles:
            opened.append(consumer)  # first: a Ctrl-C as it returns still closes it
            consumer.open()
        for batch in batches:
            opened.extend(batch)
            _Locked([consumer._irqfd for consumer in batch]).open()
    except BaseException:
        _close_all(opened)
        raise


@irqbypass.plugin.uninterrupted
def _close_all(consumers: list[KvmIrqfdConsumer]) -> None:
    """The undo of a failed open_group, to its end: a Ctrl-C acts as it returns
    (a caller takes the group as not opened: what it left open stays open)."""
    for consumer in reversed(consumers):
        with contextlib.suppress(irqbypass.IrqBypassError):
            consumer.close()


@irqbypass.plugin.uninterrupted
def close_group(cls: type[KvmIrqfdConsumer], endpoints: Sequence[irqbypass.Endpoint]) -> None:
    """See :meth:`KvmIrqfdConsumer.close_group`. Runs to its end once begun (a
    Ctrl-C acts as it returns): a teardown calls it once for the whole group."""
    singles, batches = _partition(cls, endpoints, opening=False)
    errors: list[BaseException] = []
    for batch in batches:
        _Locked([consumer._irqfd for consumer in batch]).close(errors)
    for consumer in singles:
        try:
            consumer.close()
        except irqbypass.IrqBypassError as exc:
            errors.append(exc)
    if errors:
        raise irqbypass.DeviceError(
            f"closing {len(endpoints)} kvm-irqfd consumers: {len(errors)} step(s) "
            f"failed, the first: {errors[0]}; everything else was released",
            errno=getattr(errors[0], "errno", None),
        ) from errors[0]


class _Locked:
    """The irqfds of one batch, whose locks are taken as one (all or none), so
    that :func:`irqbypass.plugin.holding` can wait for them without going deaf
    to a Ctrl-C while another thread holds one."""

    def __init__(self, irqfds: list[Irqfd]) -> None:
        self.irqfds = irqfds

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        taken: list[Irqfd] = []
        for irqfd in self.irqfds:
            if not irqfd.lock.acquire(blocking, timeout):
                for held in reversed(taken):
                    held.lock.release()
                return False
            taken.append(irqfd)
        return True

    def release(self) -> None:
        for irqfd in reversed(self.irqfds):
            irqfd.lock.release()

    @irqbypass.plugin.holding(lambda self: self)
    def open(self) -> None:
        """:func:`_open_batch`, whole: a Ctrl-C acts as it returns (the caller
        then closes the batch). The batch was formed before its locks were
        taken: what another thread opened since is left as it is, and one it
        masked (or whose token it closed) opens alone."""
        fresh = [irqfd for irqfd in self.irqfds if irqfd.vm is None]
        batch = [irqfd for irqfd in fresh if irqfd.batch_key(True) is not None]
        if batch:
            _open_batch(batch)
        if len(batch) < len(fresh):
            batched = set(map(id, batch))
            for irqfd in fresh:
                if id(irqfd) not in batched:
                    irqfd.open()

    @irqbypass.plugin.holding(lambda self: self)
    def close(self, errors: list[BaseException]) -> None:
        """:func:`_close_batch`, for what is still routed on the batch's VM
        (another thread may have closed or masked some since the batch was
        formed); the others close alone."""
        batch = [irqfd for irqfd in self.irqfds if irqfd.batch_key(False) is not None]
        vms = {id(irqfd.vm) for irqfd in batch}
        if len(vms) == 1:
            _close_batch(batch, errors)
        else:  # (closed and opened again on another VM meanwhile: each alone)
            batch = []
        if len(batch) == len(self.irqfds):
            return
        batched = set(map(id, batch))
        for irqfd in self.irqfds:
            if id(irqfd) not in batched:
                try:
                    irqfd.close()
                except irqbypass.IrqBypassError as exc:
                    errors.append(exc)


def _partition(
    cls: type[KvmIrqfdConsumer], endpoints: Sequence[irqbypass.Endpoint], *, opening: bool
) -> tuple[list[KvmIrqfdConsumer], list[list[KvmIrqfdConsumer]]]:
    """The consumers that open (or close) alone, and the batches, one per VM."""
    singles: list[KvmIrqfdConsumer] = []
    batches: dict[object, list[KvmIrqfdConsumer]] = {}
    for endpoint in endpoints:
        if not isinstance(endpoint, cls):
            raise irqbypass.InvalidEndpointError(
                f"{endpoint!r} is not a kvm-irqfd consumer; KvmIrqfdConsumer.open_group and "
                "close_group take kvm-irqfd consumers only"
            )
        key = endpoint._irqfd.batch_key(opening)
        if key is None:
            singles.append(endpoint)
        else:
            batches.setdefault(key, []).append(endpoint)
    return singles, list(batches.values())


def _open_batch(batch: list[Irqfd]) -> None:
    """Open unmasked MSI irqfds of one VM (their locks held): claim their GSIs,
    write all their routes with one ioctl, assign each irqfd; on any failure
    undo it all."""
    first = batch[0]
    vm = first.target.attach(first.label, first.route, refs=len(batch))[0]
    done = False
    try:
        for irqfd in batch:
            irqfd.vm = vm  # from here on _close_batch undoes whatever was done
        first.check_caps(vm)  # what the batch shares; a devid is per irqfd
        for irqfd in batch:
            if irqfd.msi is not None and irqfd.msi.devid is not None:
                irqfd.check_caps(vm)
        _route(vm, batch)
        _assign(vm, batch)
        done = True
    finally:
        if not done:
            _undo_batch(batch, vm)


@irqbypass.plugin.uninterrupted
def _undo_batch(batch: list[Irqfd], vm: Vm) -> None:
    """What a failed (or interrupted) batch open did, undone to its end."""
    attached = [irqfd for irqfd in batch if irqfd.vm is vm]
    if attached:
        _close_batch(attached, [])
    if len(batch) > len(attached):  # the references no irqfd took
        batch[0].target.detach(vm, refs=len(batch) - len(attached))


def _route(vm: Vm, batch: list[Irqfd]) -> None:
    """Claim the batch's GSIs and write all their routes with one ioctl."""
    gsis = vm.claim_gsis((None if i.auto_gsi else i.gsi, i, i.label) for i in batch)
    for irqfd, gsi in zip(batch, gsis, strict=True):
        irqfd.gsi, irqfd.claimed = gsi, True
    vm.set_msi_routes(
        [(i.gsi, i.msi) for i in batch if i.gsi is not None],
        {i.gsi: i.label for i in batch if i.gsi is not None},
    )
    for irqfd in batch:
        irqfd.routed = True


def _assign(vm: Vm, batch: list[Irqfd]) -> None:
    """One KVM_IRQFD each; a refusal names the irqfd and its route."""
    for irqfd in batch:
        assert irqfd.gsi is not None and irqfd.msi is not None
        try:
            irqfd.assign(vm)
        except irqbypass.IrqBypassError as exc:
            raise irqbypass.DeviceError(
                f"{irqfd.label} (GSI {irqfd.gsi}, MSI {describe(irqfd.msi)}): "
                f"{exc.message}; none of the {len(batch)} consumers of this batch "
                "was opened",
                errno=exc.errno,
            ) from exc


def _close_batch(batch: list[Irqfd], errors: list[BaseException]) -> None:
    """Deassign each irqfd, remove all the routes with one ioctl, release the rest."""
    vm = batch[0].vm
    assert vm is not None
    for irqfd in batch:
        irqfd.deassign(vm, errors)
    routed = [irqfd for irqfd in batch if irqfd.routed]
    for irqfd in routed:
        irqfd.routed = False
    if routed and not vm.closed:  # (a closed VM took its routes with it)
        try:
            vm.set_msi_routes([(irqfd.gsi, None) for irqfd in routed if irqfd.gsi is not None])
        except irqbypass.IrqBypassError as exc:
            errors.append(exc)
    # what Irqfd._release does, for the whole batch at once (batched irqfds
    # have no resample eventfd and no own guest)
    vm.release_gsis([(i.gsi, i) for i in batch if i.claimed and i.gsi is not None])
    for irqfd in batch:
        irqfd.claimed = False
        if irqfd.auto_gsi:
            irqfd.gsi = None
        irqfd.vm = None
    # one VM, one kind of target (the batch's key): the references they took
    batch[0].target.detach(vm, refs=len(batch))
