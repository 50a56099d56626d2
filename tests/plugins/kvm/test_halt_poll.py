"""The per-VM halt-polling limit (KVM_ENABLE_CAP, KVM_CAP_HALT_POLL) is applied
to the guest's VM, changes what KVM does, and is refused when it cannot be."""

from __future__ import annotations

import errno
import time

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass_kvm import Guest, KvmIrqfdConsumer, Vm, _abi

N = 50


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


def deliver_to_a_sleeping_vcpu(
    guest: Guest, token: irqbypass.Eventfd, n: int, until: str | None = None
) -> dict[str, int]:
    """Inject up to ``n`` interrupts one at a time, each once the vCPU sleeps in
    KVM (its ``blocking`` statistic) and after the guest counted the last; stop
    early once the vCPU statistic ``until`` is non-zero. The vCPU's statistics.

    Waiting for ``blocking`` makes every interrupt end a halt that went through
    KVM's halt-polling code (``kvm_vcpu_halt``). An interrupt raised as soon as
    the guest counted the last one can arrive before the guest's next ``hlt``:
    it is taken at the handler's ``iret`` and that hlt never runs (in the 6.1
    test guest, 50 such interrupts ended 7 to 50 halts)."""
    stats: dict[str, int] = {}
    with KvmIrqfdConsumer(token=token, vm=guest):
        for i in range(1, n + 1):
            assert wait_blocking(guest), f"the vCPU never slept: {guest.error}"
            token.write()
            assert guest.wait_count(i), f"the guest stopped at {guest.count}: {guest.error}"
            stats = vcpu_stats_or_skip(guest)
            if until is not None and stats[until]:
                break
    return stats


def wait_blocking(guest: Guest, timeout: float = 10.0) -> bool:
    """Wait until the vCPU sleeps in KVM (``blocking``, set once a halt's poll
    ended); False on timeout or if the guest stopped."""
    deadline = time.monotonic() + timeout
    while not vcpu_stats_or_skip(guest)["blocking"]:
        if guest.error is not None or not guest.running or time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    return True


def vcpu_stats_or_skip(guest: Guest) -> dict[str, int]:
    try:
        return guest.vcpu_stats()
    except irqbypass.DeviceError as exc:
        if exc.errno == errno.ENOTSUP:
            pytest.skip(f"cannot see KVM's halt-polling counters: {exc.message}")
        raise


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_zero_means_the_vcpu_never_polls_and_still_counts_exactly(
    kvm_usable: None, token: irqbypass.Eventfd
) -> None:
    with Guest(line=5, halt_poll_ns=0) as guest:
        stats = deliver_to_a_sleeping_vcpu(guest, token, N)
        assert guest.count == N
        # the last ack exits to the vCPU thread after the guest counted it: wait for it
        deadline = time.monotonic() + 10.0
        while guest.acks < N and guest.error is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert guest.acks == N
    # the vCPU slept before each interrupt (so each ended a halt KVM counts),
    # and none of its halts polled
    assert stats["halt_exits"] >= N, stats
    assert stats["halt_attempted_poll"] == 0
    assert stats["halt_poll_success_ns"] == 0 and stats["halt_poll_fail_ns"] == 0


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_a_large_limit_makes_the_vcpu_poll(kvm_usable: None, token: irqbypass.Eventfd) -> None:
    """The counterpart: the same traffic under a 500 ms limit does poll, so the
    zero above is the option's doing, not a host that never polls.

    KVM (``kvm_vcpu_halt`` in virt/kvm/kvm_main.c, Debian 6.1's and later
    kernels' alike) starts a vCPU with no poll window and grows it (to
    ``halt_poll_ns_grow_start``, 10 us) after a halt shorter than the limit;
    the next halt polls. So two halts are enough, and here every interrupt ends
    one (:func:`deliver_to_a_sleeping_vcpu`); the first halt that polled ends
    the traffic (in the loaded 6.1 guest, the second halt polled in 22 of 22
    runs). Raised without that wait, the interrupts ended as few as 7 halts in
    50 in that guest, and in 2 of 4 full ``make test`` runs under load no poll
    followed even 250 of them (their counters were not kept). Not stopped
    early, every halt here would outlast its window and double it, up to the
    500 ms limit."""
    with Guest(line=5, halt_poll_ns=500_000_000) as guest:
        stats = deliver_to_a_sleeping_vcpu(guest, token, N, until="halt_attempted_poll")
    assert stats["halt_attempted_poll"] > 0, stats


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_vcpu_stats_read_while_the_vcpu_sleeps_in_hlt(kvm_usable: None) -> None:
    # a vCPU ioctl here would block on the mutex KVM_RUN holds: the stats fd is
    # opened before the vCPU runs, and reading it takes no lock
    with Guest(line=5, halt_poll_ns=0) as guest:
        stats = vcpu_stats_or_skip(guest)
        assert stats["halt_exits"] >= 0 and "exits" in stats
        assert guest.running
    with pytest.raises(irqbypass.InvalidEndpointError, match="start"):
        guest.vcpu_stats()


