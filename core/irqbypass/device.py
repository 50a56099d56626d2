"""The template of a device producer: a device interrupt that signals an eventfd we choose.

vfio's vector trigger (``VFIO_DEVICE_SET_IRQS``), a vhost or vhost-vdpa
virtqueue's call (``VHOST_SET_VRING_CALL``), a vhost-user back-end's call
(``VHOST_USER_SET_VRING_CALL``): each is a device interrupt that the producer
points at an eventfd of its choosing. :class:`DeviceProducer` owns everything
about that life which does not depend on the device, once:

- ``open()`` all or nothing (a refusal releases what was obtained), the
  token-closed check; ``close()`` from any state, every step attempted;
- ``stop()``/``start()`` by one of :data:`QUIESCE_MODES`: keep the interrupt
  on the token (its counter holds what arrives), swap it to a holding eventfd
  and replay what that caught at start, or mask it at the device;
- a device that is idle and whose work the producer feeds itself may defer
  instead (:meth:`~DeviceProducer.device_defer`: nothing moves, the work waits);
- the ``held``/``replayed``/``quiesces`` counts (and, for a device that signals
  every new fd once, ``kicks``/``phantom``/``absorbed``; that fact may be
  learnt rather than known: :meth:`~DeviceProducer.learn_signals_on_new_fd`);
- a device that goes away while open (a peer process that exits): the errors
  in :attr:`~DeviceProducer.gone_errors` and :meth:`~DeviceProducer.lose` make
  stop/start record state only, and ``close()`` release everything and then
  raise what was lost;
- the signal-safe sections: a Ctrl-C never leaves the interrupt pointing
  somewhere the producer does not know, nor a teardown half done;
- the error wording: every message starts with :meth:`DeviceProducer.describe`
  and says what failed, the kernel's errno and what to do.

A subclass supplies the device's primitives (``device_open``, ``device_close``,
``device_point``, and where it can ``device_detach``, ``device_mask``,
``device_unmask``, ``device_defer``/``device_resume``, ``device_ready``) and
its facts (:attr:`~DeviceProducer.can_mask`, :attr:`~DeviceProducer.swap_may_drop`,
:attr:`~DeviceProducer.signals_on_new_fd`, :attr:`~DeviceProducer.gone_errors`).
A primitive that waits on another process does so through
:func:`irqbypass.interruptible` (Ctrl-C acts at once, even in the template's
signal-safe sections); one that raises has changed nothing the template
records, and one that cannot tell whether the device applied its request
calls :meth:`~DeviceProducer.lose`.
docs/plugin-guide.md, "Writing a device producer", walks through one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar

from .endpoints import Producer
from .errors import DeviceError, InvalidEndpointError, IrqBypassError
from .eventfd import Eventfd, HoldingEventfd
from .kinds import EndpointSpec
from .options import MAX_FD, Options, show_value
from .seam import RealSeam, Seam
from .signals import deliver_deferred_signals, signal_safe

__all__ = ["QUIESCE_MODES", "DeviceProducer"]

#: How stop() quiesces: "keep" leaves the interrupt on the token (nothing moves,
#: the token's counter keeps what arrives: for a device whose swap can drop a
#: signal); "swap" points it at a holding eventfd and replays at start; "mask"
#: masks it at the device (which keeps a level asserted meanwhile).
QUIESCE_MODES = ("keep", "swap", "mask")


class DeviceProducer(Producer):
    """A producer whose device interrupt signals the token eventfd while open.

    Subclasses set :attr:`kind` and define the ``device_*`` primitives and
    :meth:`where`; they call ``super().__init__`` with ``seam`` (the OS calls;
    tests hand in a model). Constructing never touches the device.
    """

    #: the producer kind, as in messages ("vdpa producer 'net' (...)")
    kind: ClassVar[str] = "device"
    #: the name under which stats() reports whether the interrupt is pointed
    POINTED_STAT: ClassVar[str] = "bound"
    #: what the interrupt's number is called ("vector", "queue"): the constructor's
    #: ``number`` is then checked, 0..2**32-1, under that name; None: not checked
    NUMBER_LABEL: ClassVar[str | None] = None

    # -- facts: what the subclass knows about its device ------------------------

    #: the device can mask this interrupt (and keeps it pending meanwhile)
    can_mask: bool = False
    #: pointing the interrupt at another eventfd can drop a signal landing meanwhile
    swap_may_drop: bool = False
    #: the device signals every new fd once, with no interrupt behind it
    #: (libvhost-user's reconnect kick): taken off the holding eventfd, and on the
    #: token it stands in for the first held interrupt or counts as ``phantom``.
    #: None: not known yet, :meth:`learn_signals_on_new_fd` finds out. A device
    #: said to that left nothing on the holding eventfd is learnt not to
    #: (``device_point`` returns once the device applied the fd, after its signal)
    signals_on_new_fd: bool | None = False
    #: the exceptions of a primitive that mean the device went away (its process
    #: exited): in stop, start and close they are recorded by :meth:`lose`
    gone_errors: ClassVar[tuple[type[IrqBypassError], ...]] = ()

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
        the device is one node: exactly one of ``device`` (a path, opened by
        :meth:`take_device`) and ``device_fd`` (the VMM's fd) is given."""
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
        self._given_fd = device_fd
        self._fd: int | None = None  # the device fd while open
        self._owns_fd = False  # take_device opened it: release_device closes it
        self._lock = threading.RLock()  # a subclass's own methods may nest under it
        self._opened = False  # device_open began: close() has something to release
        self._pointed_at: int | None = None  # the fd the interrupt signals
        self._masked = False
        self._stopped = False
        self._deferring = False  # stopped by device_defer: nothing moved
        self._hold = HoldingEventfd()
        self._quiesces = self._swaps = self._losses = 0
        self._kicks = self._phantom = self._absorbed = 0
        #: the kick counts are reported: the class says its devices may kick (or
        #: that it finds out), or an open found this one does
        self._counts_kicks = type(self).signals_on_new_fd is not False
        #: what made the device unusable while open (see :meth:`lose`), or None
        self.problem_error: IrqBypassError | None = None

    # -- the primitives a subclass defines ----------------------------------------

    def interrupt_name(self) -> str:
        """Which of the device's interrupts, for messages ("virtqueue 0")."""
        return "its interrupt"

    def where(self) -> str:
        """The device and interrupt, for messages ("/dev/vhost-net, virtqueue 0")."""
        where = self.device if self.device is not None else f"fd {self._given_fd}"
        return f"{where}, {self.interrupt_name()}"

    def device_open(self) -> None:
        """Obtain and check the device (raise :meth:`refuse`/:meth:`failure`);
        whatever it obtained before failing, :meth:`device_close` releases."""

    def device_close(self) -> None:
        """Release what :meth:`device_open` obtained, from wherever it stopped;
        every step attempted, then raise the first failure (default:
        :meth:`release_device`)."""
        self.release_device()

    def device_point(self, fd: int) -> None:
        """Point the interrupt at eventfd ``fd`` (it signals only that fd after)."""
        raise NotImplementedError(f"{type(self).__name__} must define device_point")

    def device_detach(self) -> None:
        """Point the interrupt at nothing (default: ``device_point(-1)``)."""
        self.device_point(-1)

    def device_mask(self) -> None:
        """Mask the interrupt at the device (only with :attr:`can_mask`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot mask")

    def device_unmask(self) -> None:
        """Unmask the interrupt at the device (only with :attr:`can_mask`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot mask")

    @classmethod
    def device_point_batch(cls, batch: Sequence[DeviceProducer]) -> None:
        """Point every producer's interrupt at its token, all or nothing: on
        failure none is pointed and the error names the one that failed (only
        for :meth:`open_batch`, by a device that points many in one call)."""
        raise NotImplementedError(f"{cls.__name__} cannot point a batch")

    @classmethod
    def device_detach_batch(cls, batch: Sequence[DeviceProducer]) -> None:
        """Detach every producer's interrupt (only for :meth:`close_batch`)."""
        raise NotImplementedError(f"{cls.__name__} cannot detach a batch")

    def hint(self, code: int, op: str, fd: int) -> str:
        """What to do about errno ``code`` from ``op`` on ``fd`` (-1: an open)
        when the call named no hint of its own."""
        return "see the kernel log (dmesg)"

    def device_stats(self) -> Mapping[str, int]:
        """The device's own counters, added to :meth:`stats`."""
        return {}

    def device_defer(self) -> bool:
        """Quiesce without moving the interrupt, if the device can now: True
        when nothing is in flight that could signal and the producer holds back
        the device's new work (it feeds the device itself; see :attr:`deferring`)
        until :meth:`device_resume`. Asked at every stop of an open producer,
        under its lock (default: False, never)."""
        return False

    def device_resume(self) -> None:
        """Give the device the work held back since :meth:`device_defer`."""

    def device_ready(self) -> None:
        """The interrupt is pointed and the open is complete: start what the
        producer itself does with the device (a failure rolls the open back)."""

    # -- what the template offers a subclass ------------------------------------

    def describe(self) -> str:
        """``KIND producer 'NAME' (WHERE)``: how messages name this producer and its device."""
        return f"{self.kind} producer {self.name!r} ({self.where()})"

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
        return self._swaps

    @property
    def deferring(self) -> bool:
        """Stopped by :meth:`device_defer`: the producer holds the device's work back."""
        return self._deferring

    @signal_safe
    def learn_signals_on_new_fd(self) -> None:
        """Point the interrupt at the holding eventfd while the device is idle
        (from :meth:`device_open`, before it can signal for work) and learn
        :attr:`signals_on_new_fd` from whether it signalled there."""
        self._point(self._hold.fileno(), learn=True)

    @signal_safe
    def point_at_holding(self) -> None:
        """Point the interrupt at the holding eventfd, the device's signal on
        the new fd accounted: for a ``device_detach`` whose device cannot point
        at nothing (libvhost-user panics on the no-fd flag at its next signal);
        close replays what it then catches."""
        self._point(self._hold.fileno())

    def refuse(self, problem: str, code: int = errno.EINVAL) -> DeviceError:
        """A refusal of ours (not the kernel's), saying what is wrong."""
        return DeviceError(f"{self.describe()}: {problem}", errno=code)

    def failure(self, op: str, exc: OSError, hint: str) -> DeviceError:
        """``op`` failed in the kernel: its errno, and ``hint`` (what to do)."""
        code = exc.errno if exc.errno is not None else errno.EIO
        return DeviceError(
            f"{self.describe()}: {op} failed: {os.strerror(code)} (errno {code}); {hint}",
            errno=code,
        )

    def ioctl(
        self,
        fd: int,
        name: str,
        request: int,
        arg: bytearray | int,
        hints: Mapping[int, str] | None = None,
    ) -> int:
        """The ioctl through the seam; a failure becomes a DeviceError with
        the hint for its errno (``hints``, else :meth:`hint`)."""
        try:
            return self.seam.ioctl(fd, request, arg)
        except OSError as exc:
            code = exc.errno or 0
            raise self.failure(
                name, exc, (hints or {}).get(code) or self.hint(code, name, fd)
            ) from exc

    def open_node(self, path: str, hints: Mapping[int, str]) -> int:
        """``open(path, O_RDWR)`` through the seam, errors worded as :meth:`ioctl`'s."""
        op = f"open({path})"
        try:
            return self.seam.open(path, os.O_RDWR)
        except OSError as exc:
            code = exc.errno or 0
            raise self.failure(op, exc, hints.get(code) or self.hint(code, op, -1)) from exc

    @property
    def fd(self) -> int | None:
        """The device fd while open."""
        return self._fd

    def take_device(self, hints: Mapping[int, str]) -> int:
        """The VMM's fd, or ``device`` opened (and owned: :meth:`release_device`
        closes it), with ``hints`` for the open's errnos."""
        if self._given_fd is not None:
            self._fd = self._given_fd
        else:
            assert self.device is not None
            self._fd = self.open_node(self.device, hints)
            self._owns_fd = True
        return self._fd

    def release_device(self) -> None:
        """Close the device fd if :meth:`take_device` opened it."""
        fd, owned = self._fd, self._owns_fd
        self._fd, self._owns_fd = None, False
        if owned and fd is not None:
            try:
                self.seam.close(fd)
            except OSError as exc:
                raise self.failure("close", exc, "the fd was already closed") from exc

    @classmethod
    def spec_common(cls, spec: EndpointSpec) -> dict[str, Any]:
        """The constructor arguments every spec gives: token, irq, name."""
        return {"token": spec.token, "irq": spec.irq, "name": spec.name}

    @staticmethod
    def number(value: int | None, irq: int | None) -> int:
        """An interrupt's number (queue, vector): given, else the spec's irq, else 0."""
        return value if value is not None else (irq if irq is not None else 0)

    def check_number(self, label: str, value: object) -> None:
        """Refuse ``value`` unless it is an int in 0..2**32-1 (an ioctl's u32), naming
        ``label``; InvalidEndpointError."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            raise InvalidEndpointError(
                f"{self.kind} producer {self.name!r}: {label} {value!r} must be an integer "
                "0..2**32-1"
            )

    @classmethod
    def device_or_fd(cls, opts: Options, device_help: str) -> tuple[str | None, int | None]:
        """A spec's ``device`` (a path) or ``fd`` (inherited): exactly one."""
        device = opts.get_str("device")
        if device == "":
            raise opts.error("device", f"the device is empty; name one ({device_help})")
        fd = opts.get_fd("fd")
        if (device is None) == (fd is None):
            raise opts.error(
                "device", f"give exactly one of device ({device_help}) and fd (an fd "
                "this process inherited)",
            )  # fmt: skip
        return device, fd

    def check_device_or_fd(self, device: str | None, device_fd: int | None, help: str) -> None:
        """The constructor's ``device`` (a path) and ``device_fd``: exactly one."""
        what = f"{self.kind} producer {self.name!r}"
        if (device is None) == (device_fd is None):
            raise InvalidEndpointError(
                f"{what}: give exactly one of device ({help}) and device_fd "
                f"(got device={device!r}, device_fd={device_fd!r})"
            )
        if device_fd is not None and (
            isinstance(device_fd, bool)
            or not isinstance(device_fd, int)
            or not 0 <= device_fd <= MAX_FD
        ):
            raise InvalidEndpointError(
                f"{what}: device_fd {show_value(device_fd)} is not an fd (0 to {MAX_FD})"
            )
        if device is not None and (not isinstance(device, str) or not device or "\0" in device):
            raise InvalidEndpointError(
                f"{what}: device {show_value(device)} is not a path (a non-empty str without "
                "a NUL byte)"
            )

    # -- state -----------------------------------------------------------------

    @property
    def pointed_at(self) -> int | None:
        """The eventfd the interrupt signals: the token, or the holding
        eventfd while stopped by a swap; None while detached."""
        return self._pointed_at

    @property
    def stopped(self) -> bool:
        """Between :meth:`stop` and :meth:`start`: the interrupt is quiesced."""
        return self._stopped

    @property
    def quiesce(self) -> str:
        """How stop() quiesces, from the facts: "mask" where the device can,
        else "keep" where a swap can drop a signal, else "swap"."""
        if self.can_mask:
            return "mask"
        return "keep" if self.swap_may_drop else "swap"

    def _token_fd(self) -> int:
        assert isinstance(self.token, Eventfd)
        return self.token.fileno()

    # -- open / close ------------------------------------------------------------

    def open(self) -> None:
        """Open the device and point its interrupt at the token (under the producer's lock; a
        Ctrl-C waits for the bookkeeping)."""
        try:
            with self._lock:
                self._open()
        finally:
            deliver_deferred_signals()

    @signal_safe
    def _open(self) -> None:
        if self._opened:
            return
        assert isinstance(self.token, Eventfd)
        if self.token.closed:
            raise InvalidEndpointError(f"{self.describe()}: its token eventfd is closed")
        self._opened = True
        self.problem_error = None
        self._counts_kicks = self._counts_kicks or self.signals_on_new_fd is not False
        try:
            call = self.device_open
            call()  # a call-out: opening a node or a peer may block, Ctrl-C stays prompt
            if self._stopped:
                self._quiesce(opening=True)
            else:
                self._point(self._token_fd())
                if self.signals_on_new_fd:
                    self._phantom += 1  # nothing is behind the first one
            self.device_ready()
        except BaseException:
            with contextlib.suppress(Exception):  # the open's own failure is the news
                self._teardown()
            raise

    def close(self) -> None:
        """Detach, unmask, replay what was held, release the device; every step
        attempted, then the first failure raised, else what :meth:`lose`
        recorded (a lost device is not asked to detach). Closed either way."""
        was_open = False
        try:
            with self._lock:
                if self._opened:
                    was_open = True
                    self._teardown()
        finally:
            deliver_deferred_signals()
        if was_open and self.problem_error is not None:
            raise self.problem_error

    @signal_safe
    def _teardown(self) -> None:
        errors: list[BaseException] = []

        def attempt(step: Callable[[], object]) -> None:
            try:
                step()
            except self.gone_errors as exc:
                self.lose(exc)
            except BaseException as exc:  # kept, raised once everything is released
                errors.append(exc)

        if self._pointed_at is not None:
            if self.problem_error is None:
                attempt(self.device_detach)
            self._pointed_at = None
        if self._masked:
            if self.problem_error is None:
                attempt(self.device_unmask)
            self._masked = False
        self._deferring = False
        self._hold.replay(self.token)
        self._hold.close()
        attempt(self.device_close)
        self._opened = False
        if errors:  # a Ctrl-C before any failure
            raise min(errors, key=lambda exc: isinstance(exc, Exception))

    def _point(self, fd: int, *, learn: bool = False) -> None:
        """Point the interrupt at ``fd`` and account for the device's own
        signal on a new fd (only called inside a safe section)."""
        self.device_point(fd)
        self._note_pointed(fd, learn=learn)

    def _note_pointed(self, fd: int, *, learn: bool = False) -> None:
        self._pointed_at = fd
        if fd == self._token_fd():
            if self.signals_on_new_fd:
                self._kicks += 1
        elif learn or self.signals_on_new_fd:
            kicked = self._hold.absorb(1) > 0
            self.signals_on_new_fd = kicked  # none left there: it does not kick
            self._counts_kicks = self._counts_kicks or kicked
            self._kicks += kicked

    # -- many at once --------------------------------------------------------------

    @classmethod
    def open_batch(cls, batch: Sequence[DeviceProducer]) -> None:
        """Open ``batch`` all or nothing, as :meth:`open` opens one, but with
        every interrupt pointed by one :meth:`device_point_batch` (the base of
        an ``open_group`` for a device that points many at once); a stopped one
        is quiesced after. On failure none stays open."""
        try:
            with _Locks(batch):
                cls._open_batch(batch)
        finally:  # after the locks are released: a signal deferred there too
            deliver_deferred_signals()

    @classmethod
    @signal_safe
    def _open_batch(cls, batch: Sequence[DeviceProducer]) -> None:
        fresh = [p for p in batch if not p._opened]
        for p in fresh:
            assert isinstance(p.token, Eventfd)
            if p.token.closed:
                raise InvalidEndpointError(f"{p.describe()}: its token eventfd is closed")
        try:
            for p in fresh:
                p._opened = True
                p.problem_error = None
                p._counts_kicks = p._counts_kicks or p.signals_on_new_fd is not False
                call = p.device_open
                call()  # a call-out, as in open()
            running = [p for p in fresh if not p._stopped]
            if running:
                cls.device_point_batch(running)
            for p in running:
                p._note_pointed(p._token_fd())
                if p.signals_on_new_fd:
                    p._phantom += 1  # nothing is behind the first one
            for p in fresh:
                if p._stopped:  # quiesced as open() does (a swap points at the hold)
                    p._quiesce(opening=True)
            for p in fresh:
                p.device_ready()
        except BaseException:
            for p in fresh:
                if p._opened:
                    with contextlib.suppress(Exception):  # the first failure is raised
                        p._teardown()
            raise

    @classmethod
    def close_batch(cls, batch: Sequence[DeviceProducer]) -> None:
        """Close ``batch`` as :meth:`close` closes one, the pointed interrupts
        detached by one :meth:`device_detach_batch` (each alone if that fails;
        a lost device is not asked); every step attempted, then the first
        failure raised, else the first loss :meth:`lose` recorded in an open
        producer of the batch. All closed either way."""
        was_open: list[DeviceProducer] = []
        try:
            with _Locks(batch):
                was_open = [p for p in batch if p._opened]
                cls._close_batch(batch)
        finally:  # after the locks are released: a signal deferred there too
            deliver_deferred_signals()
        for p in was_open:
            if p.problem_error is not None:
                raise p.problem_error

    @classmethod
    @signal_safe
    def _close_batch(cls, batch: Sequence[DeviceProducer]) -> None:
        errors: list[BaseException] = []
        pointed = [
            p for p in batch if p._opened and p._pointed_at is not None and p.problem_error is None
        ]
        if pointed:
            try:
                cls.device_detach_batch(pointed)
                for p in pointed:
                    p._pointed_at = None
            except BaseException as exc:  # each teardown below detaches alone
                errors.append(exc)
        for p in batch:
            if p._opened:
                try:
                    p._teardown()
                except BaseException as exc:
                    errors.append(exc)
        if errors:
            raise min(errors, key=lambda exc: isinstance(exc, Exception))

    # -- quiesce -----------------------------------------------------------------

    def _quiesce(self, *, opening: bool = False) -> None:
        """Quiesce by :meth:`device_defer`, else by :attr:`quiesce`; ``opening``:
        the interrupt points nowhere yet (no defer: the device is not ready)."""
        self._quiesces += 1
        if not opening and self.device_defer():
            self._deferring = True
            return
        mode = self.quiesce
        if mode == "swap":
            self._swaps += 1
            self._point(self._hold.fileno())
            return
        if opening:
            self._point(self._token_fd())
        if mode == "mask":
            self.device_mask()
            self._masked = True

    def stop(self) -> None:
        """Quiesce the interrupt before an add or del, as :attr:`quiesce` says (under the
        producer's lock)."""
        try:
            with self._lock:
                self._stop()
        finally:
            deliver_deferred_signals()

    @signal_safe
    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._opened and self.problem_error is None:  # a lost device cannot signal
            try:
                self._quiesce()
            except self.gone_errors as exc:
                self.lose(exc)

    def start(self) -> None:
        """Unmask, or point the interrupt back at the token; then replay what
        the holding eventfd caught (even if that failed)."""
        try:
            with self._lock:
                self._start()
        finally:
            deliver_deferred_signals()

    @signal_safe
    def _start(self) -> None:
        if not self._stopped:
            return
        self._stopped = False
        if not self._opened:
            return
        if self._deferring:
            self._deferring = False
            self.device_resume()
            return
        kicked = False
        try:
            if self.problem_error is not None:
                pass  # a lost device: nothing to move back
            elif self._masked:
                self.device_unmask()
                self._masked = False
            elif self._pointed_at is not None and self._pointed_at != self._token_fd():
                self._point(self._token_fd())
                kicked = bool(self.signals_on_new_fd)
        except self.gone_errors as exc:
            self.lose(exc)
        finally:
            if kicked:  # the kick on the token stands in for the first held one
                if self._hold.absorb(1):
                    self._absorbed += 1
                else:
                    self._phantom += 1
            self._hold.replay(self.token)

    # -- status --------------------------------------------------------------------

    def stats(self) -> Mapping[str, int]:
        """``held``/``replayed``: interrupts caught while stopped and written to
        the token on start; ``quiesces``: stops; :attr:`POINTED_STAT`: 1 while the
        interrupt is pointed. With :attr:`signals_on_new_fd`: ``kicks`` (the
        device's signals on a new fd), ``phantom`` (those that reached the token
        with nothing behind them), ``absorbed`` (held ones a kick stood in for,
        counted in held and replayed). No ``fired``: userspace cannot count a
        device's interrupts."""
        with self._lock:
            stats = {
                "held": self._hold.held + self._absorbed,
                "replayed": self._hold.replayed + self._absorbed,
                "quiesces": self._quiesces,
                self.POINTED_STAT: int(self._pointed_at is not None),
            }
            if self._counts_kicks:
                stats.update(kicks=self._kicks, phantom=self._phantom, absorbed=self._absorbed)
            stats.update(self.device_stats())
            return stats


class _Locks:
    """Every producer's lock of a batch, all held or none.

    Taken in one global order (by ``id``), whatever the batch's order, so two
    batches sharing producers cannot each hold what the other waits for. Each
    lock is taken and recorded in one signal-safe step, so a Ctrl-C landing
    between the two cannot leave a lock held that nobody releases; a lock
    another thread holds is waited for outside that step, where Ctrl-C acts
    (and what was taken is released again)."""

    #: how long to wait between two tries of a lock another thread holds
    RETRY_S = 0.001

    def __init__(self, batch: Sequence[DeviceProducer]) -> None:
        self.order = sorted({id(p): p for p in batch}.values(), key=id)
        self.held: list[DeviceProducer] = []

    def __enter__(self) -> None:
        try:
            for p in self.order:
                while not self._take(p):
                    time.sleep(self.RETRY_S)
        except BaseException:
            self._release()
            raise

    @signal_safe  # a signal as it starts would otherwise skip the release
    def __exit__(self, *exc: object) -> None:
        self._release()

    @signal_safe
    def _take(self, p: DeviceProducer) -> bool:
        if not p._lock.acquire(blocking=False):
            return False
        self.held.append(p)
        return True

    @signal_safe
    def _release(self) -> None:
        while self.held:
            self.held.pop()._lock.release()
