"""MSIs really reach a guest's local APIC (x2APIC mode), counted per vector:
through a Manager, across mask/unmask and across a retarget (set_msi)."""

from __future__ import annotations

import irqbypass
import irqbypass.plugin
import irqbypass_kvm
import pytest
from irqbypass_kvm import Guest, KvmIrqfdConsumer, MsiRoute, guest
from irqbypass_mock import MockProducer

pytestmark = pytest.mark.usefixtures("no_fd_leak")

N = 200
VECTORS = (0x41, 0x42, 0x43)


def msi(vector: int) -> MsiRoute:
    """An MSI to APIC ID 0 (address 0xFEE00000), fixed delivery, edge, ``vector``."""
    return MsiRoute(0xFEE00000, vector)


def fire_one(producer: MockProducer, guest: Guest) -> None:
    """One interrupt, and wait until the guest counted it (so none coalesce)."""
    target = guest.count + 1
    producer.fire()
    assert guest.wait_count(target), f"guest stopped at {guest.vector_counts()}, {guest.error}"


@pytest.mark.guest("kvm")
def test_the_guest_starts_in_x2apic_mode_and_counts_nothing_yet(apic_guest: Guest) -> None:
    assert apic_guest.running and apic_guest.apic == "x2apic"
    assert apic_guest.count == 0 and apic_guest.vector_counts() == {}
    assert "apic=x2apic" in repr(apic_guest)


@pytest.mark.guest("kvm")
def test_one_mock_per_vector_through_a_manager_each_counted_exactly(apic_guest: Guest) -> None:
    mgr = irqbypass.Manager()
    tokens = [irqbypass.Eventfd() for _ in VECTORS]
    consumers = [
        KvmIrqfdConsumer(token=t, vm=apic_guest, msi=msi(v), name=f"irqfd{v:#x}")
        for t, v in zip(tokens, VECTORS, strict=True)
    ]
    producers = [
        MockProducer(token=t, count=0, name=f"dev{v:#x}")
        for t, v in zip(tokens, VECTORS, strict=True)
    ]
    try:
        KvmIrqfdConsumer.open_group(consumers)
        for c, p in zip(consumers, producers, strict=True):
            p.open()
            mgr.register_consumer(c)
            mgr.register_producer(p)
            assert c.producer is p
        # the GSIs came from the VM's allocator, lowest free first
        assert sorted(c.gsi for c in consumers) == [24, 25, 26]
        for _ in range(N):
            for p in producers:
                fire_one(p, apic_guest)
        assert apic_guest.vector_counts() == {v: N for v in VECTORS}
        assert apic_guest.count == N * len(VECTORS)
        assert [c.stats()["delivered"] for c in consumers] == [N] * len(VECTORS)
        assert all(p.stats()["fired"] == N for p in producers)
        assert all(t.read(timeout=0) == 0 for t in tokens)  # KVM took every write
    finally:
        for c, p in zip(consumers, producers, strict=True):
            if mgr.is_registered(p):
                mgr.unregister_producer(p)
            if mgr.is_registered(c):
                mgr.unregister_consumer(c)
            p.close()
        KvmIrqfdConsumer.close_group(consumers)
        for t in tokens:
            t.close()
    assert apic_guest.vm is not None and apic_guest.vm.msi_routes == {}


@pytest.mark.guest("kvm")
def test_a_masked_vector_gets_nothing_and_its_writes_arrive_as_one_on_unmask(
    apic_guest: Guest,
) -> None:
    """What KVM does with writes to a deassigned irqfd's eventfd: nothing. They
    stay in the eventfd's counter (nobody reads it). KVM_IRQFD's assign polls the
    eventfd and, when it is readable, injects once, without reading the counter;
    the next write's wake-up then reads it (the stale count with it) and injects
    once more. So k writes while masked are one interrupt on unmask, as an
    MSI-X vector's pending bit delivers one message; and none after that is lost
    or doubled."""
    a_vec, b_vec = VECTORS[:2]
    with irqbypass.Eventfd() as ta, irqbypass.Eventfd() as tb:
        a = KvmIrqfdConsumer(token=ta, vm=apic_guest, msi=msi(a_vec), name="a")
        b = KvmIrqfdConsumer(token=tb, vm=apic_guest, msi=msi(b_vec), name="b")
        pa, pb = MockProducer(token=ta, count=0), MockProducer(token=tb, count=0)
        with a, b, pa, pb:
            fire_one(pa, apic_guest)
            a.mask()
            assert not a.assigned and a.stats()["masked"] == 1
            assert a.vm is not None and a.gsi not in a.vm.msi_routes
            pa.fire(5)
            # b still works, and its interrupt is counted only after a's writes
            # were made: an MSI irqfd injects within write(), so had KVM listened
            # to a's eventfd, a's vector would have been counted by now
            fire_one(pb, apic_guest)
            assert apic_guest.vector_counts() == {a_vec: 1, b_vec: 1}
            assert ta.read(timeout=0) == 5  # the writes sit in the eventfd
            pa.fire(3)
            a.unmask()
            assert apic_guest.wait_count(3)
            assert apic_guest.vector_counts() == {a_vec: 2, b_vec: 1}  # 3 writes: 1 interrupt
            fire_one(pa, apic_guest)  # the stale count goes with the next write
            assert apic_guest.vector_counts() == {a_vec: 3, b_vec: 1}
            assert ta.read(timeout=0) == 0
            for _ in range(N):
                fire_one(pa, apic_guest)
            assert apic_guest.vector_counts() == {a_vec: 3 + N, b_vec: 1}


