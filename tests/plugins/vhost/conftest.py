"""The vhost real-device tests marked ``guest`` run in the vdpa test guest
(tests/guest), which loads vhost_net beside the vdpa modules."""

from guest_results import pytest_runtest_protocol

__all__ = ["pytest_runtest_protocol"]
