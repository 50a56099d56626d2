"""A device interrupt that signals an eventfd we choose: the plugin's part and the core's.

vfio's vector trigger (``VFIO_DEVICE_SET_IRQS``), a vhost or vhost-vdpa
virtqueue's call (``VHOST_SET_VRING_CALL``), a vhost-user back-end's call
(``VHOST_USER_SET_VRING_CALL``): each is a device interrupt that the producer
points at an eventfd of its choosing. The plugin implements
:class:`DeviceInterrupt` on its own state (open, close, point, detach, mask,
unmask, and what its device can promise); :class:`DeviceProducer` composes it,
once for every plugin, with:

- ``open()`` all or nothing (a refusal releases what was obtained), the
  token-closed check; ``close()`` from any state, every step attempted;
- ``stop()``/``start()`` by one of :data:`QUIESCE_MODES`: keep the interrupt
  on the token (its counter holds what arrives), swap it to a holding eventfd
  and replay what that caught at start, or mask it at the device; a device that
  is idle and whose work the producer feeds itself may defer instead;
- the ``held``/``replayed``/``quiesces`` counts (and, for a device that signals
  every new fd once, ``kicks``/``phantom``/``absorbed``);
- a device that goes away while open (:attr:`DeviceInterrupt.gone_errors`,
  :meth:`DeviceProducer.lose`): stop/start record state only, and ``close()``
  releases everything and then raises what was lost;
- the lock, and the signal-safe sections: a Ctrl-C never leaves the interrupt
  pointing somewhere the producer does not know, nor a teardown half done.

What the interrupts of one device fd share (the fd, the batch call, the lock
order) is a :class:`~irqbypass.plugin.DeviceGroup`'s. docs/plugin-guide.md, "Writing a
device producer", walks through one.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from types import FrameType
from typing import ClassVar, TypeVar

from ._devicegroup import DeviceCalls, DeviceGroup, HeldLocks, detach_each, lock_order, point_each
from ._deviceoptions import DeviceOptions, DeviceWording
from ._devicestate import InterruptState
from ._endpoints import Producer
from ._errors import InvalidEndpointError, IrqBypassError
from ._eventfd import Eventfd
from ._seam import RealSeam, Seam
from ._signals import (
    _DEFERRED,  # read as each section ends: a dict's truth costs nothing
    callout,
    deliver_deferred_signals,
    in_safe_section,
    signal_safe,
)

_G = TypeVar("_G", bound=DeviceGroup)

__all__ = ["QUIESCE_MODES", "DeviceInterrupt", "DeviceProducer"]

#: How stop() quiesces: "keep" leaves the interrupt on the token (nothing moves,
#: the token's counter keeps what arrives: for a device whose swap can drop a
#: signal); "swap" points it at a holding eventfd and replays at start; "mask"
#: masks it at the device (which keeps a level asserted meanwhile).
QUIESCE_MODES = ("keep", "swap", "mask")


class DeviceInterrupt:
    """One interrupt of a device, as its plugin drives it: six operations
    (``detach``, ``mask`` and ``unmask`` defaulted), the device's facts, and
    three optional hooks for a device whose work the producer feeds itself.

    Each operation is one device call with no state of the producer's in it;
    the :class:`DeviceProducer` composing it decides when each runs and records
    where the interrupt points. An operation that raises has changed nothing
    the producer records; one that waits on another process does so through
    :func:`irqbypass.signalsafe.interruptible`.
    """

    #: the device can mask this interrupt (and keeps it pending meanwhile)
    can_mask: bool = False
    #: pointing the interrupt at another eventfd can drop a signal landing meanwhile
    swap_may_drop: bool = False
    #: the device signals every new fd once, with no interrupt behind it
    #: (libvhost-user's reconnect kick); None: not known yet (the producer's
    #: ``learn_signals_on_new_fd`` finds out, and records what it learnt here)
    signals_on_new_fd: bool | None = False
    #: the exceptions of an operation that mean the device went away (its process
    #: exited): in stop, start and close they are recorded by the producer's ``lose``
    gone_errors: tuple[type[IrqBypassError], ...] = ()
    #: the group of the device fd while open (a batch points its interrupts with
    #: one :meth:`~irqbypass.plugin.DeviceGroup.point_batch`), or None
    group: DeviceGroup | None = None
    #: this interrupt is recorded as held in its group (:meth:`claim`)
    claimed: bool = False

    @property
    def fd(self) -> int | None:
        """The device fd while open."""
        return None if self.group is None else self.group.fd

    def open(self) -> None:
        """Obtain and check the device; whatever it obtained before failing,
        :meth:`close` releases."""

    def close(self) -> None:
        """Release what :meth:`open` obtained, from wherever it stopped; every
        step attempted, then the first failure raised (default: close the
        group's fds, such as the node :meth:`DeviceGroup.take` opened)."""
        group, self.group = self.group, None
        if group is not None:
            group.close()

    @signal_safe  # the share and its record in one step, whatever lands
    def join(self, kind: type[_G], seam: Seam, key: Hashable, open_group: Callable[[], _G]) -> _G:
        """Share the group of the device ``key`` names with this process's other
        interrupts of it, or open it (``open_group``), and record it as
        :attr:`group` (whose :meth:`close` gives the share back)."""
        group = kind.share(seam, key, open_group)
        self.group = group
        return group

    @signal_safe  # the claim and its record in one step, whatever lands
    def claim(self, what: Hashable, name: str) -> str | None:
        """Record producer ``name`` as the holder of interrupt ``what`` of the
        group, and :attr:`claimed`; the name of the one already holding it
        instead, if any."""
        assert self.group is not None, "claim after join"
        holder = self.group.claim(what, name)
        if holder is None:
            self.claimed = True
        return holder

    def point(self, fd: int) -> None:
        """Point the interrupt at eventfd ``fd`` (it signals only that fd after)."""
        raise NotImplementedError(f"{type(self).__name__} must define point")

    def detach(self) -> None:
        """Point the interrupt at nothing (default: ``point(-1)``)."""
        self.point(-1)

    def mask(self) -> None:
        """Mask the interrupt at the device (only with :attr:`can_mask`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot mask")

    def unmask(self) -> None:
        """Unmask the interrupt at the device (only with :attr:`can_mask`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot mask")

    def ready(self) -> None:
        """The interrupt is pointed and the open is complete: start what the
        producer itself does with the device (a failure rolls the open back)."""

    def defer(self) -> bool:
        """At a stop of an open producer, under its lock: True to quiesce
        without moving the interrupt, when nothing is in flight that could
        signal and the producer holds back the device's new work until
        :meth:`resume` (default: False, never)."""
        return False

    def resume(self) -> None:
        """Give the device the work held back since :meth:`defer`."""


class DeviceProducer(DeviceWording, DeviceOptions, Producer):
    """A producer whose device interrupt signals the token eventfd while open.

    A subclass sets :attr:`kind` and :meth:`where`, and in its constructor its
    :attr:`interrupt` (a :class:`DeviceInterrupt` of its own, whose errors
    :attr:`calls` words); it calls ``super().__init__`` with ``seam`` (the OS
    calls; tests hand in a model). Constructing never touches the device.
    """

    #: the producer kind, as in messages ("vdpa producer 'net' (...)")
    kind: ClassVar[str] = "device"
    #: the name under which stats() reports whether the interrupt is pointed
    POINTED_STAT: ClassVar[str] = "bound"
    #: what the interrupt's number is called ("vector", "queue"): the constructor's
    #: ``number`` is then checked, 0..2**32-1, under that name (and ``number_option``
    #: reads the spec's option of that name); None: not checked
    NUMBER_LABEL: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        token: Hashable,
        irq: int | None = None,
        number: int | None = None,
        name: str | None = None,
        seam: Seam | None = None,
        device: str | None = None,
        device_fd: int | None = None,
        device_help: str | None = None,
    ) -> None:
        """``number`` is the interrupt's number (vfio's vector, a virtqueue), kept
        as :attr:`interrupt_number`: given, else ``irq``, else 0; ``irq`` is, else
        that number. ``device_help`` (what ``device`` names, for messages) says
        the device is one node: exactly one of ``device`` (a path) and
        ``device_fd`` (the VMM's fd) is given."""
        own = self.number(number, irq)
        super().__init__(token=token, irq=self.number(irq, own), name=name)
        if not isinstance(token, Eventfd):
            raise InvalidEndpointError(
                f"{self.kind} producer {self.name!r}: token {token!r} is not an "
                "irqbypass.Eventfd; the device signals an eventfd, so pass the one the "
                "consumer listens to"
            )
        if device_help is not None:
            self.check_device_or_fd(device, device_fd, device_help)
        if self.NUMBER_LABEL is not None:
            self.check_number(self.NUMBER_LABEL, own)
        #: the interrupt's number (see ``number``)
        self.interrupt_number = own
        self.seam: Seam = seam if seam is not None else RealSeam()
        self.device = device
        self.device_fd = device_fd
        #: the producer's system calls on its device, worded with :meth:`describe`
        self.calls = DeviceCalls(self.seam, self.describe, self.hint)
        #: the device's operations: the subclass's own, set by its constructor
        self.interrupt = DeviceInterrupt()
        #: the producer's lock (reentrant): a subclass's own methods that touch
        #: the device or its state take it too
        self.lock = self._lock = threading.RLock()
        self._lock_order = lock_order()
        self._opened = False  # the device's open began: close() has something to release
        self._stopped = False
        self._losses = 0
        #: where the interrupt points, what it caught meanwhile, the counts
        self._state = InterruptState(lambda: self.interrupt, token)
        #: what made the device unusable while open (see :meth:`lose`), or None
        self.problem_error: IrqBypassError | None = None

    # -- the subclass's own counters ----------------------------------------------

    def device_stats(self) -> Mapping[str, int]:
        """The producer's own counters, added to :meth:`stats`."""
        return {}

    # -- what the producer offers its subclass -----------------------------------

    def lose(self, error: IrqBypassError) -> None:
        """The device went away or became unusable while open (its process
        exited, a reply was cut): stop and start only record state from now on,
        close releases what is left without asking the device and then raises
        ``error``. The first loss of an open is kept (:attr:`problem`)."""
        if self.problem_error is None:
            self.problem_error = error
            self._losses += 1

    @property
    def problem(self) -> str | None:
        """What made the device unusable while open, saying what to do, or None."""
        return None if self.problem_error is None else self.problem_error.message

    @property
    def losses(self) -> int:
        """How many opens lost their device (:meth:`lose`)."""
        return self._losses

    @property
    def swaps(self) -> int:
        """Stops that moved the interrupt to the holding eventfd."""
        return self._state.swaps

    @property
    def deferring(self) -> bool:
        """Stopped by the device's defer: the producer holds the device's work back."""
        return self._state.deferring

    @signal_safe
    def learn_signals_on_new_fd(self) -> None:
        """Point the interrupt at the holding eventfd while the device is idle
        (from the device's open, before it can signal for work) and learn
        ``signals_on_new_fd`` from whether it signalled there."""
        self._state.point(self._state.hold.fileno(), learn=True)

    @signal_safe
    def point_at_holding(self) -> None:
        """Point the interrupt at the holding eventfd, the device's signal on
        the new fd accounted: a detach for a device that cannot point at
        nothing (libvhost-user panics on the no-fd flag at its next signal);
        close replays what it then catches."""
        self._state.point(self._state.hold.fileno())

    # -- state -----------------------------------------------------------------

    @property
    def fd(self) -> int | None:
        """The device fd while open."""
        return self.interrupt.fd

    @property
    def pointed_at(self) -> int | None:
        """The eventfd the interrupt signals: the token, or the holding
        eventfd while stopped by a swap; None while detached."""
        return self._state.pointed_at

    @property
    def stopped(self) -> bool:
        """Between :meth:`stop` and :meth:`start`: the interrupt is quiesced."""
        return self._stopped

    @property
    def quiesce(self) -> str:
        """How stop() quiesces, from the facts: "mask" where the device can,
        else "keep" where a swap can drop a signal, else "swap"."""
        if self.interrupt.can_mask:
            return "mask"
        return "keep" if self.interrupt.swap_may_drop else "swap"

    def _token_fd(self) -> int:
        return self._state.token_fd()

    # -- open / close ------------------------------------------------------------

    def _locked(self, section: Callable[[], None]) -> None:
        """Run ``section`` (a signal-safe one) under the producer's lock; the
        signals that waited in it are delivered once the lock is free."""
        with _delivering(), self._lock:
            section()

    def open(self) -> None:
        """Open the device and point its interrupt at the token (under the producer's lock; a
        Ctrl-C waits for the bookkeeping)."""
        self._locked(self._open)

    @signal_safe
    def _open(self) -> None:
        if self._opened:
            return
        self._begin_open()
        try:
            callout(self.interrupt.open)  # opening a node or a peer may block: Ctrl-C acts
            if self._stopped:
                self._state.quiesce(self.quiesce, opening=True)
            else:
                self._state.point(self._token_fd())
                self._state.pointed_first()
            self.interrupt.ready()
        except BaseException:
            _quietly(self._teardown)  # the open's own failure is the news
            raise

    def _begin_open(self) -> None:
        assert isinstance(self.token, Eventfd)
        if self.token.closed:
            raise InvalidEndpointError(f"{self.describe()}: its token eventfd is closed")
        self._opened = True
        self.problem_error = None
        self._state.opening()

    def close(self) -> None:
        """Detach, unmask, replay what was held, release the device; every step
        attempted, then the first failure raised, else what :meth:`lose`
        recorded (a lost device is not asked to detach). Closed either way."""
        was_open = False
        with _delivering(), self._lock:
            if self._opened:
                was_open = True
                self._teardown()
        if was_open and self.problem_error is not None:
            raise self.problem_error

    @signal_safe
    def _teardown(self) -> None:
        errors: list[BaseException] = []

        def attempt(step: Callable[[], object]) -> None:
            try:
                step()
            except self.interrupt.gone_errors as exc:
                self.lose(exc)
            except BaseException as exc:  # kept, raised once everything is released
                errors.append(exc)

        self._state.release(attempt, lambda: self.problem_error is not None)
        attempt(self.interrupt.close)
        self._opened = False
        if errors:  # a Ctrl-C before any failure
            raise min(errors, key=lambda exc: isinstance(exc, Exception))

    @classmethod
    def open_batch(cls, batch: Sequence[DeviceProducer]) -> None:
        """Open ``batch`` all or nothing, as :meth:`open` opens one, every
        interrupt of a device group pointed by one
        :meth:`~irqbypass.plugin.DeviceGroup.point_batch`; a stopped one is quiesced
        after. On failure none stays open."""
        _Batch(batch).open()

    @classmethod
    def close_batch(cls, batch: Sequence[DeviceProducer]) -> None:
        """Close ``batch`` as :meth:`close` closes one, the pointed interrupts of
        a group detached by one :meth:`~irqbypass.plugin.DeviceGroup.detach_batch`
        (each alone if that fails; a lost device is not asked); every step
        attempted, then the first failure raised, else the first loss
        :meth:`lose` recorded in an open producer of the batch."""
        _Batch(batch).close()

    # -- quiesce -----------------------------------------------------------------

    def stop(self) -> None:
        """Quiesce the interrupt before an add or del, as :attr:`quiesce` says (under the
        producer's lock)."""
        self._locked(self._stop)

    @signal_safe
    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._opened and self.problem_error is None:  # a lost device cannot signal
            try:
                self._state.quiesce(self.quiesce)
            except self.interrupt.gone_errors as exc:
                self.lose(exc)

    def start(self) -> None:
        """Unmask, or point the interrupt back at the token; then replay what
        the holding eventfd caught (even if that failed)."""
        self._locked(self._start)

    @signal_safe
    def _start(self) -> None:
        if not self._stopped:
            return
        self._stopped = False
        if not self._opened:
            return
        if self._state.resume_deferred():
            return
        try:
            self._state.unquiesce(lost=self.problem_error is not None)
        except self.interrupt.gone_errors as exc:
            self.lose(exc)

    # -- status --------------------------------------------------------------------

    def stats(self) -> Mapping[str, int]:
        """``held``/``replayed``: interrupts caught while stopped and written to
        the token on start; ``quiesces``: stops; :attr:`POINTED_STAT`: 1 while the
        interrupt is pointed. With ``signals_on_new_fd``: ``kicks`` (the
        device's signals on a new fd), ``phantom`` (those that reached the token
        with nothing behind them), ``absorbed`` (held ones a kick stood in for,
        counted in held and replayed). No ``fired``: userspace cannot count a
        device's interrupts."""
        with self._lock:
            stats = self._state.stats(self.POINTED_STAT)
            stats.update(self.device_stats())
            return stats


class _Batch:
    """Many producers opened or closed as one, all or nothing, under all their
    locks (taken in the one lock order), each device group's interrupts pointed
    or detached by one call of the group."""

    def __init__(self, batch: Sequence[DeviceProducer]) -> None:
        self.batch = list(batch)

    def locks(self) -> HeldLocks:
        return HeldLocks([(p._lock_order, p._lock) for p in self.batch])

    def open(self) -> None:
        with _delivering(), self.locks():  # delivered once they are released
            self._open()

    @signal_safe
    def _open(self) -> None:
        fresh = [p for p in self.batch if not p._opened]
        for p in fresh:
            assert isinstance(p.token, Eventfd)
            if p.token.closed:
                raise InvalidEndpointError(f"{p.describe()}: its token eventfd is closed")
        began = []
        try:
            for p in fresh:
                p._begin_open()
                began.append(p)
                callout(p.interrupt.open)  # as in open()
            running = [p for p in fresh if not p._stopped]
            _point_groups(running)
            for p in running:
                p._state.pointed(p._token_fd())
                p._state.pointed_first()
            for p in fresh:
                if p._stopped:  # quiesced as open() does (a swap points at the hold)
                    p._state.quiesce(p.quiesce, opening=True)
            for p in fresh:
                p.interrupt.ready()
        except BaseException:
            for p in began:
                _quietly(p._teardown)  # the first failure is raised
            raise

    def close(self) -> None:
        was_open: list[DeviceProducer] = []
        with _delivering(), self.locks():  # delivered once they are released
            was_open = [p for p in self.batch if p._opened]
            self._close()
        for p in was_open:
            if p.problem_error is not None:
                raise p.problem_error

    @signal_safe
    def _close(self) -> None:
        errors: list[BaseException] = []
        pointed = [
            p
            for p in self.batch
            if p._opened and p.pointed_at is not None and p.problem_error is None
        ]
        for group, members in _by_group(pointed):
            if group is None:
                continue  # each teardown below detaches alone
            try:
                group.detach_batch([p.interrupt for p in members])
                for p in members:
                    p._state.pointed_at = None
            except BaseException as exc:  # each teardown below detaches alone
                errors.append(exc)
        for p in self.batch:
            if p._opened:
                try:
                    p._teardown()
                except BaseException as exc:
                    errors.append(exc)
        if errors:
            raise min(errors, key=lambda exc: isinstance(exc, Exception))


class _delivering:  # lower case: it reads as a call
    """``with _delivering():`` around a producer's section: as the block ends,
    the signals that waited in it are delivered, unless the producer was called
    from inside a section (a Topology opens it through a callout, a Manager
    stops it in a pairing): they then wait for that section's end, as an
    uninterrupted method's do. Raised here, a Ctrl-C would tell that caller an
    open that completed was interrupted, and the open would never be closed."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        if _DEFERRED and not _enclosed(sys._getframe(1)):
            deliver_deferred_signals()


def _enclosed(frame: FrameType | None) -> bool:
    """Whether ``frame``, or a frame out from it, is where a signal waits: a
    section's own lines, whose end delivers what waited."""
    while frame is not None:
        if in_safe_section(frame):
            return True
        frame = frame.f_back
    return False


def _quietly(step: Callable[[], object]) -> None:
    """``step()``, an exception it raises dropped (a Ctrl-C is not): a rollback
    whose own failure would hide the one being raised. No ``with`` line in a
    section: in the old style a signal passes on one."""
    with contextlib.suppress(Exception):
        step()


def _by_group(
    batch: Sequence[DeviceProducer],
) -> list[tuple[DeviceGroup | None, list[DeviceProducer]]]:
    """The batch's producers by their interrupt's group, in order of first appearance."""
    groups: dict[int, tuple[DeviceGroup | None, list[DeviceProducer]]] = {}
    for p in batch:
        group = p.interrupt.group
        groups.setdefault(id(group), (group, []))[1].append(p)
    return list(groups.values())


def _point_groups(running: Sequence[DeviceProducer]) -> None:
    """Point every producer's interrupt at its token, group by group; on
    failure the groups already pointed are detached again."""
    done: list[tuple[DeviceGroup | None, list[DeviceProducer]]] = []
    try:
        for group, members in _by_group(running):
            pairs = [(p.interrupt, p._token_fd()) for p in members]
            if group is None:
                point_each(pairs)
            else:
                group.point_batch(pairs)
            done.append((group, members))
    except BaseException:
        for group, members in reversed(done):
            interrupts = [p.interrupt for p in members]
            with contextlib.suppress(Exception):  # the failure is raised
                if group is None:
                    detach_each(interrupts)
                else:
                    group.detach_batch(interrupts)
        raise
