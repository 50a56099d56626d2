"""Where a device interrupt points, and what it caught meanwhile.

A :class:`~irqbypass.plugin.DeviceProducer` keeps one :class:`InterruptState` for its
:class:`~irqbypass.plugin.DeviceInterrupt`: the fd the interrupt signals (the token,
the holding eventfd, or nothing), whether it is masked or its work deferred,
the holding eventfd and its replay, and the counts. Every change to the device
goes through it, so "pointed at the holding eventfd" and "stopped" cannot
disagree. Its methods run inside the producer's signal-safe sections.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from ._eventfd import Eventfd, HoldingEventfd

if TYPE_CHECKING:
    from ._device import DeviceInterrupt

__all__ = ["InterruptState"]


class _Kicks:
    """The device's signal on every new fd (libvhost-user's kick), accounted:
    taken off the holding eventfd, and on the token it stands in for the first
    held interrupt or counts as ``phantom``."""

    def __init__(self, state: InterruptState) -> None:
        self.state = state
        self.kicks = self.phantom = self.absorbed = 0
        #: reported: the device may kick (or finds out), or an open found it does
        self.counted = state.interrupt.signals_on_new_fd is not False

    @property
    def expected(self) -> bool:
        return bool(self.state.interrupt.signals_on_new_fd)

    def pointed(self, on_token: bool, learn: bool) -> None:
        """The interrupt was pointed at the token, or at the holding eventfd
        (``learn``: find out from it whether the device kicks)."""
        if on_token:
            self.kicks += self.expected
        elif learn or self.expected:
            kicked = self.state.hold.absorb(1) > 0
            self.state.interrupt.signals_on_new_fd = kicked  # none left there: no kick
            self.counted = self.counted or kicked
            self.kicks += kicked

    def back_on_token(self) -> None:
        """At start: the kick on the token stands in for the first held one."""
        if self.state.hold.absorb(1):
            self.absorbed += 1
        else:
            self.phantom += 1


class InterruptState:
    """The state of the :class:`~irqbypass.plugin.DeviceInterrupt` that ``interrupt()``
    returns (asked each time: a producer's subclass sets its own after the
    producer made this), whose token is ``token``."""

    def __init__(self, interrupt: Callable[[], DeviceInterrupt], token: Hashable) -> None:
        self._interrupt = interrupt
        self.token = token
        self.hold = HoldingEventfd()
        self.pointed_at: int | None = None
        self.masked = False
        self.deferring = False  # stopped by the device's defer: nothing moved
        self.quiesces = self.swaps = 0
        #: the kick counts, made at the first open (the producer's subclass sets
        #: its interrupt after making this) and kept across re-opens
        self.kicks: _Kicks | None = None

    @property
    def interrupt(self) -> DeviceInterrupt:
        return self._interrupt()

    def _counts(self) -> _Kicks:
        if self.kicks is None:
            self.kicks = _Kicks(self)
        return self.kicks

    def token_fd(self) -> int:
        assert isinstance(self.token, Eventfd)
        return self.token.fileno()

    def opening(self) -> None:
        """An open begins: a device that may kick is counted from now on."""
        kicks = self._counts()
        kicks.counted = kicks.counted or self.interrupt.signals_on_new_fd is not False

    def point(self, fd: int, *, learn: bool = False) -> None:
        """Point the interrupt at ``fd`` and account for the device's own signal on a new fd."""
        self.interrupt.point(fd)
        self.pointed(fd, learn=learn)

    def pointed(self, fd: int, *, learn: bool = False) -> None:
        """The interrupt now signals ``fd``."""
        self.pointed_at = fd
        self._counts().pointed(fd == self.token_fd(), learn)

    def pointed_first(self) -> None:
        """Pointed at the token by an open: nothing is behind a kick there."""
        kicks = self._counts()
        kicks.phantom += kicks.expected

    def quiesce(self, mode: str, *, opening: bool = False) -> None:
        """Quiesce by the device's defer, else by ``mode``; ``opening``: the
        interrupt points nowhere yet (no defer: the device is not ready)."""
        self.quiesces += 1
        if not opening and self.interrupt.defer():
            self.deferring = True
            return
        if mode == "swap":
            self.point(self.hold.fileno())
            self.swaps += 1  # moved (a refused swap left it on the token)
            return
        if opening:
            self.point(self.token_fd())
        if mode == "mask":
            self.interrupt.mask()
            self.masked = True

    def resume_deferred(self) -> bool:
        """Give the device the work held back by its defer; False: it was not deferring."""
        if not self.deferring:
            return False
        self.deferring = False
        self.interrupt.resume()
        return True

    def unquiesce(self, lost: bool) -> None:
        """Unmask, or point the interrupt back at the token (a lost device:
        nothing to move back); then replay what the holding eventfd caught
        (even if that failed)."""
        kicked = False
        try:
            if lost:
                pass
            elif self.masked:
                self.interrupt.unmask()
                self.masked = False
            elif self.pointed_at is not None and self.pointed_at != self.token_fd():
                self.point(self.token_fd())
                kicked = bool(self.interrupt.signals_on_new_fd)
        finally:
            if kicked:
                self._counts().back_on_token()
            self.hold.replay(self.token)

    def release(
        self, attempt: Callable[[Callable[[], object]], None], lost: Callable[[], bool]
    ) -> None:
        """Detach and unmask (each through ``attempt``; not a device ``lost``),
        then replay what was held and close the holding eventfd."""
        if self.pointed_at is not None:
            if not lost():
                attempt(self.interrupt.detach)
            self.pointed_at = None
        if self.masked:
            if not lost():
                attempt(self.interrupt.unmask)
            self.masked = False
        self.deferring = False
        self.hold.replay(self.token)
        self.hold.close()

    def stats(self, pointed_stat: str) -> dict[str, int]:
        kicks = self._counts()
        stats = {
            "held": self.hold.held + kicks.absorbed,
            "replayed": self.hold.replayed + kicks.absorbed,
            "quiesces": self.quiesces,
            pointed_stat: int(self.pointed_at is not None),
        }
        if kicks.counted:
            stats.update(kicks=kicks.kicks, phantom=kicks.phantom, absorbed=kicks.absorbed)
        return stats
