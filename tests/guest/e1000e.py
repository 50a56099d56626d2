"""QEMU's e1000e (Intel 82574L, 8086:10d3) through a VFIO device fd, for the vfio
real-device tests: 5 MSI-X vectors that software raises by writing a cause to
ICS (BAR0 0xC8), with IVAR (0xE4) mapping each cause to a vector.

Counting them exactly needs QEMU 7.2's e1000e_core.c read closely:

- ``e1000e_set_eitr`` stores ``MAX(value, E1000E_MIN_XITR)`` (500, in 256 ns
  units): writing 0 to an EITR does *not* turn throttling off. Every MSI-X
  message re-arms its vector's 128 us throttling timer
  (``e1000e_eitr_should_postpone``), and a cause raised while the timer runs is
  postponed with ``eitr_intr_pending[vec] = true``;
- ``e1000e_intrmgr_on_msix_throttling_timer`` sends the postponed message but
  never clears ``eitr_intr_pending[vec]``, so from then on every expiry of that
  vector's timer (after each later message) sends one more message with no
  cause behind it. A vector raised back to back once keeps getting extras:
  that is the "about 40% more" seen on the vectors that happened to be raised
  within 128 us of their previous message (RxQ1 and TxQ1 happened not to be);
- ``e1000e_msix_notify_one`` clears a cause from ICR only if EIAC has it, and
  clears its IMS bit too unless CTRL_EXT.IAME is set; a cause left in ICR & IMS
  is sent again by every later ``e1000e_send_msi`` (any ICS or IMS write).

So :meth:`E1000e.setup` auto-clears every cause (EIAC) and sets IAME (IMS
stays), and no cause is raised while its vector's timer runs, so none is
ever postponed and no flag sticks. A wait cannot promise that: a timer's
``running`` stays true until QEMU's main loop runs its callback, which on a
loaded host comes late (with a 5 ms pause, two TCG guests and the host's
suite on 2 cores, vector 0's flag stuck once; with 50 ms and a third TCG
guest, vector 2's: every later raise of it arrived twice, nine tests
failed). So before each raise while MSI-X is on, :meth:`E1000e.raise_vector`
ends every running timer itself: ``e1000e_set_ims`` runs all their callbacks
at once, in the write, when every valid IMS bit is written with
CTRL_EXT.INT_TIMERS_CLEAR_ENA set (``e1000e_intrmgr_fire_all_timers``); the
IMS bits beyond the five causes are cleared again at once (IMC). The
raises still wait :data:`PACE_S` after the vector's last message, as before.
A flag stuck by an earlier run stays stuck until the device is reset.

The same timers abort QEMU 7.2 (``assert(msix_enabled)`` and its opposite in
their callbacks) when MSI-X is disabled or enabled while one runs: a test that
disables the index waits :data:`PACE_S` after the last message first, and one
that raises while it is disabled clears what ICR latched before enabling it
again (:meth:`E1000e.take_latched`; otherwise the INTx path's timer re-arms
itself for ever and the enable aborts QEMU: seen here on both guest kernels).

A vector raised while nothing is attached to it is not lost: vfio-pci masks a
vector it has no trigger for, and a masked MSI-X vector holds its message (its
bit in the PBA) until it is unmasked, as PCI says. The bit outlives the device
fd (read here: the PBA still 0x1f after a close and a reopen), so a test that
raises detached vectors must take what they hold (:func:`take_pending`) before
the next test attaches them: left behind, one such message reached the next
test's vector 4 ("Other") as an eleventh for ten raises.
"""

from __future__ import annotations

import fcntl
import os
import time

from edu import CONFIG_REGION, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, region_offset
from irqbypass import Eventfd
from irqbypass_vfio import _abi as abi

CTRL, CTRL_EXT, ICR, ITR, ICS, IMS, IMC, EIAC, IVAR = (
    0x00, 0x18, 0xC0, 0xC4, 0xC8, 0xD0, 0xD8, 0xDC, 0xE4,
)  # fmt: skip
EITR0 = 0xE8
CTRL_EXT_IAME = 1 << 27
#: with it, writing every valid IMS bit ends the running interrupt timers at once
CTRL_EXT_INT_TIMERS_CLEAR_ENA = 1 << 29
#: the five MSI-X causes (ICR bits) in IVAR's order, one per vector here
CAUSES = (1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24)  # RxQ0, RxQ1, TxQ0, TxQ1, Other
NAMES = ("RxQ0", "RxQ1", "TxQ0", "TxQ1", "Other")
VECTORS = 5
#: how long after a vector's message before it is raised again: QEMU throttles each
#: vector for at least 500 x 256 ns = 128 us after a message, and runs the timer's
#: end late on a loaded host (see the module doc)
PACE_S = 0.05


