"""systemd's service notification (``Type=notify``), without libsystemd.

Under systemd, ``$NOTIFY_SOCKET`` names a datagram socket (a path, or ``@name``
for an abstract one) that takes newline-separated ``KEY=value`` lines:
``READY=1`` once applied, ``RELOADING=1`` with ``MONOTONIC_USEC`` while a
reload runs (then ``READY=1`` again), ``STOPPING=1`` at teardown, ``STATUS=``
for ``systemctl status``. Elsewhere (no variable) nothing is sent. A failed
send is never an error: the run does not depend on its supervisor.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable


def notify(*lines: str, describe: Callable[[], str] | None = None) -> bool:
    """Send ``lines`` to ``$NOTIFY_SOCKET``, and the ``STATUS=`` line of
    ``describe()`` (asked only when there is a socket to send it to: it may
    read every pair); whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if describe is not None:
        lines = (*lines, status(describe()))
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # a datagram send waits while the reader's queue is full (the kernel's
            # unix_dgram: net.unix.max_dgram_qlen); 1 s bounds that, and a Ctrl-C
            # ends it at once (no caller is a signal-safe section). A dropped
            # READY=1 would fail the service's start, so no MSG_DONTWAIT
            sock.settimeout(1.0)
            # a file name of another encoding (a lone surrogate from argv) goes escaped
            sock.sendto("\n".join(lines).encode(errors="backslashreplace"), target)
    except OSError:
        return False
    return True


#: the longest STATUS= text sent: ``systemctl status`` shows one line of it
STATUS_CHARS = 400


def status(text: str) -> str:
    """The ``STATUS=`` line for ``text``: on one line (a newline in it would
    start another ``KEY=value`` assignment, a file's several errors for one)
    and at most STATUS_CHARS characters."""
    line = " ".join(text.split())
    if len(line) > STATUS_CHARS:
        line = line[: STATUS_CHARS - 3] + "..."
    return f"STATUS={line}"


def reloading() -> bool:
    """``RELOADING=1`` with the monotonic time systemd needs to match it."""
    return notify(
        "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    )
