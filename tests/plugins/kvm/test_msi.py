"""MSI routes on a VMM-owned VM fd, in cloud-hypervisor's order: masking
deassigns the irqfd before the route changes, unmasking routes before it
assigns."""

from __future__ import annotations

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
