"""MSI routes on a VMM-owned VM fd, in cloud-hypervisor's order: masking
deassigns the irqfd before the route changes, unmasking routes before it
assigns."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from typing import Any

import irqbypass
import pytest
from irqbypass_kvm import Guest, KvmIrqfdConsumer, MsiRoute, Vm, _abi, _kvm

MSI = MsiRoute(0xFEE00000, 0x4041)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every irqfd and routing ioctl the plugin makes, in order."""
    log: list[str] = []
    assign, deassign, routes = Vm.irqfd_assign, Vm.irqfd_deassign, Vm.set_msi_routes

    def rec_assign(vm: Vm, eventfd: int, gsi: int, resamplefd: int | None = None) -> None:
        assign(vm, eventfd, gsi, resamplefd)
        log.append(f"assign {gsi}")

    def rec_deassign(vm: Vm, eventfd: int, gsi: int) -> None:
        deassign(vm, eventfd, gsi)
        log.append(f"deassign {gsi}")

    def rec_routes(
        vm: Vm, changes: Iterable[tuple[int, MsiRoute | None]], owners: Any = None
    ) -> None:
        changes = list(changes)
        routes(vm, changes, owners)
        # one line per KVM_SET_GSI_ROUTING
        log.append(", ".join(f"route {g} {m.data:#x}" if m else f"unroute {g}" for g, m in changes))

    monkeypatch.setattr(Vm, "irqfd_assign", rec_assign)
    monkeypatch.setattr(Vm, "irqfd_deassign", rec_deassign)
    monkeypatch.setattr(Vm, "set_msi_routes", rec_routes)
    yield log


