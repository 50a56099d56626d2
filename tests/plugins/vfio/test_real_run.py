"""The chain through the command line: ``irqbypass run`` applies a topology
file of e1000e's 5 MSI-X vectors (vfio producers on a device fd this test
hands it, as a VMM would) paired by token with kvm-irqfd consumers, each into
its own x2APIC guest; this process raises the vectors on its copy of the fd
and reads what each guest counted with ``irqbypass status --json``, exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from e1000e import NAMES, VECTORS, E1000e
from edu import device_fd
from realdevice import WAIT_S

pytestmark = pytest.mark.guest("kvm", "vfio")

E1000E = os.environ.get("IRQBYPASS_TEST_VFIO_E1000E", "")
ROUNDS = 3
#: the x2APIC guests' vector for e1000e's vector v
GUEST_VECTOR = 0x41


def topology(fd: int) -> str:
    """One vfio producer and one kvm-irqfd consumer per vector, paired by token."""
    entries = []
    for v in range(VECTORS):
        entries.append(
            f'[[producers]]\nkind = "vfio"\nname = "{NAMES[v]}"\ntoken = "v{v}"\n'
            f'options = {{ fd = {fd}, index = "msix", vector = {v} }}\n'
        )
        entries.append(
            f'[[consumers]]\nkind = "kvm-irqfd"\nname = "guest{v}"\ntoken = "v{v}"\n'
            f'options = {{ vm = "guest", apic = "x2apic", '
            f"msi = {{ address = 0xfee00000, data = {GUEST_VECTOR:#x} }} }}\n"
        )
    return "\n".join(entries)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "irqbypass", *args],
        capture_output=True, text=True, timeout=WAIT_S, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def delivered(control: Path) -> dict[str, int] | None:
    """Each pair's count in its guest (None while the run is not answering yet)."""
    status = cli("status", str(control), "--json")
    if status.returncode != 0:
        return None
    pairs = json.loads(status.stdout)["pairs"]
    return {p["token"]: p["consumer_stats"]["delivered"] for p in pairs if p["paired"]}


def wait_delivered(control: Path, want: dict[str, int]) -> dict[str, int] | None:
    """The counts once they equal ``want``, or what they were at the hang guard."""
    deadline = time.monotonic() + WAIT_S
    got = delivered(control)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = delivered(control)
    return got


@contextmanager
def running(topo: Path, control: Path, fd: int) -> Iterator[subprocess.Popen[str]]:
    """``irqbypass run --control`` on ``topo``, the device fd inherited; Ctrl-C at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "irqbypass", "run", "--control", str(control), str(topo)],
        pass_fds=(fd,), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_irqbypass_run_applies_the_chain_file(tmp_path: Path, no_fd_leak: None) -> None:
    if not E1000E:
        pytest.skip("no e1000e device: this runs in the test guest (make guest-test)")
    topo, control = tmp_path / "chain.toml", tmp_path / "control.sock"
    with device_fd(E1000E) as fd:
        topo.write_text(topology(fd))
        with running(topo, control, fd) as proc:
            zero = dict.fromkeys((f"v{v}" for v in range(VECTORS)), 0)
            assert wait_delivered(control, zero) == zero, "the run did not pair all five"
            nic = E1000e(fd)
            nic.setup()
            try:
                for r in range(1, ROUNDS + 1):
                    for v in range(VECTORS):
                        nic.raise_vector(v)
                    want = dict.fromkeys(zero, r)
                    assert wait_delivered(control, want) == want, f"round {r}"
                    for v in range(VECTORS):
                        nic.arrived(v)
            finally:
                nic.quiet()
            proc.send_signal(signal.SIGINT)  # as an operator stops it
            out, _ = proc.communicate(timeout=WAIT_S)
        # 130: stopped by SIGINT, after a teardown that finished
        assert proc.returncode == 130, out
        assert "stopped by SIGINT; everything was torn down" in out
        for v in range(VECTORS):
            assert f"v{v} " in out and f"guest{v} " in out
