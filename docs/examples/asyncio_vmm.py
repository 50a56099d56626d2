"""A VMM written on asyncio: irqbypass's event loop runs inside asyncio's.

Attached before anything is opened, the process's irqbypass loop becomes one
reader (its epoll fd) and one timer on the VMM's asyncio loop: every logging
consumer's reader and every mock's timer then runs on the VMM's own thread,
and irqbypass starts no thread at all.
"""

from __future__ import annotations

import asyncio
import threading

import irqbypass

TOPOLOGY = """
[[producers]]
name = "dev0"
kind = "mock"
token = "vector0"
options = { rate = 2000, count = 50 }

[[consumers]]
name = "sink0"
kind = "logging"
token = "vector0"
"""


async def main() -> dict[str, int]:
    loop = irqbypass.event_loop()
    loop.attach(asyncio.get_running_loop())  # before any endpoint opens
    try:
        config = irqbypass.parse_config(TOPOLOGY, file="asyncio-vmm.toml")
        topology = irqbypass.Topology(config, irqbypass.load_plugins())
        topology.apply()
        try:
            while not topology.finished:  # the VMM's other work runs meanwhile
                await asyncio.sleep(0.01)
            (row,) = topology.status()
            while row.delivered != row.fired:  # the last read may be a turn behind
                await asyncio.sleep(0.01)
            figures = {
                "fired": row.fired or 0,
                "delivered": row.delivered or 0,
                "threads": threading.active_count(),
            }
        finally:
            topology.teardown()
    finally:
        loop.detach()
    return figures


if __name__ == "__main__":
    print(asyncio.run(main()))