@pytest.mark.parametrize("bad", [-1, -200_000, 2**32, True, 1.5, "0"])
def test_a_bad_limit_is_refused_before_any_device_is_touched(bad: object) -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match="halt_poll_ns must be an integer"):
        Guest(line=5, halt_poll_ns=bad, device="/nonexistent/kvm")  # type: ignore[arg-type]


def test_the_largest_limit_kvm_keeps_is_accepted() -> None:
    guest = Guest(line=5, halt_poll_ns=2**32 - 1, device="/nonexistent/kvm")
    assert guest.halt_poll_ns == 2**32 - 1


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_a_kernel_without_the_cap_is_a_clear_error_and_leaves_nothing_open(
    kvm_usable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Vm.check_extension

    def without_halt_poll(self: Vm, cap: int) -> int:
        return 0 if cap == _abi.KVM_CAP_HALT_POLL else real(self, cap)

    monkeypatch.setattr(Vm, "check_extension", without_halt_poll)
    guest = Guest(line=5, halt_poll_ns=0)
    with pytest.raises(irqbypass.DeviceError, match="KVM_CAP_HALT_POLL") as info:
        guest.start()
    assert info.value.errno == errno.ENOTSUP
    assert not guest.running and guest.vm is None
    # the default asks for nothing, so the same kernel still runs a guest
    with Guest(line=5) as plain:
        assert plain.running


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_the_kernel_refuses_flags_with_einval(kvm_usable: None) -> None:
    # the ioctl is real: KVM checks the struct (flags must be 0), so a wrong
    # layout or number would not pass silently
    import os

    from irqbypass_kvm._kvm import ioctl, open_device

    kvm_fd = open_device()
    vm = Vm.create(kvm_fd)
    try:
        vm.set_halt_poll_ns(0)
        cap = _abi.kvm_enable_cap(cap=_abi.KVM_CAP_HALT_POLL, flags=1)
        with pytest.raises(irqbypass.DeviceError) as info:
            ioctl(vm.fd, _abi.KVM_ENABLE_CAP, cap, "KVM_ENABLE_CAP")
        assert info.value.errno == errno.EINVAL
    finally:
        vm.close()
        os.close(kvm_fd)


@pytest.mark.guest("kvm")
@pytest.mark.usefixtures("no_fd_leak")
def test_toml_option_reaches_the_own_guest(kvm_usable: None, token: irqbypass.Eventfd) -> None:
    consumer = KvmIrqfdConsumer.from_spec(spec(token, vm="guest", gsi=5, halt_poll_ns=0))
    assert consumer.halt_poll_ns == 0
    consumer.open()
    try:
        guest = consumer.guest
        assert guest is not None and guest.halt_poll_ns == 0
        for i in range(1, N + 1):
            token.write()
            assert guest.wait_count(i)
        assert consumer.stats()["delivered"] == N
        assert vcpu_stats_or_skip(guest)["halt_attempted_poll"] == 0
    finally:
        consumer.close()


def test_toml_option_defaults_to_the_kernel_default(token: irqbypass.Eventfd) -> None:
    assert KvmIrqfdConsumer.from_spec(spec(token)).halt_poll_ns is None


@pytest.mark.parametrize("bad", [-1, 2**32, "fast", True])
def test_toml_bad_limit_is_a_config_error_naming_the_key(
    token: irqbypass.Eventfd, bad: object
) -> None:
    with pytest.raises(irqbypass.ConfigError) as info:
        KvmIrqfdConsumer.from_spec(spec(token, halt_poll_ns=bad))
    assert "halt_poll_ns" in str(info.value) and "topo.toml" in str(info.value)


def test_toml_limit_with_a_vm_fd_is_refused(token: irqbypass.Eventfd) -> None:
    with pytest.raises(irqbypass.ConfigError, match="own guest") as info:
        KvmIrqfdConsumer.from_spec(spec(token, vm=7, gsi=5, halt_poll_ns=0))
    assert "halt_poll_ns" in str(info.value)


def test_constructor_refuses_a_limit_it_would_not_apply(token: irqbypass.Eventfd) -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match="own guest"):
        KvmIrqfdConsumer(token=token, vm=7, gsi=5, halt_poll_ns=0)
    with pytest.raises(irqbypass.InvalidEndpointError, match="halt_poll_ns must be"):
        KvmIrqfdConsumer(token=token, halt_poll_ns=-1)
