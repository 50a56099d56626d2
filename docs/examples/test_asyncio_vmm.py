"""The asyncio embedding example (docs/embedding.md) runs, delivers every
interrupt, and irqbypass starts no thread for it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_the_asyncio_example_delivers_everything_on_one_thread() -> None:
    # a fresh process: this one's irqbypass loop may already run its own thread
    code = (
        "import asyncio, threading, asyncio_vmm\n"
        "figures = asyncio.run(asyncio_vmm.main())\n"
        "print(figures['fired'], figures['delivered'], figures['threads'],"
        " threading.active_count())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fired, delivered, threads_during, threads_after = map(int, result.stdout.split())
    assert fired == delivered == 50
    assert threads_during == 1 and threads_after == 1, "no thread but the VMM's own"


def test_the_example_runs_in_this_process_too() -> None:
    """In a process whose loop already runs its own thread, attach refuses
    (the loop cannot move): the example says so with a LoopClosedError."""
    import irqbypass
    import pytest

    sys.path.insert(0, str(HERE))
    try:
        import asyncio_vmm
    finally:
        sys.path.remove(str(HERE))
    irqbypass.event_loop().start()
    with pytest.raises(irqbypass.LoopClosedError, match="attach it to asyncio before"):
        asyncio.run(asyncio_vmm.main())
