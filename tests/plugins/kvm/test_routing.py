"""GSI routing that scales: batches (one KVM_SET_GSI_ROUTING for many MSI
consumers, all or nothing), cheap one-at-a-time changes, and the VM's GSI
allocator up to KVM's 4096-entry limit."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import irqbypass
import pytest
from irqbypass._config import parse_config
from irqbypass_kvm import Guest, KvmIrqfdConsumer, MsiRoute, Vm, _abi, _kvm, _routing

pytestmark = pytest.mark.usefixtures("no_fd_leak")

MSI = MsiRoute(0xFEE00000, 0x41)


@pytest.fixture
def routing_ioctls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The entry count of every KVM_SET_GSI_ROUTING the plugin issues."""
    calls: list[int] = []
    real = _routing._ioctl

    def counting(fd: int, request: int, address: int) -> int:
        calls.append(_abi.kvm_irq_routing.from_address(address).nr)
        return int(real(fd, request, address))

    monkeypatch.setattr(_routing, "_ioctl", counting)
    return calls


@pytest.fixture
def tokens() -> Iterator[list[irqbypass.Eventfd]]:
    made = [irqbypass.Eventfd() for _ in range(64)]
    yield made
    for eventfd in made:
        eventfd.close()


def kvm_listens(token: irqbypass.Eventfd) -> bool:
    token.write()
    return token.read(timeout=0) == 0


@pytest.mark.guest("kvm")
def test_a_batch_opens_and_closes_many_msi_consumers_with_one_routing_ioctl_each(
    vm: Vm, tokens: list[irqbypass.Eventfd], routing_ioctls: list[int]
) -> None:
    consumers = [
        KvmIrqfdConsumer(token=t, vm=vm.fd, msi=MsiRoute(0xFEE00000, 0x20 + i), name=f"v{i}")
        for i, t in enumerate(tokens)
    ]
    KvmIrqfdConsumer.open_group(consumers)
    try:
        assert routing_ioctls == [40 + 64]  # one write: the defaults and 64 MSI routes
        assert [c.gsi for c in consumers] == list(range(24, 24 + 64))
        assert all(c.assigned for c in consumers) and all(kvm_listens(t) for t in tokens)
        shared = consumers[0].vm
        assert shared is not None and all(c.vm is shared for c in consumers)
        assert len(shared.msi_routes) == 64
    finally:
        KvmIrqfdConsumer.close_group(consumers)
    assert routing_ioctls == [104, 40]
    assert not any(c.assigned for c in consumers) and not any(kvm_listens(t) for t in tokens)
    assert all(c.gsi is None and c.vm is None for c in consumers)
    assert Vm._borrowed == {}  # every reference of the batch was given back


@pytest.mark.guest("kvm")
def test_a_batch_failing_on_one_irqfd_names_it_and_leaves_nothing(
    vm: Vm, tokens: list[irqbypass.Eventfd], routing_ioctls: list[int]
) -> None:
    # the VMM already holds tokens[40] as an irqfd on this VM: KVM says EBUSY
    vm.irqfd_assign(tokens[40].fileno(), 5)
    consumers = [
        KvmIrqfdConsumer(token=t, vm=vm.fd, msi=MSI, name=f"v{i}") for i, t in enumerate(tokens)
    ]
    with pytest.raises(irqbypass.DeviceError) as info:
        KvmIrqfdConsumer.open_group(consumers)
    message = str(info.value)
    assert info.value.errno == errno.EBUSY
    assert "kvm-irqfd consumer 'v40' (GSI 64, MSI address=0xfee00000 data=0x41)" in message
    assert "none of the 64 consumers of this batch was opened" in message
    assert not any(c.assigned or c.vm is not None for c in consumers)
    assert routing_ioctls == [104, 40]  # the routes went in and came out, one write each
    assert not any(kvm_listens(t) for i, t in enumerate(tokens) if i != 40)
    assert Vm._borrowed == {}
    vm.irqfd_deassign(tokens[40].fileno(), 5)
    # the GSIs were given back: the next batch gets the same ones
    KvmIrqfdConsumer.open_group(consumers[:2])
    assert [c.gsi for c in consumers[:2]] == [24, 25]
    KvmIrqfdConsumer.close_group(consumers[:2])


