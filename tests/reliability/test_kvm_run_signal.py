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
from pathlib import Path

import irqbypass_kvm
import pytest
from rel_support import COUNTERS
from run_sweep import sweep_runs

pytestmark = pytest.mark.usefixtures("guarded_sigint")

#: every STRIDE-th arrival point of the run sweep (each point is one whole run)
STRIDE = int(os.environ.get("IRQBYPASS_KVM_RUN_STRIDE", "13"))

TOPOLOGY = """
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
irq = 5
options = {{ vm = "guest"{extra} }}
"""
PAIRS = [("0", ""), ("1", ", resample = true")]
PLUGIN = Path(irqbypass_kvm.__file__).parent
KVM_FILES = [str(PLUGIN / name) for name in sorted(os.listdir(PLUGIN)) if name.endswith(".py")]


def test_sigint_anywhere_in_a_kvm_run_exits_with_its_summary_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = irqbypass_kvm.unavailable_reason()
    if reason is not None:
        pytest.skip(f"/dev/kvm is unusable here: {reason}")
    config = tmp_path / "kvm.toml"
    config.write_text("".join(TOPOLOGY.format(k=k, extra=extra) for k, extra in PAIRS))
    told: set[threading.Thread] = set()

    def vcpu_threads_left() -> list[str]:
        threads = [
            t
            for t in threading.enumerate()
            if t.name.startswith("irqbypass-kvm-vcpu") and t not in told
        ]
        told.update(threads)  # each told once
        return [f"vCPU threads left: {threads}"] if threads else []

    points, failures, runs = sweep_runs(
        config,
        KVM_FILES,
        stride=STRIDE,
        capsys=capsys,
        monkeypatch=monkeypatch,
        look=vcpu_threads_left,
        no_summary_in=frozenset({"unavailable_reason"}),
    )
    COUNTERS["signals: kvm run arrival points"] += points
    assert points > 100  # the sweep reached the plugin
    assert not failures, f"{len(failures)} of {runs - 1} runs:\n" + "\n".join(failures[:20])
