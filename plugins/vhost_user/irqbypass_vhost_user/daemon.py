"""A private ``qemu-storage-daemon``: the reference vhost-user-blk back-end.

It serves a scratch image over a vhost-user socket in a temporary directory
that this object owns. The producer's ``spawn`` option, the tests and the
benchmark use it; :meth:`kill` simulates a crash (SIGKILL), :meth:`start`
brings it back on the same socket path, :meth:`close` stops it and removes the
directory, on every path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import irqbypass
import irqbypass.plugin

__all__ = ["BINARY", "INSTALL_HOWTO", "StorageDaemon", "unavailable_reason"]

BINARY = "qemu-storage-daemon"
INSTALL_HOWTO = "apt-get install qemu-system-common (Debian; it ships qemu-storage-daemon)"


def unavailable_reason() -> str | None:
    """Why no qemu-storage-daemon can be started here, or None."""
    if shutil.which(BINARY) is None:
        return f"{BINARY} (the reference vhost-user back-end) is not installed: {INSTALL_HOWTO}"
    return None


class StorageDaemon(irqbypass.plugin.Service):
    """``qemu-storage-daemon`` exporting a ``image_size``-byte image as
    vhost-user-blk with ``queues`` virtqueues at :attr:`socket_path`."""

    def __init__(
        self, *, image_size: int = 1 << 20, queues: int = 1, start_timeout: float = 10.0
    ) -> None:
        self.image_size = image_size
        self.queues = queues
        self.start_timeout = start_timeout
        self.directory: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def socket_path(self) -> str:
        if self.directory is None:
            raise ValueError("the daemon has not been started")
        return os.path.join(self.directory, "vhost-user-blk.sock")

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory or "", "daemon.log")

    def start(self) -> None:
        """Start it (again, after :meth:`kill`) and wait until its socket exists."""
        if self.process is not None and self.process.poll() is None:
            return
        reason = unavailable_reason()
        if reason is not None:
            raise irqbypass.DeviceError(reason, errno=errno.ENOENT)
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="irqbypass-vhost-user-")
            with open(os.path.join(self.directory, "disk.img"), "wb") as image:
                image.truncate(self.image_size)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # a killed daemon leaves its socket file behind
        image_path = os.path.join(self.directory, "disk.img")
        argv = [
            BINARY,
            "--blockdev",
            f"driver=file,node-name=file0,filename={image_path}",
            "--export",
            "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,"
            f"addr.path={self.socket_path},writable=on,num-queues={self.queues}",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout
        while not os.path.exists(self.socket_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                problem = (
                    f"exited with status {self.process.returncode}"
                    if self.process.poll() is not None
                    else f"made no socket within {self.start_timeout:g} s"
                )
                self.stop()
                raise irqbypass.DeviceError(
                    f"{BINARY} {problem}: {self.log_tail() or 'no output'}", errno=errno.EIO
                )
            time.sleep(0.01)  # waiting for a file another process creates: poll it

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return " | ".join(log.read().strip().splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL it, as a crash would; its socket file stays behind."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM it (SIGKILL after 5 s) and reap it."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(sig)
                _await_exit(process, 5.0)  # Ctrl-C ends it (and the kill below makes sure)
        except BaseException:  # no answer to SIGTERM in 5 s, or interrupted: make sure
            process.kill()
            process.wait()
            if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                raise

    def close(self) -> None:
        """Stop it and remove its directory (image, socket, log)."""
        try:
            self.stop()
        finally:
            directory, self.directory = self.directory, None
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


@irqbypass.plugin.waits_on_peer
def _await_exit(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for the daemon to exit: a wait on another process, maybe in a
    teardown's uninterrupted section, that a Ctrl-C ends at once."""
    process.wait(timeout)