@pytest.mark.guest("kvm")
def test_a_route_kvm_refuses_is_named_and_nothing_changes(
    vm: Vm, tokens: list[irqbypass.Eventfd]
) -> None:
    # with KVM_CAP_X2APIC_API's 32-bit IDs, KVM refuses an MSI whose address_hi
    # has bits 7:0 set (kvm_msi_route_invalid): a route only the kernel rejects
    cap = _abi.kvm_enable_cap(cap=_abi.KVM_CAP_X2APIC_API)
    cap.args[0] = _abi.KVM_X2APIC_API_USE_32BIT_IDS
    _kvm.ioctl(vm.fd, _abi.KVM_ENABLE_CAP, cap, "KVM_ENABLE_CAP (KVM_CAP_X2APIC_API)")
    bad = MsiRoute(0x1_FEE0_0000, 0x41)
    consumers = [
        KvmIrqfdConsumer(token=t, vm=vm.fd, msi=bad if i == 37 else MSI, name=f"v{i}")
        for i, t in enumerate(tokens)
    ]
    with pytest.raises(irqbypass.DeviceError) as info:
        KvmIrqfdConsumer.open_group(consumers)
    assert info.value.errno == errno.EINVAL
    assert (
        "KVM refuses the MSI route of kvm-irqfd consumer 'v37' on GSI 61 "
        "(address=0x1fee00000 data=0x41)"
    ) in str(info.value)
    assert not any(c.vm is not None for c in consumers)
    # KVM's table is back to the defaults: a write of what we hold is accepted
    shared = Vm.borrow(vm.fd)
    try:
        assert shared.msi_routes == {}
        shared.set_msi_route(24, MSI)
        shared.set_msi_route(24, None)
    finally:
        shared.close()


