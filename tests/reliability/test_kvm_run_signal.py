"""`irqbypass run` on kvm-irqfd pairs (the consumer's own guests), SIGINT at any
moment: its arrival is swept over every bytecode the run's main thread executes
in the kvm plugin (starting the guests, assigning, reading stats, closing),
deterministically (run_sweep, interrupts.sweep); after each, the run must have
exited 130 with its summary (but when the signal stopped it in the entries'
availability check, before anything ran) and left no fd, guest or vCPU thread.
Before the fix, 16 of 168 runs (one point in 50) failed."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import irqbypass_kvm
import pytest
from rel_support import COUNTERS
from run_sweep import sweep_runs

pytestmark = pytest.mark.usefixtures("guarded_sigint")

#: every STRIDE-th arrival point of the run sweep (each point is one whole run)
STRIDE = int(os.environ.get("IRQBYPASS_KVM_RUN_STRIDE", "13"))

#: a mock firing 3 interrupts into a kvm-irqfd consumer with ``options``
PAIR = """
[[producers]]
name = "m{k}"
kind = "mock"
token = "v{k}"
irq = 5
options = {{ rate = 0.0, count = 3 }}

[[consumers]]
name = "c{k}"
kind = "kvm-irqfd"
token = "v{k}"
options = {{ {options} }}
"""
PAIRS = [("0", ""), ("1", ", resample = true")]
#: what the run does before it opens anything (the entries' availability, the
#: pairing check): a signal there ends it without a summary, as nothing ran
BEFORE_THE_RUN = frozenset({"unavailable_reason", "pairing_problems"})
PLUGIN = Path(irqbypass_kvm.__file__).parent
KVM_FILES = [str(PLUGIN / name) for name in sorted(os.listdir(PLUGIN)) if name.endswith(".py")]


def sweep(
    config: Path,
    look: Callable[[], list[str]],
    counter: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sweep ``irqbypass run config`` over the kvm plugin's bytecodes; fail
    with the runs that went wrong."""
    points, failures, runs = sweep_runs(
        config,
        KVM_FILES,
        stride=STRIDE,
        capsys=capsys,
        monkeypatch=monkeypatch,
        look=look,
        no_summary_in=BEFORE_THE_RUN,
    )
    COUNTERS[counter] += points
    assert points > 100  # the sweep reached the plugin
    assert not failures, f"{len(failures)} of {runs - 1} runs:\n" + "\n".join(failures[:20])


def test_sigint_anywhere_in_a_kvm_run_exits_with_its_summary_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = irqbypass_kvm.unavailable_reason()
    if reason is not None:
        pytest.skip(f"/dev/kvm is unusable here: {reason}")
    config = tmp_path / "kvm.toml"
    config.write_text(
        "".join(PAIR.format(k=k, options=f'vm = "guest", gsi = 5{extra}') for k, extra in PAIRS)
    )
    told: set[threading.Thread] = set()

    def vcpu_threads_left() -> list[str]:
        threads = [
            t
            for t in threading.enumerate()
            if t.name.startswith("irqbypass-kvm-vcpu") and t not in told
        ]
        told.update(threads)  # each told once
        return [f"vCPU threads left: {threads}"] if threads else []

    sweep(config, vcpu_threads_left, "signals: kvm run arrival points", capsys, monkeypatch)


def test_sigint_anywhere_in_a_run_of_msi_pairs_on_a_vmm_vm_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same over MSI consumers on a VMM's VM (opened and closed as one
    batch, one of them masked): after each run the VM's table holds no route
    and no reference to it is left."""
    reason = irqbypass_kvm.unavailable_reason()
    if reason is not None:
        pytest.skip(f"/dev/kvm is unusable here: {reason}")
    from irqbypass_kvm import Vm, _abi, _kvm

    kvm_fd = _kvm.open_device()
    vm = Vm.create(kvm_fd)
    try:
        _kvm.ioctl(vm.fd, _abi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")
        config = tmp_path / "msi.toml"
        config.write_text(
            "".join(
                PAIR.format(
                    k=k,
                    options=f"vm = {vm.fd}, msi = {{ address = 0xfee00000, data = {0x41 + k} }}"
                    + extra,
                )
                for k, extra in enumerate(["", "", ", masked = true"])
            )
        )

        def routes_left() -> list[str]:
            left = [f"{vm!r}: {n} refs" for vm, n in Vm._borrowed.values()]
            Vm._borrowed.clear()  # each told once
            return [f"references left: {left}"] if left else []

        sweep(config, routes_left, "signals: kvm MSI run arrival points", capsys, monkeypatch)
    finally:
        vm.close()
        os.close(kvm_fd)
