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
stays), and the tests raise one vector again only after its last message
arrived and :data:`PACE_S` passed (far beyond the 128 us timer), so no cause is
ever postponed and the flag never sticks. A flag stuck by an earlier run stays
stuck until the device is reset (``E1000e.reset``: CTRL.RST).
"""

from __future__ import annotations

import os
import time

from edu import CONFIG_REGION, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, region_offset

CTRL, CTRL_EXT, ICR, ITR, ICS, IMS, IMC, EIAC, IVAR = (
    0x00, 0x18, 0xC0, 0xC4, 0xC8, 0xD0, 0xD8, 0xDC, 0xE4,
)  # fmt: skip
EITR0 = 0xE8
CTRL_RST = 1 << 26
CTRL_EXT_IAME = 1 << 27
#: the five MSI-X causes (ICR bits) in IVAR's order, one per vector here
CAUSES = (1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24)  # RxQ0, RxQ1, TxQ0, TxQ1, Other
NAMES = ("RxQ0", "RxQ1", "TxQ0", "TxQ1", "Other")
VECTORS = 5
#: how long after a vector's message before it is raised again: QEMU throttles each
#: vector for at least 500 x 256 ns = 128 us after a message, see the module doc
PACE_S = 0.005


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
        self.write(CTRL_EXT, self.read(CTRL_EXT) | CTRL_EXT_IAME)
        self.write(IMS, sum(CAUSES))

    def reset(self) -> None:
        """CTRL.RST: the core reset, which clears the throttling state."""
        self.write(CTRL, self.read(CTRL) | CTRL_RST)

    def raise_vector(self, v: int) -> None:
        """Raise vector v's cause, no sooner than PACE_S after its last message."""
        wait = self.last_sent[v] + PACE_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.write(ICS, CAUSES[v])

    def arrived(self, v: int) -> None:
        """Note that vector v's message arrived (the pacing starts from here)."""
        self.last_sent[v] = time.monotonic()

    def quiet(self) -> None:
        self.write(IMC, 0xFFFFFFFF)