class E1000e:
    """The e1000e's BAR0 through a VFIO device fd (MMIO region 0)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.bar0 = region_offset(fd, 0)
        config = region_offset(fd, CONFIG_REGION)
        command = int.from_bytes(os.pread(fd, 2, config + PCI_COMMAND), "little")
        command |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER  # an MSI-X message is a DMA write
        os.pwrite(fd, command.to_bytes(2, "little"), config + PCI_COMMAND)
        self.last_sent = [0.0] * VECTORS

    def read(self, reg: int) -> int:
        return int.from_bytes(os.pread(self.fd, 4, self.bar0 + reg), "little")

    def write(self, reg: int, value: int) -> None:
        os.pwrite(self.fd, value.to_bytes(4, "little"), self.bar0 + reg)

    def setup(self) -> None:
        """Cause v -> vector v, every cause auto-cleared as its message is sent,
        IMS kept (IAME), all five enabled, ICR clear."""
        self.write(IMC, 0xFFFFFFFF)
        self.read(ICR)  # with IMS 0, reading ICR clears it (e1000e_mac_icr_read)
        self.write(ITR, 0)
        for v in range(VECTORS):
            self.write(EITR0 + 4 * v, 0)  # stored as 500: the minimum, see the module doc
        ivar = 1 << 31
        for v in range(VECTORS):
            ivar |= (0x8 | v) << (4 * v)  # 3 bits of vector and the valid bit per cause
        self.write(IVAR, ivar)
        self.write(EIAC, sum(CAUSES))
        ctrl_ext = self.read(CTRL_EXT) | CTRL_EXT_IAME | CTRL_EXT_INT_TIMERS_CLEAR_ENA
        self.write(CTRL_EXT, ctrl_ext)
        self.write(IMS, sum(CAUSES))

    def raise_vector(self, v: int, *, msix: bool = True) -> None:
        """Raise vector v's cause, no sooner than PACE_S after its last message;
        with ``msix`` (the index is enabled), after ending every running
        throttling timer (:meth:`end_throttling`). Not ``msix``: MSI-X is
        disabled (the cause is latched for INTx), where those timers' callbacks
        must not run (QEMU asserts MSI-X is on)."""
        wait = self.last_sent[v] + PACE_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if msix:
            self.end_throttling()
        self.write(ICS, CAUSES[v])

    def end_throttling(self) -> None:
        """Run the callback of every throttling timer still running, now (see
        the module doc): a cause raised next is sent, never postponed."""
        self.write(IMS, 0xFFFFFFFF)  # every valid bit: e1000e_intrmgr_fire_all_timers
        self.write(IMC, 0xFFFFFFFF & ~sum(CAUSES))  # only the five causes stay enabled

    def arrived(self, v: int) -> None:
        """Note that vector v's message arrived (the pacing starts from here)."""
        self.last_sent[v] = time.monotonic()

    def take_latched(self, vectors: tuple[int, ...]) -> list[int]:
        """The vectors whose cause is latched in ICR (raised while MSI-X was
        disabled: e1000e falls back to INTx and keeps the cause), cleared
        (ICR is write-1-to-clear). Cleared, ICR & IMS is 0 again, so the ITR
        timer the INTx path armed stops re-arming itself (QEMU 7.2 never
        clears its pending flag) before MSI-X is enabled again, which its
        callback's ``assert(!msix_enabled)`` would abort on."""
        icr = self.read(ICR)
        latched = [v for v in vectors if icr & CAUSES[v]]
        self.write(ICR, sum(CAUSES[v] for v in vectors))
        return latched

    def quiet(self) -> None:
        self.write(IMC, 0xFFFFFFFF)


#: attach (an eventfd each) or detach (-1s) MSI-X vectors: :func:`set_irqs`
EVENTFD_TRIGGER = abi.VFIO_IRQ_SET_DATA_EVENTFD | abi.VFIO_IRQ_SET_ACTION_TRIGGER


def set_irqs(fd: int, flags: int, start: int, count: int, fds: tuple[int, ...] = ()) -> None:
    """VFIO_DEVICE_SET_IRQS on ``fd``'s MSI-X index for vectors ``start`` ..
    ``start + count - 1``: with ``fds`` (one eventfd or -1 each) as its data
    where given (DATA_EVENTFD), none otherwise (DATA_NONE)."""
    buf = abi.irq_set(flags, abi.VFIO_PCI_MSIX_IRQ_INDEX, start, count, abi.eventfd_data(*fds))
    fcntl.ioctl(fd, abi.VFIO_DEVICE_SET_IRQS, buf)


def take_pending(fd: int, wait: float) -> list[int]:
    """What each vector of ``fd``'s enabled MSI-X index held (see the module
    doc): fresh eventfds attached to all of them (which unmasks them, and a
    held message is sent at once), read within ``wait``, detached again."""
    tokens = [Eventfd() for _ in range(VECTORS)]
    try:
        set_irqs(fd, EVENTFD_TRIGGER, 0, VECTORS, tuple(t.fileno() for t in tokens))
        try:
            return [t.read(timeout=wait) for t in tokens]
        finally:
            set_irqs(fd, EVENTFD_TRIGGER, 0, VECTORS, (-1,) * VECTORS)
    finally:
        for t in tokens:
            t.close()
