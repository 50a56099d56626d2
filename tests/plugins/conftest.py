"""Fixtures the producer tests on a device model share.

The models differ (irqbypass_vdpa.testing.FakeVdpa, irqbypass_vhost.testing.FakeVhost,
each an irqbypass.FakeDevice); how a test takes a VMM's fd from one does not. A
test module gives its model as its own ``fake`` fixture, and ``vmm_fd`` uses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import irqbypass
import pytest


class HandsOver(Protocol):
    """A device model that can play the VMM setting its device up."""

    calls: list[irqbypass.DeviceCall]
    opened: list[str]

    def hand_over(self) -> int: ...

    def close(self, fd: int) -> None: ...


@pytest.fixture
def vmm_fd(fake: HandsOver) -> Iterator[int]:
    """A VMM's fd, set up as the model's ``hand_over`` says (vdpa: opened, owned,
    DRIVER_OK; vhost: opened and owned); what that recorded is cleared, so a test
    sees only what the producer does. Closed after the test."""
    fd = fake.hand_over()
    del fake.calls[:], fake.opened[:]
    yield fd
    fake.close(fd)
