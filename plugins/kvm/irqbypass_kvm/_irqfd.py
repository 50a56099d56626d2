"""One irqfd on a VM, from attach to release: what a kvm-irqfd consumer owns.

Open: attach the target's VM, check its capabilities, claim the MSI's GSI,
write its route, then assign the eventfd (KVM_IRQFD). Close undoes it in the
reverse order. Masking follows cloud-hypervisor's ordering: the irqfd goes
before the route it uses, and the route comes back before the irqfd.
"""

from __future__ import annotations

import errno
import threading

import irqbypass
import irqbypass.plugin

from . import _abi
from ._kvm import Vm, os_call
from ._routing import MsiRoute
from ._settings import KvmSettings, Msi, Route, Target
from .guest import Guest

__all__ = ["Irqfd"]


class Irqfd:
    """The token eventfd as an irqfd on the target's VM; every change under
    :attr:`lock`, and :meth:`open` all or nothing. ``gsi`` and ``msi`` are the
    current ones (an MSI's GSI is taken on first routing if left out, and
    :meth:`set_msi` changes its message)."""

    def __init__(self, label: str, eventfd: irqbypass.Eventfd, settings: KvmSettings) -> None:
        self.label = label
        self.eventfd = eventfd
        self.target: Target = settings.target
        self.route: Route = settings.route
        self.gsi: int | None = settings.route.gsi
        self.auto_gsi = self.gsi is None
        self.msi: MsiRoute | None = settings.msi
        self.masked = settings.masked
        self.resample = settings.resample
        self.given_resample = settings.resample_eventfd
        self.resample_eventfd: irqbypass.Eventfd | None = None
        self.lock = threading.RLock()
        self.vm: Vm | None = None
        self.own_guest: Guest | None = None
        self.assigned = self.routed = self.claimed = False
        #: while assigned: the token's fd number, kept open (Eventfd.keep_open)
        self._fd = -1
        #: what the own guest counted when it was closed
        self.last_delivered = 0

    def open(self) -> None:
        """All or nothing, Ctrl-C included: one that lands in the steps acts as
        they return, and what they did is undone (a caller takes the open as
        not done)."""
        if self.vm is not None:
            return
        try:
            self._open()
        except BaseException:
            self._undo()
            raise

    @irqbypass.plugin.holding(lambda self: self.lock)
    def _open(self) -> None:
        """Signal-safe but in the guest's wait for its first run: no point where
        a Ctrl-C could leave a guest, an fd or a reference made and not recorded."""
        if self.vm is not None:
            return
        if self.eventfd.closed:
            raise irqbypass.InvalidEndpointError(
                f"{self.label}: its token eventfd is closed; give it an open eventfd",
                errno=errno.EBADF,
            )
        self.vm, self.own_guest = self.target.attach(self.label, self.route)
        self.check_caps(self.vm)
        if self.resample:
            self.resample_eventfd = self.given_resample or os_call(
                "making the resample eventfd", irqbypass.Eventfd
            )
        if not self.masked:
            self.route_then_assign()

    @irqbypass.plugin.holding(lambda self: self.lock)
    def _undo(self) -> None:
        """What a failed (or interrupted) open did, undone to its end: a second
        Ctrl-C acts as it returns (a caller takes the open as not done)."""
        self.teardown(errors=[])

    def check_caps(self, vm: Vm) -> None:
        vm.require(_abi.KVM_CAP_IRQFD, "irqfd (KVM_CAP_IRQFD)")
        self.route.require(vm, self.label, self.gsi, self.msi)

    def batch_key(self, opening: bool) -> object | None:
        """The VM whose routing table a batch would write for this irqfd, or
        None when it opens (or closes) alone: pins, the own guest, masked."""
        if not isinstance(self.route, Msi) or not self.target.batches:
            return None
        if not opening:
            return id(self.vm) if self.vm is not None and self.routed else None
        if self.vm is not None or self.masked or self.eventfd.closed:
            return None
        return self.target.batch_key()

    def claim_gsi(self, vm: Vm) -> int:
        """The MSI GSI, reserved on the VM for this irqfd (taken if left out)."""
        if not self.claimed:
            self.gsi = vm.claim_gsi(None if self.auto_gsi else self.gsi, self, self.label)
            self.claimed = True
        assert self.gsi is not None
        return self.gsi

    def route_then_assign(self) -> None:
        """Unmask order: the route exists before the irqfd that uses it."""
        vm = self.vm
        assert vm is not None
        if self.msi is not None:
            vm.set_msi_route(self.claim_gsi(vm), self.msi, self.label)
            self.routed = True
        assert self.gsi is not None
        resample_fd = self.resample_eventfd.fileno() if self.resample_eventfd else None
        self.assign(vm, resample_fd)

    def assign(self, vm: Vm, resample_fd: int | None = None) -> None:
        """KVM_IRQFD on the token's fd, which is kept open until :meth:`deassign`:
        KVM drops an irqfd only when the eventfd itself goes, and a copy elsewhere
        (a vhost-user back-end's call fd) keeps it, so a token closed first must
        still be deassigned (:meth:`_token_closing`)."""
        assert self.gsi is not None
        fd = self.eventfd.keep_open(self._token_closing)
        try:
            vm.irqfd_assign(fd, self.gsi, resample_fd)
        except BaseException:
            self.eventfd.let_go(self._token_closing)
            raise
        self._fd, self.assigned = fd, True

    def deassign(self, vm: Vm, errors: list[BaseException]) -> None:
        """KVM_IRQFD deassign, if assigned (on a VM its owner closed, KVM
        dropped the irqfd with it); then the token's fd is let go."""
        if not self.assigned:
            return
        self.assigned = False
        assert self.gsi is not None
        try:
            if not vm.closed:
                vm.irqfd_deassign(self._fd, self.gsi)
        except irqbypass.IrqBypassError as exc:
            errors.append(exc)
        finally:
            self._fd = -1
            self.eventfd.let_go(self._token_closing)

    def _token_closing(self) -> None:
        """The token is being closed while assigned (its fd still open for us):
        deassign now, as KVM would not while a copy of the eventfd lives."""
        with self.lock:
            if self.vm is not None:
                self.deassign(self.vm, [])  # the token is going: nothing to report to
            self.eventfd.let_go(self._token_closing)

    def deassign_then_unroute(self, errors: list[BaseException]) -> None:
        """Mask order: the irqfd goes before the route it uses."""
        vm = self.vm
        if vm is None or self.gsi is None:
            return
        self.deassign(vm, errors)
        if self.routed:
            self.routed = False
            if vm.closed:  # KVM dropped the route with the VM
                return
            try:
                vm.set_msi_route(self.gsi, None)
            except irqbypass.IrqBypassError as exc:
                errors.append(exc)

    @irqbypass.plugin.holding(lambda self: self.lock)
    def close(self) -> None:
        """Runs to its end once begun (a Ctrl-C acts as it returns): a teardown
        calls each close once, so what a cut one left would stay open."""
        errors: list[BaseException] = []
        self.teardown(errors)
        if errors:
            raise irqbypass.DeviceError(
                f"{self.label}: closing failed ({errors[0]}); everything else was released",
                errno=getattr(errors[0], "errno", None),
            ) from errors[0]

    def teardown(self, errors: list[BaseException]) -> None:
        if self.vm is None:
            return
        self.deassign_then_unroute(errors)
        self._release()

    def _release(self) -> None:
        """After the irqfd and route are gone: the GSI, eventfds, VM and guest."""
        vm = self.vm
        assert vm is not None
        if self.claimed:
            self.claimed = False
            assert self.gsi is not None
            vm.release_gsi(self.gsi, self)
            if self.auto_gsi:
                self.gsi = None
        if self.resample_eventfd is not None and self.resample_eventfd is not self.given_resample:
            self.resample_eventfd.close()
        self.resample_eventfd = None
        self.vm = None
        if self.own_guest is not None:
            self.last_delivered = self.own_guest.count
            guest, self.own_guest = self.own_guest, None
            guest.close()
        else:
            self.target.detach(vm)

    # -- MSI vector control (cloud-hypervisor's ordering) ------------------------

    def mask(self) -> None:
        with self.lock:
            if self.masked:
                return
            self.masked = True
            errors: list[BaseException] = []
            self.deassign_then_unroute(errors)
            if errors:
                raise errors[0]

    def unmask(self) -> None:
        with self.lock:
            if not self.masked:
                return
            if self.vm is not None:
                try:
                    self.route_then_assign()
                except BaseException:  # masked as before: the route it wrote goes again
                    self.deassign_then_unroute(errors=[])
                    raise
            self.masked = False

    def set_msi(self, route: MsiRoute) -> None:
        with self.lock:
            if self.msi is None:
                raise irqbypass.InvalidEndpointError(f"{self.label} routes a pin, not an MSI")
            if self.vm is not None and route.devid is not None:
                self.vm.require(_abi.KVM_CAP_MSI_DEVID, "MSI device ids (KVM_CAP_MSI_DEVID)")
            if self.vm is not None and self.routed and self.gsi is not None:
                # KVM re-reads the route for the live irqfd before the ioctl returns
                self.vm.set_msi_route(self.gsi, route, self.label)
            self.msi = route

    # -- observing -----------------------------------------------------------------

    @property
    def guest(self) -> Guest | None:
        """The guest whose count is ``delivered`` (own or given), if any."""
        return self.own_guest if self.own_guest is not None else self.target.guest

    def delivered(self) -> int | None:
        """What the guest counted, if this irqfd's guest is one of the plugin's."""
        return self.target.delivered(self.own_guest, self.last_delivered, self.msi)
