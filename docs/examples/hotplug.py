"""Hot-plug and reload a running topology, as a VMM does (docs/embedding.md).

The VMM runs its boot topology, plugs a device described by a TOML fragment
on an eventfd it owns, unplugs it, then reconciles with an edited file. The
pair that no step names keeps running untouched throughout.
"""

from __future__ import annotations

import os
import time

import irqbypass

BOOT = """
[[producers]]
name = "disk-vec0"
kind = "mock"
token = "disk0"
options = { rate = 0.0, count = 100 }
[[consumers]]
name = "disk-irqfd0"
kind = "logging"
token = "disk0"
"""

# a hot-plugged NIC: its interrupt is on an eventfd the VMM created (token "nic0")
NIC = """
[[producers]]
name = "nic-vec0"
kind = "mock"
token = "nic0"
options = { rate = 0.0, count = 7 }
[[consumers]]
name = "nic-irqfd0"
kind = "logging"
token = "nic0"
"""

# the edited file: the disk's vector fires 5 more, a console appears
EDITED = BOOT.replace("count = 100", "count = 5") + NIC.replace("nic", "console")


def wait_delivered(topology: irqbypass.Topology, token: str, count: int) -> None:
    deadline = time.monotonic() + 60  # a hang guard
    while time.monotonic() < deadline:
        row = next(r for r in topology.status() if r.token == token)
        if row.delivered == count:
            return
        time.sleep(0.01)
    raise SystemExit(f"{token}: {count} interrupts never arrived")


def main() -> None:
    host = irqbypass.load_plugins(allow=["irqbypass-mock", "irqbypass-logging"])
    nic_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)  # the VMM's own eventfd
    tokens = irqbypass.TokenTable({"nic0": nic_fd})
    with irqbypass.Topology(
        irqbypass.parse_config(BOOT, file="vm.toml"), host, tokens=tokens
    ) as vm:
        wait_delivered(vm, "disk0", 100)
        vm.attach(irqbypass.parse_config(NIC, file="nic.toml"))  # all or nothing
        wait_delivered(vm, "nic0", 7)
        print(
            "plugged:",
            ", ".join(f"{r.token} {'paired' if r.paired else 'unpaired'}" for r in vm.status()),
        )
        vm.detach(["nic-vec0", "nic-irqfd0"])
        print("unplugged: nic0 in use:", tokens.users("nic0"), "endpoints")
        changes = vm.reconcile(irqbypass.parse_config(EDITED, file="vm.toml"))
        print("reloaded:", changes.describe())
        wait_delivered(vm, "disk0", 105)  # counted over both opens of disk-vec0
        disk = vm.entry("disk-vec0")
        assert disk is not None
        total, this_open = disk.stats()["fired"], disk.endpoint.stats()["fired"]
        print(f"disk0: fired {total} over {disk.opens} opens, this open {this_open}")
        try:
            vm.reconcile(
                irqbypass.parse_config(EDITED.replace('"logging"', '"loging"'), file="vm.toml")
            )
        except irqbypass.IrqBypassError as exc:
            print("refused, nothing changed:", str(exc).split("; not loaded")[0])
    os.close(nic_fd)  # the VMM's: the topology never closed it


if __name__ == "__main__":
    main()
