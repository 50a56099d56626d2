"""Fixtures for the kvm plugin's tests: a test that needs a kernel KVM
(``kvm_usable``) is marked ``guest("kvm")``, so it runs in the test guests
(kvm_amd on TCG's emulated SVM) on every machine, and on the host as well where
the host's /dev/kvm works (tests/guest/guest_results.py)."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import irqbypass_kvm
import pytest
from irqbypass_kvm import Vm, _abi, _kvm


@functools.cache
def _reason() -> str | None:
    return irqbypass_kvm.unavailable_reason()


def kvm_set_up_here() -> bool:
    """Inside a test guest that set KVM up (inside.sh loaded kvm_amd)."""
    return "kvm" in os.environ.get("IRQBYPASS_IN_GUEST", "").split(",")


@pytest.fixture
def kvm_usable(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("guest")
    assert marker is not None and "kvm" in marker.args, (
        f"{request.node.name} needs /dev/kvm: mark it @pytest.mark.guest('kvm') so that it "
        "runs in the test guests, on every machine, and not only where the host has KVM"
    )
    reason = _reason()
    if reason is None:
        return
    if kvm_set_up_here():
        pytest.fail(f"the test guest loaded kvm_amd, yet /dev/kvm is unusable: {reason}")
    pytest.skip(f"/dev/kvm is unusable here: {reason}")


def note_reentries(request: pytest.FixtureRequest, guest: irqbypass_kvm.Guest) -> None:
    """Deliveries the guest did not count because they entered a running
    handler (Guest.reentered: a nested hypervisor's replay), in the junit XML's
    properties, where docs/testing.md's figures come from."""
    if guest.reentered:
        request.node.user_properties.append(("guest_reentered", guest.reentered))


@pytest.fixture
def guest(kvm_usable: None, request: pytest.FixtureRequest) -> Iterator[irqbypass_kvm.Guest]:
    with irqbypass_kvm.Guest(line=5) as running:
        yield running
        note_reentries(request, running)


@pytest.fixture
def level_guest(kvm_usable: None, request: pytest.FixtureRequest) -> Iterator[irqbypass_kvm.Guest]:
    with irqbypass_kvm.Guest(line=5, level=True) as running:
        yield running
        note_reentries(request, running)


@pytest.fixture
def apic_guest(kvm_usable: None, request: pytest.FixtureRequest) -> Iterator[irqbypass_kvm.Guest]:
    with irqbypass_kvm.Guest(apic="x2apic") as running:
        yield running
        note_reentries(request, running)


@pytest.fixture
def vm(kvm_usable: None) -> Iterator[Vm]:
    """A VM with the in-kernel irqchip and no vCPU: all routing needs."""
    kvm_fd = _kvm.open_device()
    vm = Vm.create(kvm_fd)
    try:
        _kvm.ioctl(vm.fd, _abi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")
        yield vm
    finally:
        vm.close()
        _kvm.os.close(kvm_fd)
