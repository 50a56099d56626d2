"""The vfio real-device tests marked ``guest`` run in the vfio test guest (tests/guest)."""

from guest_results import pytest_runtest_protocol

__all__ = ["pytest_runtest_protocol"]