@pytest.mark.guest("kvm")
def test_set_msi_retargets_a_live_vector_and_interrupts_follow_the_route(
    apic_guest: Guest,
) -> None:
    old, new = 0x51, 0x61
    with irqbypass.Eventfd() as token:
        consumer = KvmIrqfdConsumer(token=token, vm=apic_guest, msi=msi(old), name="v")
        producer = MockProducer(token=token, count=0)
        mgr = irqbypass.Manager()
        with consumer, producer:
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            try:
                for _ in range(N):
                    fire_one(producer, apic_guest)
                gsi = consumer.gsi
                consumer.set_msi(msi(new))  # live: the route changes under the irqfd
                assert consumer.assigned and consumer.gsi == gsi
                for _ in range(N):
                    fire_one(producer, apic_guest)
                assert apic_guest.vector_counts() == {old: N, new: N}
                assert consumer.stats()["delivered"] == N  # what arrived on its vector now
                # retargeting a masked vector takes effect on unmask
                consumer.mask()
                consumer.set_msi(msi(old))
                consumer.unmask()
                fire_one(producer, apic_guest)
                assert apic_guest.vector_counts() == {old: N + 1, new: N}
            finally:
                mgr.unregister_producer(producer)
                mgr.unregister_consumer(consumer)


@pytest.mark.guest("kvm")
def test_the_own_guest_in_x2apic_mode_from_a_topology_entry(kvm_usable: None) -> None:
    spec_options = {"vm": "guest", "apic": "x2apic", "msi": {"address": 0xFEE00000, "data": 0x45}}
    with irqbypass.Eventfd() as token:
        spec = irqbypass.plugin.EndpointSpec(
            name="own", kind="kvm-irqfd", side="consumer", token=token, options=spec_options
        )
        consumer = KvmIrqfdConsumer.from_spec(spec)
        assert consumer.gsi is None and consumer.apic == "x2apic"
        with consumer:
            own = consumer.guest
            assert own is not None and own.apic == "x2apic" and consumer.gsi == 24
            for i in range(1, 21):
                token.write()
                assert own.wait_count(i)
            assert own.vector_counts() == {0x45: 20}
            assert consumer.stats()["delivered"] == 20
        assert consumer.gsi is None  # given back with the VM
        assert consumer.stats()["delivered"] == 20


@pytest.mark.guest("kvm")
def test_without_the_x2apic_cpuid_bit_the_guest_reports_its_gp(
    kvm_usable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's check: without CPUID leaf 1 ECX bit 21, the WRMSR that
    enables x2APIC takes #GP; the guest reports it and start() says so."""
    original = guest.guest_cpuid

    def without_x2apic(kvm_fd: int) -> list[irqbypass_kvm._abi.kvm_cpuid_entry2]:
        entries = original(kvm_fd)
        for entry in entries:
            if entry.function == 1:
                entry.ecx &= ~irqbypass_kvm._apic.CPUID_1_ECX_X2APIC
        return entries

    monkeypatch.setattr(guest, "guest_cpuid", without_x2apic)
    broken = Guest(apic="x2apic")
    with pytest.raises(irqbypass.DeviceError, match=r"#GP.*leaf 1 ECX bit 21") as info:
        broken.start()
    assert info.value.errno is not None
    assert not broken.running and broken.vm is None


def test_bad_apic_arguments_are_refused() -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match="apic must be None"):
        Guest(apic="xapic")
    with pytest.raises(irqbypass.InvalidEndpointError, match="edge MSIs"):
        Guest(apic="x2apic", level=True)


@pytest.mark.guest("kvm")
def test_signal_msi_is_the_relay_path_into_the_same_apic(apic_guest: Guest) -> None:
    """KVM_SIGNAL_MSI (what a VMM without irqfd does; the delivery benchmark's relay)."""
    assert apic_guest.vm is not None
    for i in range(1, 11):
        apic_guest.vm.signal_msi(msi(0x77))
        assert apic_guest.wait_count(i)
    assert apic_guest.vector_counts() == {0x77: 10}