def kvm_listens(token: irqbypass.Eventfd) -> bool:
    """Whether an irqfd is assigned to ``token``: KVM consumes a write at once."""
    token.write()
    return token.read(timeout=0) == 0


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_msi_vector_mask_unmask_order_on_a_borrowed_vm_fd(
    guest: Guest, token: irqbypass.Eventfd, calls: list[str]
) -> None:
    assert guest.vm is not None
    vm_fd = guest.vm.fd  # stands for the fd the embedding VMM owns
    consumer = KvmIrqfdConsumer(token=token, vm=vm_fd, gsi=40, msi=MSI, name="msi0")
    consumer.open()
    try:
        assert calls == ["route 40 0x4041", "assign 40"]
        assert consumer.vm is not None and consumer.vm.msi_routes == {40: MSI}
        assert kvm_listens(token)

        consumer.mask()
        assert calls[2:] == ["deassign 40", "unroute 40"]
        assert consumer.vm.msi_routes == {}
        assert not kvm_listens(token)
        assert consumer.stats()["masked"] == 1 and not consumer.assigned

        consumer.set_msi(MsiRoute(0xFEE00000, 0x4042))  # masked: nothing touches KVM
        assert calls[4:] == []
        consumer.unmask()
        assert calls[4:] == ["route 40 0x4042", "assign 40"]
        assert kvm_listens(token)

        consumer.set_msi(MsiRoute(0xFEE01000, 0x4043))  # unmasked: the route only
        assert calls[6:] == ["route 40 0x4043"]
        assert consumer.vm.msi_routes == {40: MsiRoute(0xFEE01000, 0x4043)}
        assert "MSI address=0xfee01000 data=0x4043" in consumer.status()
    finally:
        consumer.close()
    assert calls[7:] == ["deassign 40", "unroute 40"]
    assert not kvm_listens(token)
    _kvm.check_vm_fd(vm_fd)  # the borrowed fd is still open: never closed here
    # the guest's PIC route survived every table rewrite
    token2 = irqbypass.Eventfd()
    with token2, KvmIrqfdConsumer(token=token2, vm=guest):
        token2.write()
        assert guest.wait_count(1)


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_msi_starting_masked_assigns_nothing_until_unmasked(
    guest: Guest, token: irqbypass.Eventfd, calls: list[str]
) -> None:
    assert guest.vm is not None
    consumer = KvmIrqfdConsumer(token=token, vm=guest.vm.fd, gsi=41, msi=MSI, masked=True)
    with consumer:
        assert calls == [] and not kvm_listens(token)
        consumer.unmask()
        assert calls == ["route 41 0x4041", "assign 41"]
    assert calls[2:] == ["deassign 41", "unroute 41"]


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_an_unmask_kvm_refuses_leaves_the_vector_masked_and_unrouted(
    guest: Guest, token: irqbypass.Eventfd, calls: list[str]
) -> None:
    """unmask() routes, then assigns: when the assign is refused (the VMM, or
    since Linux 6.17 another VM, holds the eventfd as an irqfd: EBUSY), the
    route it wrote goes again, so the vector is masked as before: nothing in
    the VM's table, and a set_msi() while masked only records the message."""
    assert guest.vm is not None
    consumer = KvmIrqfdConsumer(token=token, vm=guest.vm.fd, gsi=41, msi=MSI, masked=True)
    with consumer:
        guest.vm.irqfd_assign(token.fileno(), 5)  # the VMM's irqfd holds the token
        del calls[:]
        try:
            with pytest.raises(irqbypass.DeviceError) as info:
                consumer.unmask()
            assert info.value.errno == errno.EBUSY
            assert consumer.masked and not consumer.assigned
            assert consumer.vm is not None and consumer.vm.msi_routes == {}, "route left behind"
            assert calls == ["route 41 0x4041", "unroute 41"]
            consumer.set_msi(MsiRoute(0xFEE00000, 0x4042))  # masked: nothing touches KVM
            assert calls[2:] == []
        finally:
            guest.vm.irqfd_deassign(token.fileno(), 5)
        del calls[:]
        consumer.unmask()  # the VMM let go: now it takes
        assert calls == ["route 41 0x4042", "assign 41"]
        assert kvm_listens(token)
    assert calls[2:] == ["deassign 41", "unroute 41"]


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_two_msi_consumers_share_one_routing_table(guest: Guest, token: irqbypass.Eventfd) -> None:
    assert guest.vm is not None
    with irqbypass.Eventfd() as other:
        a = KvmIrqfdConsumer(token=token, vm=guest.vm.fd, gsi=50, msi=MSI)
        b = KvmIrqfdConsumer(token=other, vm=guest.vm.fd, gsi=51, msi=MSI)
        with a, b:
            assert a.vm is b.vm
            assert a.vm is not None and set(a.vm.msi_routes) == {50, 51}
            assert kvm_listens(token) and kvm_listens(other)
        assert Vm._borrowed == {}


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_msi_devid_route_is_accepted_or_refused_clearly(
    guest: Guest, token: irqbypass.Eventfd
) -> None:
    assert guest.vm is not None
    consumer = KvmIrqfdConsumer(
        token=token, vm=guest.vm.fd, gsi=42, msi=MsiRoute(0xFEE00000, 0x41, devid=0x10)
    )
    if guest.vm.check_extension(_abi.KVM_CAP_MSI_DEVID) > 0:  # arm64 ITS, not x86
        with consumer:
            assert consumer.assigned
    else:
        with pytest.raises(irqbypass.DeviceError, match="KVM_CAP_MSI_DEVID"):
            consumer.open()
        assert not consumer.assigned and consumer.vm is None


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_closing_after_the_token_was_closed_still_removes_the_msi_route(
    guest: Guest, token: irqbypass.Eventfd
) -> None:
    """KVM drops the irqfd with the eventfd, but the route is the plugin's: it must go."""
    assert guest.vm is not None
    other = irqbypass.Eventfd()
    a = KvmIrqfdConsumer(token=other, vm=guest.vm.fd, gsi=50, msi=MSI)
    b = KvmIrqfdConsumer(token=token, vm=guest.vm.fd, gsi=51, msi=MSI)
    with b:
        a.open()
        assert b.vm is not None and set(b.vm.msi_routes) == {50, 51}
        other.close()  # the VMM closed the vector's eventfd before the consumer
        a.close()
        assert b.vm.msi_routes == {51: MSI}
        assert kvm_listens(token)
    assert Vm._borrowed == {}


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_one_vm_handed_over_through_two_fds_keeps_one_routing_table(apic_guest: Guest) -> None:
    """One VMM's VM reached through two fds (a dup, or a copy received with
    SCM_RIGHTS): KVM_SET_GSI_ROUTING replaces the VM's whole table, so both
    consumers' MSIs must go into the one table of that VM, on GSIs of their own,
    or the last write takes the other's route away. And the VMM may close the
    fd of a consumer once that consumer is closed: the other one goes on."""
    assert apic_guest.vm is not None
    fds = [os.dup(apic_guest.vm.fd) for _ in range(2)]
    tokens = [irqbypass.Eventfd(), irqbypass.Eventfd()]
    try:
        a = KvmIrqfdConsumer(token=tokens[0], vm=fds[0], msi=MsiRoute(0xFEE00000, 0x41), name="a")
        b = KvmIrqfdConsumer(token=tokens[1], vm=fds[1], msi=MsiRoute(0xFEE00000, 0x42), name="b")
        with b:
            with a:
                assert a.gsi != b.gsi, "two consumers of one VM took the same GSI"
                tokens[0].write()
                assert apic_guest.wait_count(1)
                tokens[1].write()
                assert apic_guest.wait_count(2)
                assert apic_guest.vector_counts() == {0x41: 1, 0x42: 1}, "a's MSI went astray"
            os.close(fds.pop(0))  # a is closed: the VMM lets go of its fd
            b.set_msi(MsiRoute(0xFEE00000, 0x43))
            tokens[1].write()
            assert apic_guest.wait_count(3)
            assert apic_guest.vector_count(0x43) == 1
        assert Vm._borrowed == {}
    finally:
        for token in tokens:
            token.close()
        for fd in fds:
            os.close(fd)


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_fds_of_two_vms_get_two_wrappers_and_without_kcmp_one_number_gets_one(
    vm: Vm, apic_guest: Guest, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert apic_guest.vm is not None
    one, other = Vm.borrow(vm.fd), Vm.borrow(apic_guest.vm.fd)
    try:
        assert one is not other
    finally:
        one.close()
        other.close()
    # where kcmp(2) is refused (a container's seccomp filter), the fd number the
    # VMM handed over is all that tells one VM from another
    monkeypatch.setattr(_kvm, "same_open_file", lambda fd, other: None)
    first, again = Vm.borrow(vm.fd), Vm.borrow(vm.fd)
    try:
        assert first is again
    finally:
        first.close()
        again.close()
    assert Vm._borrowed == {}


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
@pytest.mark.parametrize("opening", ["alone", "as a batch"])
def test_a_consumer_given_a_borrowed_vm_holds_it_while_open(
    vm: Vm, token: irqbypass.Eventfd, opening: str
) -> None:
    """A VMM that shares the plugin's table borrows the Vm (Vm.borrow) and hands
    the Vm itself to its consumers: each holds a reference while open, as one
    handed the fd does, so the VMM may give its own back before they close."""
    shared = Vm.borrow(vm.fd)
    consumer = KvmIrqfdConsumer(token=token, vm=shared, msi=MsiRoute(0xFEE00000, 0x41))
    if opening == "alone":
        consumer.open()
    else:
        KvmIrqfdConsumer.open_group([consumer])
    shared.close()  # the VMM's reference; its consumer is still open
    consumer.set_msi(MsiRoute(0xFEE00000, 0x42))
    assert shared.msi_routes == {24: MsiRoute(0xFEE00000, 0x42)}
    assert kvm_listens(token)
    if opening == "alone":
        consumer.close()
    else:
        KvmIrqfdConsumer.close_group([consumer])
    assert shared.msi_routes == {} and not kvm_listens(token)
    assert Vm._borrowed == {}
    with pytest.raises(irqbypass.InvalidEndpointError, match="borrow it again"):
        consumer.open()  # every reference is given back: its copy of the fd is closed


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
@pytest.mark.parametrize("route", ["pin", "MSI", "MSI batch"])
def test_a_token_closed_before_its_consumer_while_a_copy_lives_is_deassigned(
    guest: Guest, route: str
) -> None:
    """KVM drops an irqfd only when the eventfd itself goes; a copy elsewhere
    (the vhost-user back-end's call fd, a fork()ed child's) keeps it. So a VMM
    that closes its token before the consumer must still find the irqfd gone
    once the consumer is closed: the back-end's writes reach nobody, and the
    eventfd can be an irqfd again (Linux 6.17+ binds it to one irqfd host-wide)."""
    assert guest.vm is not None
    token = irqbypass.Eventfd()
    backend = os.dup(token.fileno())  # the back-end's copy of the call fd
    try:
        if route == "pin":
            consumer = KvmIrqfdConsumer(token=token, vm=guest)
        else:
            consumer = KvmIrqfdConsumer(token=token, vm=guest.vm.fd, msi=MSI)
        if route == "MSI batch":
            KvmIrqfdConsumer.open_group([consumer])
        else:
            consumer.open()
        assert kvm_listens(token)
        token.close()  # the VMM closed its token first
        if route == "MSI batch":
            KvmIrqfdConsumer.close_group([consumer])
        else:
            consumer.close()
        with irqbypass.Eventfd.from_fd(backend) as copy:  # the back-end's; not owned
            assert not kvm_listens(copy), "KVM still listens to the back-end's writes"
            with KvmIrqfdConsumer(token=copy, vm=guest):  # an irqfd again: not EBUSY
                assert kvm_listens(copy)
    finally:
        token.close()
        os.close(backend)
