"""Soak: apply / run / tear down one topology again and again; fds, threads and
memory return to where they started.

The topology uses every installed kind that works here without special
hardware and that this suite knows how to configure: ``mock`` -> ``logging``
(one pair bypassed, one with ``bypass = false``), and ``mock`` -> ``kvm-irqfd``
(its own one-vCPU guest) when that kind reports itself available. ``vfio`` and
``vdpa`` need a bound device and are left out (the test prints which kinds it
used and which it skipped, and why). ``IRQBYPASS_SOAK_CYCLES`` (default 30) sets
the number of cycles.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import tracemalloc
from pathlib import Path

import irqbypass
import pytest
from rel_support import COUNTERS

CYCLES = int(os.environ.get("IRQBYPASS_SOAK_CYCLES", "30"))
WARMUP = 3
FIRES = 200
HANG_GUARD = 60.0
#: tolerances: memory may wobble (allocator, caches), fds and threads may not
TRACED_TOLERANCE = 256 * 1024
RSS_TOLERANCE_KB = 8 * 1024

KNOWN = {"mock", "logging", "kvm-irqfd"}

BASE = """
[[producers]]
name = "mock0"
kind = "mock"
token = "v0"
irq = 32
options = {{ rate = 0, count = {fires} }}

[[consumers]]
name = "log0"
kind = "logging"
token = "v0"
options = {{ json_file = "{json}" }}

[[producers]]
name = "mock1"
kind = "mock"
token = "v1"
options = {{ rate = 0, count = {fires}, burst = 10 }}

[[consumers]]
name = "log1"
kind = "logging"
token = "v1"
bypass = false
"""

KVM = """
[[producers]]
name = "mock-kvm"
kind = "mock"
token = "vk"
irq = 5
options = { rate = 0, count = 20 }

[[consumers]]
name = "guest0"
kind = "kvm-irqfd"
token = "vk"
options = { vm = "guest", gsi = 5 }
"""


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def wait_for(condition: object, what: str) -> None:
    """Poll ``condition()`` until true; fail (never hang) after HANG_GUARD."""
    deadline = time.monotonic() + HANG_GUARD
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"stuck waiting for {what}"
        time.sleep(0.005)


def kinds_to_use(host: irqbypass.PluginHost) -> tuple[list[str], dict[str, str]]:
    used, skipped = [], {}
    for side in ("producer", "consumer"):
        for name in host.kinds.names(side):
            reason = host.kinds.get(side, name).unavailable_reason()
            if reason is not None:
                skipped[name] = reason
            elif name not in KNOWN:
                skipped[name] = "available, but this suite does not know how to configure it"
            else:
                used.append(name)
    return used, skipped


def cycle(config: irqbypass.Config, host: irqbypass.PluginHost, kvm: bool) -> int:
    topology = irqbypass.Topology(config, host)
    topology.apply()
    try:
        rows = {row.token: row for row in topology.status()}
        assert rows["v0"].paired and not rows["v1"].paired
        if kvm:
            assert rows["vk"].paired
        wait_for(lambda: topology.finished, "the producers to finish")
        wait_for(
            lambda: all(topology.status()[i].delivered == FIRES for i in range(2)),
            "the logging consumers to receive every interrupt",
        )
        if kvm:
            guest = next(r for r in topology.status() if r.token == "vk")
            wait_for(lambda: (guest.delivered or 0) >= 1, "the guest to take an interrupt")
        return sum(row.fired or 0 for row in topology.status())
    finally:
        topology.teardown()


def test_soak_apply_run_teardown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = irqbypass.load_plugins()
    used, skipped = kinds_to_use(host)
    assert {"mock", "logging"} <= set(used)
    kvm = "kvm-irqfd" in used
    text = BASE.format(fires=FIRES, json=tmp_path / "log0.jsonl") + (KVM if kvm else "")
    config = irqbypass.parse_config(text, file="soak.toml")
    with capsys.disabled():
        print(f"\nsoak: kinds used {sorted(used)}; skipped {skipped}")

    for _ in range(WARMUP):  # imports, caches, the first guest: not leaks
        cycle(config, host, kvm)
    gc.collect()
    fds, threads, rss = open_fd_count(), threading.active_count(), rss_kb()
    tracemalloc.start()
    try:
        traced = tracemalloc.get_traced_memory()[0]
        fired = 0
        for _ in range(CYCLES):
            fired += cycle(config, host, kvm)
            assert open_fd_count() == fds, "an fd leaked in this cycle"
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - traced
    finally:
        tracemalloc.stop()
    assert open_fd_count() == fds
    assert threading.active_count() == threads
    assert grown < TRACED_TOLERANCE, f"{grown} bytes still allocated after {CYCLES} cycles"
    assert rss_kb() - rss < RSS_TOLERANCE_KB
    lines = (tmp_path / "log0.jsonl").read_text().splitlines()
    assert sum('"event": "add_producer"' in ln for ln in lines) == CYCLES + WARMUP
    COUNTERS["soak cycles"] += CYCLES
    COUNTERS["soak interrupts fired"] += fired
    with capsys.disabled():
        print(
            f"soak: {CYCLES} cycles, {fired} interrupts; traced memory +{grown} B, "
            f"RSS {rss} -> {rss_kb()} kB, fds {fds}, threads {threads}"
        )
