"""Bad input: a clear IrqBypassError subclass each, and nothing half-assigned."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import irqbypass
import irqbypass.plugin
import irqbypass_kvm
import pytest
from irqbypass_kvm import Guest, KvmIrqfdConsumer


def spec(token: irqbypass.Eventfd, **options: object) -> irqbypass.plugin.EndpointSpec:
    return irqbypass.plugin.EndpointSpec(
        name="k0",
        kind="kvm-irqfd",
        side="consumer",
        token=token,
        options=options,
        key_path="consumers[0]",
        file="topo.toml",
    )


def assert_nothing_open(consumer: KvmIrqfdConsumer) -> None:
    assert not consumer.assigned
    assert consumer.vm is None
    assert consumer.guest is None or consumer.vm_arg is consumer.guest
    assert consumer.resample_eventfd is None


@pytest.mark.usefixtures("no_fd_leak")
def test_missing_device_names_it_and_what_to_do(token: irqbypass.Eventfd) -> None:
    consumer = KvmIrqfdConsumer(token=token, vm="guest", device="/nonexistent/kvm")
    with pytest.raises(irqbypass.DeviceError) as info:
        consumer.open()
    assert info.value.errno == errno.ENOENT
    assert "/nonexistent/kvm does not exist; check the consumer's device option" in str(
        info.value
    ), "a wrong path is not a host without KVM (issue 12, defect 10)"
    assert_nothing_open(consumer)
    reason = irqbypass_kvm.unavailable_reason("/nonexistent/kvm")
    assert reason is not None and "/nonexistent/kvm does not exist" in reason


@pytest.fixture
def no_permission_path() -> Iterator[str]:
    """A path whose open(O_RDWR) fails with EACCES for this process."""
    with tempfile.TemporaryDirectory() as tmp:
        locked = os.path.join(tmp, "kvm")
        with open(locked, "w"):
            pass
        os.chmod(locked, 0)
        for path in (locked, "/sys/kernel/notes"):  # root ignores mode 000; sysfs does not
            try:
                os.close(os.open(path, os.O_RDWR))
            except PermissionError:
                yield path
                return
            except OSError:
                continue
        pytest.skip("no path here refuses this process with EACCES")


@pytest.mark.usefixtures("no_fd_leak")
def test_no_permission_names_the_device_and_the_group(
    token: irqbypass.Eventfd, no_permission_path: str
) -> None:
    consumer = KvmIrqfdConsumer(token=token, vm="guest", device=no_permission_path)
    with pytest.raises(irqbypass.DeviceError) as info:
        consumer.open()
    assert info.value.errno == errno.EACCES
    assert f"{no_permission_path}: permission denied" in str(info.value)
    assert "kvm" in str(info.value) and "usermod" in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)
    assert_nothing_open(consumer)


@pytest.mark.usefixtures("no_fd_leak")
def test_a_device_that_is_not_kvm(token: irqbypass.Eventfd) -> None:
    consumer = KvmIrqfdConsumer(token=token, vm="guest", device="/dev/null")
    with pytest.raises(irqbypass.DeviceError, match="/dev/null is not a KVM device"):
        consumer.open()
    assert_nothing_open(consumer)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gsi": 4096, "vm": 3}, "GSI 4096 is out of range"),
        ({"gsi": -1, "vm": 3}, "GSI -1 is out of range"),
        ({"gsi": 24, "vm": 3}, "GSI 24 is not routed"),
        ({"gsi": 2}, "PIC lines 0-15 except 2"),
        ({"gsi": 16}, "PIC lines 0-15 except 2"),
        ({"gsi": 1, "resample": True}, "cannot be one"),
        ({"gsi": 5, "vm": 3, "msi": irqbypass_kvm.MsiRoute(0xFEE00000, 0x30)}, "irqchip's pins"),
        ({"gsi": 40, "msi": irqbypass_kvm.MsiRoute(0xFEE00000, 0x30)}, 'use apic = "x2apic"'),
        ({"apic": "x2apic"}, "x2apic mode and takes MSIs only"),
        ({"apic": "xapic"}, 'apic must be "x2apic"'),
        ({"vm": 3, "gsi": 30, "apic": "x2apic"}, "own guest"),
        ({"gsi": 40, "vm": 3, "resample": True, "msi": irqbypass_kvm.MsiRoute(0, 0)}, "edge"),
        ({"vm": 3}, "give the gsi"),
        ({"vm": "qemu"}, 'vm must be "guest"'),
        ({"vm": True}, 'vm must be "guest"'),
        # issue 20: the wrong type where an int or a bool is meant
        ({"gsi": True}, "gsi must be an int, not True"),
        ({"gsi": 5.0}, "gsi must be an int, not 5.0"),
        ({"gsi": "5"}, "gsi must be an int, not '5'"),
        ({"gsi": 5, "resample": "no"}, "resample must be True or False, not 'no'"),
        ({"gsi": 5, "masked": 1}, "masked must be True or False"),
        ({"gsi": 40, "vm": 3, "msi": (0xFEE00000, 0x41)}, "msi must be an MsiRoute"),
        ({"gsi": 5, "guest_ack": 1}, "guest_ack must be a str"),
        ({"gsi": 5, "on_stop": "print"}, "on_stop must be a callable"),
        # issue 20: MSIs the plugin's own x2APIC guest cannot count
        (
            {"apic": "x2apic", "msi": irqbypass_kvm.MsiRoute(0xFEE00000, 0x10)},
            "vector 0x10, which the guest cannot count",
        ),
        (
            {"apic": "x2apic", "msi": irqbypass_kvm.MsiRoute(0xFEE00000, 0xFF)},
            "vector 0xff, which the guest cannot count",
        ),
        (
            {"apic": "x2apic", "msi": irqbypass_kvm.MsiRoute(0xFEE00000, 0x441)},
            "delivery mode 4",
        ),
        (
            {"apic": "x2apic", "msi": irqbypass_kvm.MsiRoute(0xFED00000, 0x41)},
            "does not reach the guest's local APIC",
        ),
    ],
)
def test_bad_arguments_are_refused_at_construction(
    token: irqbypass.Eventfd, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match=message):
        KvmIrqfdConsumer(token=token, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((True, 0x41), "address must be an int, not True"),
        ((0xFEE00000, 65.0), "data must be an int, not 65.0"),
        ((0xFEE00000, 0x41, False), "devid must be an int, not False"),
        ((0xFEE00000, "0x41"), "data must be an int"),
    ],
)
def test_msi_route_refuses_what_is_not_an_int(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match=message):
        irqbypass_kvm.MsiRoute(*args)  # type: ignore[arg-type]


def test_msi_vectors_the_guest_cannot_count_fail_check() -> None:
    """In TOML too: ``check`` refuses them (``run`` reported 0 delivered, all
    coalesced, before)."""
    for data in (0x1F, 0xFF):
        with (
            irqbypass.Eventfd() as token,
            pytest.raises(irqbypass.ConfigError, match="cannot count"),
        ):
            KvmIrqfdConsumer.from_spec(
                spec(token, apic="x2apic", msi={"address": 0xFEE00000, "data": data})
            )


def test_token_must_be_an_eventfd() -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match=r"must be an irqbypass\.Eventfd"):
        KvmIrqfdConsumer(token="vector0")


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        ({"gsi": 5000}, "consumers[0].options.gsi", "above the maximum"),
        ({"vm": "qemu"}, "consumers[0].options.vm", "a VM fd number"),
        ({"vm": 7}, "consumers[0].options.gsi", "required when vm is a VM fd"),
        ({"gsi": 30}, "consumers[0].options", "not routed"),
        ({"resampel": True}, "consumers[0].options.resampel", "did you mean 'resample'"),
        ({"vm": 7, "gsi": 40, "msi": {"address": 1}}, "consumers[0].options.msi.data", "required"),
        (
            {"vm": 7, "gsi": 40, "msi": {"address": 1, "data": 2, "x": 1}},
            "consumers[0].options.msi.x",
            "unknown",
        ),
        ({"vm": 7, "gsi": 40, "msi": 3}, "consumers[0].options.msi", "expected a table"),
        ({"gsi": -1}, "consumers[0].options.gsi", "below the minimum"),
        ({"vm": 7, "apic": "x2apic"}, "consumers[0].options.apic", "own guest"),
        ({"apic": "xapic"}, "consumers[0].options.apic", "is not one of 'x2apic'"),
        ({"apic": "x2apic"}, "consumers[0].options", "takes MSIs only"),
        (
            {"msi": {"address": 0xFEE00000, "data": 0x41}},
            "consumers[0].options",
            'use apic = "x2apic"',
        ),
    ],
)
def test_bad_options_are_config_errors(
    token: irqbypass.Eventfd, options: dict[str, object], key: str, message: str
) -> None:
    with pytest.raises(irqbypass.ConfigError, match=message) as info:
        KvmIrqfdConsumer.from_spec(spec(token, **options))
    assert info.value.file == "topo.toml"
    assert info.value.key == key


def test_options_build_an_unopened_consumer(token: irqbypass.Eventfd) -> None:
    consumer = KvmIrqfdConsumer.from_spec(
        spec(
            token, vm=7, gsi=40, msi={"address": 0xFEE00000, "data": 0x41, "devid": 8}, masked=True
        )
    )
    assert consumer.vm_arg == 7 and consumer.gsi == 40 and consumer.masked
    assert consumer.msi == irqbypass_kvm.MsiRoute(0xFEE00000, 0x41, 8)
    assert not consumer.assigned and consumer.vm is None
    default = KvmIrqfdConsumer.from_spec(spec(token))
    assert default.vm_arg == "guest" and default.gsi == 5 and not default.resample
    # an MSI without gsi: the VM's allocator picks one on open
    auto = KvmIrqfdConsumer.from_spec(spec(token, vm=7, msi={"address": 0xFEE00000, "data": 1}))
    assert auto.gsi is None and auto.stats()["gsi"] == -1
    assert "GSI (not yet taken)" in auto.status()


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_a_closed_eventfd_is_refused_before_any_device_work(kvm_usable: None) -> None:
    token = irqbypass.Eventfd()
    consumer = KvmIrqfdConsumer(token=token, vm="guest")
    token.close()
    with pytest.raises(irqbypass.InvalidEndpointError, match="token eventfd is closed") as info:
        consumer.open()
    assert info.value.errno == errno.EBADF
    assert_nothing_open(consumer)


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_an_fd_that_is_not_a_vm(kvm_usable: None, token: irqbypass.Eventfd) -> None:
    with irqbypass.Eventfd() as other:
        consumer = KvmIrqfdConsumer(token=token, vm=other.fileno(), gsi=5)
        with pytest.raises(irqbypass.InvalidEndpointError, match="is not a KVM VM fd") as info:
            consumer.open()
        assert "anon_inode:[eventfd]" in str(info.value)
        assert_nothing_open(consumer)
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    consumer = KvmIrqfdConsumer(token=token, vm=fd, gsi=5)
    with pytest.raises(irqbypass.InvalidEndpointError, match="is not open") as info:
        consumer.open()
    assert info.value.errno == errno.EBADF
    assert_nothing_open(consumer)


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_same_eventfd_and_gsi_twice_is_busy_and_the_first_keeps_working(
    guest: Guest, token: irqbypass.Eventfd
) -> None:
    first = KvmIrqfdConsumer(token=token, vm=guest, name="first")
    second = KvmIrqfdConsumer(token=token, vm=guest, name="second")
    with first:
        with pytest.raises(irqbypass.DeviceError, match="already assigned as an irqfd") as info:
            second.open()
        assert info.value.errno == errno.EBUSY
        assert_nothing_open(second)
        assert first.assigned
        token.write()
        assert guest.wait_count(1)
    # after the first let go, the second can take it
    with second:
        token.write()
        assert guest.wait_count(2)


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_an_eventfd_busy_on_another_vm_is_not_said_to_be_on_this_one(
    kvm_usable: None, token: irqbypass.Eventfd
) -> None:
    """Linux 6.17 binds an eventfd to at most one irqfd on the whole host: a
    second VM's assign is EBUSY too, and the error must not send the user
    looking for a holder on the VM that has none."""
    with Guest(line=5) as one, Guest(line=5) as other:
        first = KvmIrqfdConsumer(token=token, vm=one, name="first")
        second = KvmIrqfdConsumer(token=token, vm=other, name="second")
        with first:
            try:
                second.open()
            except irqbypass.DeviceError as exc:
                assert exc.errno == errno.EBUSY
                message = str(exc)
                assert "already assigned as an irqfd" in message
                assert "on this VM;" not in message, "it is on another VM"
                assert "or, since Linux 6.17, on another VM" in message
            else:  # a kernel before 6.17 lets both VMs listen
                second.close()
            assert_nothing_open(second)


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_guest_not_running_is_refused(kvm_usable: None, token: irqbypass.Eventfd) -> None:
    guest = Guest(line=5)
    consumer = KvmIrqfdConsumer(token=token, vm=guest)
    with pytest.raises(irqbypass.InvalidEndpointError, match="not running"):
        consumer.open()
    assert_nothing_open(consumer)


EARLY_CLOSE_CHILD = r"""
import time
import irqbypass
from irqbypass_kvm import Guest