@pytest.mark.guest("kvm")
def test_one_at_a_time_never_rebuilds_the_table_in_python(
    vm: Vm,
    tokens: list[irqbypass.Eventfd],
    routing_ioctls: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_rebuild(self: _routing.RoutingTable, routes: object) -> None:
        raise AssertionError("the whole table was rebuilt on the success path")

    monkeypatch.setattr(_routing.RoutingTable, "_load", no_rebuild)
    consumers = [
        KvmIrqfdConsumer(token=t, vm=vm.fd, msi=MSI, name=f"v{i}") for i, t in enumerate(tokens)
    ]
    for c in consumers:
        c.open()
    for c in consumers[::2]:
        c.mask()
    for c in consumers[::2]:
        c.unmask()
    assert all(kvm_listens(t) for t in tokens)
    for c in reversed(consumers):
        c.close()
    assert routing_ioctls == list(range(41, 105)) + [104 - 1 - i for i in range(32)] + [
        72 + 1 + i for i in range(32)
    ] + list(range(103, 39, -1))
    assert Vm._borrowed == {}


@pytest.mark.guest("kvm")
def test_the_buffer_always_holds_exactly_what_kvm_has(vm: Vm) -> None:
    """Swap-with-last removal keeps the table dense and every GSI once."""
    routes = {gsi: MsiRoute(0xFEE00000, gsi & 0xFF) for gsi in range(24, 124)}
    vm.set_msi_routes(routes.items())
    for gsi in range(24, 124, 3):
        vm.set_msi_route(gsi, None)
        del routes[gsi]
    vm.set_msi_routes([(30, MsiRoute(0xFEE00000, 0x99)), (200, MSI), (25, None)])
    routes[30], routes[200] = MsiRoute(0xFEE00000, 0x99), MSI
    del routes[25]
    assert dict(vm.msi_routes) == routes
    buf = vm.routing.buffer()
    nr = int.from_bytes(buf[:4], "little")
    entries = (_abi.kvm_irq_routing_entry * nr).from_buffer_copy(buf, 8)
    msi = {e.gsi: MsiRoute(e.u.msi.address_lo, e.u.msi.data) for e in entries if e.type == 2}
    assert nr == 40 + len(routes) and msi == routes


@pytest.mark.guest("kvm")
def test_left_out_gsis_come_from_the_vm_lowest_free_first(
    vm: Vm, tokens: list[irqbypass.Eventfd]
) -> None:
    a, b, c = (
        KvmIrqfdConsumer(token=t, vm=vm.fd, msi=MSI, name=n)
        for t, n in zip(tokens[:3], "abc", strict=True)
    )
    fixed = KvmIrqfdConsumer(token=tokens[3], vm=vm.fd, gsi=25, msi=MSI, name="fixed")
    masked = KvmIrqfdConsumer(token=tokens[4], vm=vm.fd, msi=MSI, masked=True, name="masked")
    with fixed, masked:
        assert masked.gsi is None  # taken lazily, on the first unmask
        with a, b:
            assert (a.gsi, b.gsi) == (24, 26)  # 25 is fixed's
            assert "GSI 24 (MSI" in a.status()
            assert "GSI (not yet taken)" in masked.status()
        with c:
            assert c.gsi == 24  # given back on close, and lowest first
            masked.unmask()
            assert masked.gsi == 26
            masked.mask()
            assert masked.gsi == 26  # kept while masked, so the vector keeps its GSI
    assert masked.gsi is None and fixed.gsi == 25


def test_the_free_gsi_list_stays_bounded_when_a_fixed_gsi_comes_and_goes() -> None:
    """A consumer with a fixed GSI below the next new one, opened and closed
    again and again (a VMM toggling a vector): its GSI is given back each time,
    and the free list must hold it once, not once per close. Without KVM: the
    allocator is plain bookkeeping (no ioctl)."""
    vm = Vm(-1, owned=False)
    auto, fixed = object(), object()
    assert vm.claim_gsi(None, auto, "auto") == 24
    assert vm.claim_gsi(None, fixed, "other") == 25
    vm.release_gsi(24, auto)
    for _ in range(1000):
        assert vm.claim_gsi(24, fixed, "fixed") == 24
        vm.release_gsi(24, fixed)
    assert len(vm._free_gsis) == 1, "the free list grew by one per close"
    assert vm.claim_gsi(None, auto, "auto") == 24  # lowest free first, all the same
    assert vm.claim_gsi(None, object(), "next") == 26


@pytest.mark.guest("kvm")
def test_two_consumers_never_share_a_gsi(vm: Vm, tokens: list[irqbypass.Eventfd]) -> None:
    first = KvmIrqfdConsumer(token=tokens[0], vm=vm.fd, gsi=40, msi=MSI, name="first")
    second = KvmIrqfdConsumer(token=tokens[1], vm=vm.fd, gsi=40, msi=MSI, name="second")
    with first:
        with pytest.raises(irqbypass.InvalidEndpointError) as info:
            second.open()
        assert info.value.errno == errno.EBUSY
        assert "'second': GSI 40 of this VM is already routed by kvm-irqfd consumer 'first'" in str(
            info.value
        )
        assert second.vm is None and kvm_listens(tokens[0])


@pytest.mark.guest("kvm")
def test_the_4096_entry_limit_is_a_clear_error(vm: Vm) -> None:
    owner = object()
    gsis = [vm.claim_gsi(None, owner, "vmm") for _ in range(_routing.MAX_MSI_ROUTES)]
    assert gsis == list(range(24, 24 + 4056))
    vm.set_msi_routes([(gsi, MSI) for gsi in gsis])  # a full table: KVM takes it
    assert vm.routing.entries == 4096
    with pytest.raises(irqbypass.DeviceError) as info:
        vm.claim_gsi(None, object(), "kvm-irqfd consumer 'one-more'")
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert "'one-more': no free GSI" in message and "4096 routing entries" in message
    assert "KVM_MAX_IRQ_ROUTES" in message and "at most 4056 MSI routes" in message
    with pytest.raises(irqbypass.DeviceError, match="would hold 4097 entries"):
        vm.set_msi_route(4095, MSI)
    vm.set_msi_routes([(gsi, None) for gsi in gsis])
    assert vm.routing.entries == 40
    for gsi in gsis:
        vm.release_gsi(gsi, owner)
    assert vm.claim_gsi(None, owner, "vmm") == 24


# loads every plugin (imports: most of its time under TCG): one guest kernel is enough
@pytest.mark.guest("kvm", kernels=("6.12",))
def test_topology_apply_and_teardown_route_a_vms_msi_consumers_in_one_write_each(
    kvm_usable: None, routing_ioctls: list[int]
) -> None:
    with Guest(apic="x2apic") as apic_guest:
        assert apic_guest.vm is not None
        text = ""
        for i in range(8):
            text += (
                f'[[producers]]\nname = "dev{i}"\nkind = "mock"\ntoken = "v{i}"\n'
                "options = { count = 0 }\n"
                f'[[consumers]]\nname = "irqfd{i}"\nkind = "kvm-irqfd"\ntoken = "v{i}"\n'
                f"options = {{ vm = {apic_guest.vm.fd}, "
                f"msi = {{ address = 0xfee00000, data = {0x30 + i} }} }}\n"
            )
        plugins = irqbypass.load_plugins()
        topo = irqbypass.Topology(parse_config(text, file="msi.toml"), plugins)
        topo.apply()
        try:
            assert routing_ioctls == [48]
            assert all(row.paired for row in topo.status())
            for placed in topo.placed:
                if placed.config.side == "producer":
                    placed.endpoint.fire()  # type: ignore[attr-defined]
            assert apic_guest.wait_count(8)
            assert apic_guest.vector_counts() == {0x30 + i: 1 for i in range(8)}
        finally:
            topo.teardown()
        assert routing_ioctls == [48, 40]
        assert apic_guest.vm.msi_routes == {}


@pytest.mark.guest("kvm")
def test_a_keyboard_interrupt_inside_a_batch_leaves_nothing_behind(
    vm: Vm, tokens: list[irqbypass.Eventfd], monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = Vm.irqfd_assign, []

    def interrupted(self: Vm, eventfd: int, gsi: int, resamplefd: int | None = None) -> None:
        calls.append(gsi)
        if len(calls) == 10:
            raise KeyboardInterrupt
        real(self, eventfd, gsi, resamplefd)

    monkeypatch.setattr(Vm, "irqfd_assign", interrupted)
    consumers = [KvmIrqfdConsumer(token=t, vm=vm.fd, msi=MSI) for t in tokens]
    with pytest.raises(KeyboardInterrupt):
        KvmIrqfdConsumer.open_group(consumers)
    assert not any(c.assigned or c.vm is not None or c.gsi is not None for c in consumers)
    assert not any(kvm_listens(t) for t in tokens)
    assert Vm._borrowed == {}


@pytest.mark.guest("kvm")
@pytest.mark.parametrize("step", ["open", "close"])
def test_a_consumer_another_thread_opens_or_closes_as_a_batch_forms_stays_consistent(
    vm: Vm, tokens: list[irqbypass.Eventfd], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """open_group/close_group sort the consumers into batches before they take
    their locks: one that another thread opens (or closes) in between must not
    be opened (closed) a second time by the batch: no GSI, route or reference
    of it may be lost or leaked."""
    from irqbypass_kvm import _batch

    consumers = [
        KvmIrqfdConsumer(token=t, vm=vm.fd, msi=MSI, name=f"v{i}") for i, t in enumerate(tokens[:3])
    ]
    if step == "close":
        KvmIrqfdConsumer.open_group(consumers)
    real = _batch._partition

    def partition_then_another_thread(*args: object, **kwargs: object) -> object:
        parts = real(*args, **kwargs)  # type: ignore[arg-type]
        # another thread, in the window before the batch takes its locks
        consumers[1].open() if step == "open" else consumers[1].close()
        return parts

    monkeypatch.setattr(_batch, "_partition", partition_then_another_thread)
    (KvmIrqfdConsumer.open_group if step == "open" else KvmIrqfdConsumer.close_group)(consumers)
    monkeypatch.undo()
    if step == "open":
        assert all(c.assigned for c in consumers)
        assert len({c.gsi for c in consumers}) == 3
        shared = consumers[0].vm
        assert shared is not None and set(shared.msi_routes) == {c.gsi for c in consumers}
        KvmIrqfdConsumer.close_group(consumers)
        assert shared.msi_routes == {}
    assert not any(c.assigned or c.vm is not None for c in consumers)
    assert Vm._borrowed == {}, "a reference to the VM was left"
    assert not any(kvm_listens(t) for t in tokens[:3])
