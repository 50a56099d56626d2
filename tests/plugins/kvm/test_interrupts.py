"""A Ctrl-C that lands in a kvm-irqfd consumer's close (or a guest's): the
close still runs to its end (nothing assigned, routed, claimed or open is left
behind), and the KeyboardInterrupt is raised as it returns. Topology.teardown
calls each close once: what an interrupted close left was never released."""

from __future__ import annotations

import signal

import irqbypass
import pytest
from irqbypass_kvm import Guest, KvmIrqfdConsumer, MsiRoute, Vm
from irqbypass_kvm._irqfd import Irqfd

pytestmark = pytest.mark.usefixtures("guarded_sigint", "no_fd_leak")


def interrupt_after(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
    """``owner.name`` runs, then a SIGINT arrives (handled as it returns)."""
    real = getattr(owner, name)

    def then_interrupt(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(owner, name, then_interrupt)


@pytest.mark.guest("kvm")
def test_ctrl_c_as_the_irqfd_is_deassigned_still_closes_the_own_guest(
    kvm_usable: None, token: irqbypass.Eventfd, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = KvmIrqfdConsumer(token=token, vm="guest", gsi=5)
    consumer.open()
    guest = consumer.guest
    assert guest is not None
    interrupt_after(monkeypatch, Vm, "irqfd_deassign")
    with pytest.raises(KeyboardInterrupt):
        consumer.close()
    monkeypatch.undo()
    assert consumer.vm is None and consumer.guest is None, "the close stopped half-way"
    assert not guest.running and guest.vm is None, "the own guest was left running"
    # the token is free again: a new consumer takes it (KVM 6.17+ would refuse it,
    # EBUSY, while the left-over guest's irqfd held it)
    with KvmIrqfdConsumer(token=token, vm="guest", gsi=5) as again:
        token.write()
        assert again.guest is not None and again.guest.wait_count(1)


@pytest.mark.guest("kvm")
def test_ctrl_c_in_a_vm_fd_consumers_close_removes_its_route_and_gsi(
    vm: Vm, token: irqbypass.Eventfd, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = KvmIrqfdConsumer(token=token, vm=vm.fd, msi=MsiRoute(0xFEE00000, 0x41))
    consumer.open()
    shared = consumer.vm
    assert shared is not None and consumer.gsi == 24
    interrupt_after(monkeypatch, Vm, "irqfd_deassign")
    with pytest.raises(KeyboardInterrupt):
        consumer.close()
    monkeypatch.undo()
    assert consumer.vm is None and consumer.gsi is None
    assert shared.msi_routes == {}, "the MSI route was left in the VM's table"
    assert Vm._borrowed == {}, "the reference to the VMM's VM was never given back"


@pytest.mark.guest("kvm")
def test_ctrl_c_in_close_group_still_closes_the_whole_batch(
    vm: Vm, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = [irqbypass.Eventfd() for _ in range(4)]
    try:
        consumers = [
            KvmIrqfdConsumer(token=t, vm=vm.fd, msi=MsiRoute(0xFEE00000, 0x41 + i), name=f"v{i}")
            for i, t in enumerate(tokens)
        ]
        KvmIrqfdConsumer.open_group(consumers)
        shared = consumers[0].vm
        assert shared is not None and len(shared.msi_routes) == 4
        interrupt_after(monkeypatch, Vm, "irqfd_deassign")
        with pytest.raises(KeyboardInterrupt):
            KvmIrqfdConsumer.close_group(consumers)
        monkeypatch.undo()
        assert not any(c.assigned or c.vm is not None for c in consumers)
        assert shared.msi_routes == {}, "routes were left in the VM's table"
        assert Vm._borrowed == {}, "references to the VMM's VM were never given back"
        for t in tokens:  # KVM no longer listens: the writes stay in the counters
            t.write()
            assert t.read(timeout=0) == 1
    finally:
        for t in tokens:
            t.close()


@pytest.mark.guest("kvm")
def test_ctrl_c_as_a_guest_stops_its_vcpu_still_closes_it(
    kvm_usable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest = Guest(line=5)
    guest.start()
    interrupt_after(monkeypatch, guest, "_stop_vcpu")
    with pytest.raises(KeyboardInterrupt):
        guest.close()
    monkeypatch.undo()
    assert not guest.running and guest.vm is None, "the guest's VM was left open"


@pytest.mark.guest("kvm")
def test_a_second_ctrl_c_in_the_undo_of_an_interrupted_open_still_closes_the_guest(
    kvm_usable: None, token: irqbypass.Eventfd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C once the irqfd is assigned makes open() undo what it did; a
    second one as the undo deassigns must not leave the own guest running."""
    consumer = KvmIrqfdConsumer(token=token, vm="guest", gsi=5)
    interrupt_after(monkeypatch, Irqfd, "route_then_assign")
    interrupt_after(monkeypatch, Vm, "irqfd_deassign")
    with pytest.raises(KeyboardInterrupt):
        consumer.open()
    monkeypatch.undo()
    assert consumer.vm is None and consumer.guest is None, "the undo stopped half-way"
    assert not consumer.assigned


@pytest.mark.guest("kvm")
def test_ctrl_c_in_the_undo_of_a_failed_open_group_still_closes_every_consumer(
    kvm_usable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_group opens a and b, then c fails: the undo closes b and a. A
    Ctrl-C as it closes b must not leave a open (a topology takes a failed
    open_group as nothing opened: what it left open would never be closed)."""
    tokens = [irqbypass.Eventfd() for _ in range(3)]
    try:
        a = KvmIrqfdConsumer(token=tokens[0], vm="guest", gsi=5, name="a")
        b = KvmIrqfdConsumer(token=tokens[1], vm="guest", gsi=5, name="b")
        c = KvmIrqfdConsumer(token=tokens[2], vm="guest", gsi=5, device="/nonexistent/kvm")
        real_close = KvmIrqfdConsumer.close

        def close_then_interrupt(self: KvmIrqfdConsumer) -> None:
            real_close(self)
            if self is b:
                signal.raise_signal(signal.SIGINT)

        monkeypatch.setattr(KvmIrqfdConsumer, "close", close_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            KvmIrqfdConsumer.open_group([a, b, c])
        monkeypatch.undo()
        assert a.vm is None and b.vm is None, "the undo left a consumer open"
    finally:
        for t in tokens:
            t.close()