original = Guest._set_run_sigmask

def late(self):
    time.sleep(0.5)  # the vCPU thread has not blocked the stop signal yet
    original(self)

Guest._set_run_sigmask = late
guest = Guest(line=5)
try:
    guest.start(timeout=0.01)  # gives up at once: close() signals the vCPU thread
except irqbypass.DeviceError as exc:
    print("refused:", exc.errno, flush=True)
print("alive", flush=True)
"""


# a new Python process (imports: most of its time under TCG): one guest kernel is enough
@pytest.mark.guest("kvm", kernels=("6.12",))
def test_closing_before_the_vcpu_thread_blocked_its_stop_signal_spares_the_process(
    kvm_usable: None,
) -> None:
    """The stop signal's default action ends the process: a vCPU thread must
    have it blocked from its first instruction, not from when it gets to it."""
    import subprocess
    import sys

    child = subprocess.run(
        [sys.executable, "-c", EARLY_CLOSE_CHILD], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, f"the process died: {child.returncode} {child.stderr}"
    assert child.stdout == f"refused: {errno.ETIMEDOUT}\nalive\n"


def test_the_file_and_python_make_the_same_settings(token: irqbypass.Eventfd) -> None:
    """One reading of the options for both ways in (issue 28 item 4): the
    target and the route are types, the same from a file as from Python."""
    from irqbypass_kvm import _settings

    msi = {"address": 0xFEE00000, "data": 0x41}
    from_file = KvmIrqfdConsumer.from_spec(spec(token, vm=7, gsi=40, msi=msi, masked=True))
    from_python = KvmIrqfdConsumer(
        token=token,
        name="k0",
        vm=7,
        gsi=40,
        msi=irqbypass_kvm.MsiRoute(0xFEE00000, 0x41),
        masked=True,
    )
    assert from_file.settings == from_python.settings
    assert from_file.settings.target == _settings.VmFd(7)
    assert from_file.settings.route == _settings.Msi(
        irqbypass_kvm.MsiRoute(0xFEE00000, 0x41), 40, True
    )
    own = KvmIrqfdConsumer.from_spec(spec(token, resample=True)).settings
    assert own.target == _settings.OwnGuest() and own.route == _settings.Pin(5, resample=True)


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
@pytest.mark.parametrize("where", ["own guest", "VM fd (MSI)", "VM fd (resample)"])
def test_running_out_of_fds_at_any_step_of_open_is_a_device_error(
    kvm_usable: None,
    vm: irqbypass_kvm.Vm,
    where: str,
    open_under_each_fd_limit: Callable[..., Iterator[tuple[int, BaseException, Any]]],
) -> None:
    """Each step of open() that makes an fd (the guest's, a dup of the VMM's VM
    fd, an mmap of the vCPU, an eventfd) can meet RLIMIT_NOFILE: each time the
    error is a DeviceError (EMFILE) that says to raise the limit, and nothing is
    left open; with enough fds the consumer opens."""

    def make(token: irqbypass.Eventfd) -> KvmIrqfdConsumer:
        if where == "own guest":
            return KvmIrqfdConsumer(
                token=token, vm="guest", gsi=5, resample=True, guest_ack="eventfd"
            )
        if where == "VM fd (MSI)":
            return KvmIrqfdConsumer(
                token=token, vm=vm.fd, msi=irqbypass_kvm.MsiRoute(0xFEE00000, 0x41)
            )
        return KvmIrqfdConsumer(token=token, vm=vm.fd, gsi=5, resample=True)

    for left, failure, consumer in open_under_each_fd_limit(make):
        assert isinstance(failure, irqbypass.DeviceError), f"{left} fds left: {failure!r}"
        assert failure.errno == errno.EMFILE
        assert "ulimit -n" in str(failure), str(failure)
        assert_nothing_open(consumer)
        assert irqbypass_kvm.Vm._borrowed == {}


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
@pytest.mark.parametrize("route", ["pin", "MSI", "MSI batch"])
def test_closing_a_consumer_after_its_guest_was_closed_releases_it(
    kvm_usable: None, token: irqbypass.Eventfd, route: str
) -> None:
    """The owner of a Guest may close it before the consumers on it: KVM took
    their irqfds and routes with the VM, so their close has nothing left to
    undo in KVM and must release the rest; an unmask meanwhile is a
    DeviceError (EBADF) that says the VM is closed."""
    guest = Guest(line=5) if route == "pin" else Guest(apic="x2apic")
    guest.start()
    msi = None if route == "pin" else irqbypass_kvm.MsiRoute(0xFEE00000, 0x41)
    consumer = KvmIrqfdConsumer(token=token, vm=guest, msi=msi)
    masked = KvmIrqfdConsumer(token=irqbypass.Eventfd(), vm=guest, msi=msi, masked=msi is not None)
    try:
        if route == "MSI batch":
            KvmIrqfdConsumer.open_group([consumer, masked])
        else:
            consumer.open()
            masked.open()
        guest.close()  # its owner closed it first
        if msi is not None:
            with pytest.raises(irqbypass.DeviceError, match="the VM is closed") as info:
                masked.unmask()
            assert info.value.errno == errno.EBADF
        if route == "MSI batch":
            KvmIrqfdConsumer.close_group([consumer, masked])
        else:
            consumer.close()
            masked.close()
        assert_nothing_open(consumer)
        assert_nothing_open(masked)
    finally:
        masked.token.close()
        guest.close()
