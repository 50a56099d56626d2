"""Fixtures for the kvm plugin's tests: skip where /dev/kvm is unusable."""

from __future__ import annotations

from collections.abc import Iterator

import irqbypass_kvm
import pytest


@pytest.fixture(scope="session")
def kvm_usable() -> None:
    reason = irqbypass_kvm.unavailable_reason()
    if reason is not None:
        pytest.skip(f"/dev/kvm is unusable here: {reason}")


@pytest.fixture
def guest(kvm_usable: None) -> Iterator[irqbypass_kvm.Guest]:
    with irqbypass_kvm.Guest(line=5) as running:
        yield running


@pytest.fixture
def level_guest(kvm_usable: None) -> Iterator[irqbypass_kvm.Guest]:
    with irqbypass_kvm.Guest(line=5, level=True) as running:
        yield running
