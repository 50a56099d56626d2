"""The guest's vCPU thread: KVM_RUN in a loop, its exits, and how it stops.

The thread is stopped the way QEMU stops its vCPUs: the stop signal is blocked
in the thread and unblocked only inside KVM_RUN (KVM_SET_SIGNAL_MASK), so
``pthread_kill`` makes KVM_RUN return EINTR wherever the thread is, and the
signal is never delivered to a handler (it cannot kill the process either: the
kernel spares signals the thread blocks outside KVM_RUN). ``immediate_exit`` is
set as well.
"""

from __future__ import annotations

import errno
import mmap
import os
import signal
import struct
import threading
import time
from collections.abc import Callable

import irqbypass
import irqbypass.plugin

from . import _abi
from ._apic import FAULT_PORT
from ._kvm import ioctl, raw_ioctl

__all__ = ["ACK_PORT", "READY_PORT", "VcpuThread"]

READY_PORT = 0xE0  # the guest writes it once, when set up and about to sti;hlt
ACK_PORT = 0xE1  # the guest writes it once per interrupt, before its EOI


class VcpuThread:
    """Runs a guest's vCPU (``_vcpu_fd``, its ``kvm_run`` mapped at ``_run``,
    both set by the guest before :meth:`_start_vcpu`) on a thread of its own,
    and counts the acknowledgements that exit to it (``ack="exit"``).

    ``error`` is what ended the loop (a KVM_RUN failure, an unexpected exit).
    ``ack_times``: set to [] to record the time of each acknowledgement;
    ``on_ack``: called with the count after each."""

    _vcpu_fd: int
    _run: mmap.mmap | None

    def __init__(self, ack: str, stop_signal: int | None) -> None:
        self.ack = ack
        self.stop_signal = stop_signal if stop_signal is not None else signal.SIGRTMIN + 3
        self._vcpu_fd = -1
        self._run = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ready = threading.Event()
        self._cond = threading.Condition()
        self._acks = 0
        self._gate = threading.Event()
        self._gate.set()
        self.error: irqbypass.IrqBypassError | None = None
        self.ack_times: list[float] | None = None  # set to [] to record ack times
        self.on_ack: Callable[[int], None] | None = None

    def _start_vcpu(self, name: str, timeout: float) -> None:
        """Start the thread; return once the guest reported ready (raise if it
        did not, or failed)."""
        self._thread = threading.Thread(target=self._vcpu_loop, name=name, daemon=True)
        # the new thread inherits this mask: the stop signal is blocked from its
        # first instruction, so a close() that races its start cannot kill us
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {self.stop_signal})
        try:
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if not _wait_ready(self._ready, timeout) or self.error is not None:
            raise self.error or irqbypass.DeviceError(
                f"the guest did not reach its ready port within {timeout}s; "
                "is KVM working (try a simple VMM on this host)?",
                errno=errno.ETIMEDOUT,
            )

    def _stop_vcpu(self) -> None:
        """Stop the thread (if it runs) and join it."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._gate.set()
        if self._run is not None:
            self._run[1] = 1  # kvm_run.immediate_exit
        while thread.is_alive():
            if thread.ident is not None:
                try:
                    signal.pthread_kill(thread.ident, self.stop_signal)
                except ProcessLookupError:
                    break
            thread.join(0.05)
        thread.join()

    def _set_run_sigmask(self) -> None:
        """Block the stop signal in this thread, unblock it inside KVM_RUN."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {self.stop_signal})
        bits = 0
        for sig in old - {self.stop_signal}:
            bits |= 1 << (int(sig) - 1)
        header = _abi.kvm_signal_mask(len=8)
        buf = bytearray(bytes(header) + struct.pack("<Q", bits))
        ioctl(self._vcpu_fd, _abi.KVM_SET_SIGNAL_MASK, buf, "KVM_SET_SIGNAL_MASK")

    def _vcpu_loop(self) -> None:
        run = self._run
        assert run is not None
        try:
            self._set_run_sigmask()
            while not self._stopping:
                ret = raw_ioctl(self._vcpu_fd, _abi.KVM_RUN)
                if ret == -errno.EINTR:
                    continue  # the stop signal (or a stray one): the loop condition decides
                if ret < 0:
                    raise irqbypass.DeviceError(f"KVM_RUN failed: {os.strerror(-ret)}", errno=-ret)
                reason = struct.unpack_from("<I", run, 8)[0]
                if reason == _abi.KVM_EXIT_IO:
                    self._port_written(run)
                elif reason not in (_abi.KVM_EXIT_HLT, _abi.KVM_EXIT_INTR):
                    raise irqbypass.DeviceError(
                        f"the guest stopped unexpectedly (KVM exit reason {reason}); "
                        "this is a bug in the guest program or an unsupported host",
                        errno=errno.EIO,
                    )
        except irqbypass.IrqBypassError as exc:
            self.error = exc
        finally:
            self._ready.set()
            with self._cond:
                self._cond.notify_all()

    def _port_written(self, run: mmap.mmap) -> None:
        """An I/O exit: the guest's ack, ready or fault port (any other port,
        and every read, is ignored: reads see whatever is in the buffer)."""
        io = _abi.KVM_RUN_IO_OFFSET
        direction, _size, port = struct.unpack_from("<BBH", run, io)
        if direction != _abi.KVM_EXIT_IO_OUT:
            return
        if port == ACK_PORT:
            self._acked()
        elif port == READY_PORT:
            self._ready.set()
        elif port == FAULT_PORT:
            vector = run[struct.unpack_from("<Q", run, io + 8)[0]]
            raise irqbypass.DeviceError(
                f"the guest took exception {vector} (#GP) while enabling its "
                "x2APIC: the vCPU's CPUID lacks the x2APIC bit (leaf 1 ECX bit "
                "21), so WRMSR to IA32_APIC_BASE is refused; this KVM cannot "
                "run the guest in x2APIC mode",
                errno=errno.ENOTSUP,
            )

    def _acked(self) -> None:
        now = time.perf_counter()
        with self._cond:
            self._acks += 1
            if self.ack_times is not None:
                self.ack_times.append(now)
            self._cond.notify_all()
        if self.on_ack is not None:
            self.on_ack(self._acks)
        while not self._gate.is_set() and not self._stopping:
            self._gate.wait(0.05)

    # -- observing ---------------------------------------------------------

    @property
    def vcpu_thread_id(self) -> int | None:
        """The vCPU thread's kernel thread id (for per-thread CPU accounting)."""
        return self._thread.native_id if self._thread is not None else None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def acks(self) -> int:
        """Acknowledgements that exited to this process (``ack="exit"`` only)."""
        return self._acks

    def hold_acks(self) -> None:
        """From now on the guest waits at its acknowledgement, before its EOI,
        until :meth:`release_acks` (``ack="exit"`` only): the window in which a
        level-triggered line stays asserted."""
        if self.ack != "exit":
            raise irqbypass.InvalidEndpointError('hold_acks needs a guest with ack="exit"')
        self._gate.clear()

    def release_acks(self) -> None:
        self._gate.set()


@irqbypass.plugin.waits_on_peer
def _wait_ready(ready: threading.Event, timeout: float) -> bool:
    """The guest's first run, up to ``timeout`` (KVM and the vCPU thread, which
    a nested or loaded host can make slow): a Ctrl-C ends the wait even inside
    an uninterrupted open."""
    return ready.wait(timeout)
