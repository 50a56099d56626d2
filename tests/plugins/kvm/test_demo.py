"""The demo's kvm pairs, as a user runs them: ``irqbypass demo --json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


# a new Python process (imports: most of its time under TCG): one guest kernel is enough
@pytest.mark.guest("kvm", kernels=("6.12",))
def test_the_demo_delivers_its_msi_pair_into_the_x2apic_guest(kvm_usable: None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")}
    result = subprocess.run(
        [sys.executable, "-m", "irqbypass.cli", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {row["token"]: row for row in json.loads(result.stdout)["pairs"]}
    msi = rows["vector-msi"]
    assert msi["paired"] is True and msi["fired"] == 400
    stats = msi["consumer_stats"]
    assert stats["assigned"] == 1 and stats["masked"] == 0
    assert stats["gsi"] == 24  # left out in the file: the VM's first free GSI
    # the guest counted them on its local APIC; an MSI written while the
    # previous one is still pending in the APIC's IRR coalesces with it (as on
    # hardware), and how often depends on the host's load (345 of 400 were seen
    # on a loaded 2-core host at 200/s), so this checks that they arrive and
    # are never more than fired; test_apic.py counts exactly, paced
    assert 0 < msi["delivered"] <= msi["fired"]
    # the summary tells the merged ones apart: none is lost
    assert msi["lost"] == 0 and msi["delivered"] + msi["coalesced"] == msi["fired"]
