"""The device producer (irqbypass.plugin.DeviceProducer) composing a minimal device.

``LineDevice`` is an irqbypass.plugin.DeviceInterrupt with one interrupt line whose
operations only record what they were asked and signal the eventfd the line
points at; ``Line`` is the producer composing it. What is tested here is the
producer's own life (all-or-nothing open, close from any state, the
three quiesce modes and the deferral, the counts, a device's kick on a new fd,
known or learnt, a device that goes away, signal safety, a wait on a peer),
which the vfio, vdpa, vhost and vhost-user producers then inherit.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import irqbypass
import irqbypass.plugin
import irqbypass.signalsafe
import irqbypass.system
import irqbypass.testing
import pytest


class LineDevice(irqbypass.plugin.DeviceInterrupt):
    """One interrupt line; ``fail`` names the operation that refuses next."""

    def __init__(self, token: irqbypass.Eventfd, **facts: bool) -> None:
        for fact, value in facts.items():
            setattr(self, fact, value)
        self.token = token
        self.producer: Line | None = None  # the producer composing it
        self.log: list[str] = []
        self.fail: dict[str, BaseException] = {}
        self.target: int | None = None  # the fd the line signals
        self.masked = False
        self.pending = 0  # fired while masked
        self.device_open_fd: int | None = None
        #: whether the device signals a new fd (None: as signals_on_new_fd says)
        self.kicks: bool | None = None

    @property
    def owner(self) -> Line:
        assert self.producer is not None
        return self.producer

    def step(self, what: str) -> None:
        self.log.append(what)
        exc = self.fail.pop(what.split("(")[0], None)
        if exc is not None:
            raise exc

    def open(self) -> None:
        self.device_open_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self.step("open")

    def close(self) -> None:
        if self.device_open_fd is not None:
            os.close(self.device_open_fd)
            self.device_open_fd = None
        self.step("close")

    def point(self, fd: int) -> None:
        self.step(f"point({'token' if fd == self.token.fileno() else 'hold' if fd >= 0 else -1})")
        self.target = fd if fd >= 0 else None
        kicks = self.signals_on_new_fd if self.kicks is None else self.kicks
        if kicks and fd >= 0:
            os.write(fd, (1).to_bytes(8, "little"))  # libvhost-user's kick

    def mask(self) -> None:
        self.step("mask")
        self.masked = True

    def unmask(self) -> None:
        self.step("unmask")
        self.masked = False
        if self.pending:
            self.pending = 0
            self.fire()

    def fire(self, n: int = 1) -> None:
        for _ in range(n):
            if self.masked:
                self.pending += 1
            elif self.target is not None:
                os.write(self.target, (1).to_bytes(8, "little"))


class Line(irqbypass.plugin.DeviceProducer):
    """The producer of a :class:`LineDevice` (``DEVICE``), made with ``facts``;
    what the tests read of the device is read through it."""

    kind = "line"
    DEVICE: ClassVar[type[LineDevice]] = LineDevice

    def __init__(self, token: irqbypass.Eventfd, name: str = "l", **facts: bool) -> None:
        super().__init__(token=token, name=name)
        self.dev = self.DEVICE(token, **facts)
        self.dev.producer = self
        self.interrupt = self.dev

    def where(self) -> str:
        return "the line"

    @property
    def log(self) -> list[str]:
        return self.dev.log

    @property
    def fail(self) -> dict[str, BaseException]:
        return self.dev.fail

    @property
    def target(self) -> int | None:
        return self.dev.target

    @property
    def device_open_fd(self) -> int | None:
        return self.dev.device_open_fd

    @property
    def signals_on_new_fd(self) -> bool | None:
        return self.dev.signals_on_new_fd

    def fire(self, n: int = 1) -> None:
        self.dev.fire(n)


# -- open and close ------------------------------------------------------------------


def test_open_points_the_line_at_the_token_and_close_detaches(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    line = Line(token)
    with line:
        assert line.target == line.pointed_at == token.fileno()
        line.fire(3)
        assert token.read(0) == 3
        line.open()  # a second open does nothing
    assert line.log == ["open", "point(token)", "point(-1)", "close"]
    assert line.pointed_at is None and line.target is None
    line.close()  # a second close does nothing
    assert line.log[-1] == "close" and len(line.log) == 4


@pytest.mark.parametrize("step", ["open", "point"])
def test_a_refused_open_releases_what_it_obtained(
    no_fd_leak: None, token: irqbypass.Eventfd, step: str
) -> None:
    line = Line(token)
    line.fail[step] = irqbypass.DeviceError("refused", errno=errno.EBUSY)
    with pytest.raises(irqbypass.DeviceError, match="refused"):
        line.open()
    assert line.log[-1] == "close" and "point(-1)" not in line.log
    assert line.pointed_at is None and line.device_open_fd is None
    line.open()  # and it can be opened again
    assert line.pointed_at == token.fileno()
    line.close()


def test_a_closed_token_is_refused_before_the_device_is_touched(
    no_fd_leak: None,
) -> None:
    token = irqbypass.Eventfd()
    line = Line(token)
    token.close()
    with pytest.raises(irqbypass.InvalidEndpointError, match=r"line producer 'l' \(the line\)"):
        line.open()
    assert line.log == []


def test_the_token_must_be_an_eventfd() -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match=r"not an irqbypass\.Eventfd"):
        Line("t")  # type: ignore[arg-type]


class Untouched(irqbypass.plugin.DeviceInterrupt):
    def point(self, fd: int) -> None:
        raise AssertionError("constructing never touches the device")


class Queue(irqbypass.plugin.DeviceProducer):
    """A device whose interrupt has a number, a virtqueue."""

    kind = "queue"
    NUMBER_LABEL = "queue"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interrupt = Untouched()

    def where(self) -> str:
        return "the queue"


def test_the_interrupts_number_falls_back_to_irq_and_is_checked(
    token: irqbypass.Eventfd,
) -> None:
    numbers = [(2, None), (None, 5), (2, 5), (None, None)]
    got = [
        (p.interrupt_number, p.irq)
        for p in (Queue(token=token, number=n, irq=i) for n, i in numbers)
    ]
    assert got == [(2, 2), (5, 5), (2, 5), (0, 0)]
    for bad in (-1, 2**32, True):
        with pytest.raises(irqbypass.InvalidEndpointError, match=rf"'q'.*: queue {bad!r} must be"):
            Queue(token=token, number=bad, name="q")
    assert Line(token).interrupt_number == 0  # no NUMBER_LABEL: no number of its own


def test_close_attempts_every_step_and_raises_the_first_failure(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    line = Line(token, can_mask=True)
    line.open()
    line.stop()
    line.fail["point"] = irqbypass.DeviceError("detach refused")
    line.fail["unmask"] = irqbypass.DeviceError("unmask refused")
    with pytest.raises(irqbypass.DeviceError, match="detach refused"):
        line.close()
    assert line.log[-3:] == ["point(-1)", "unmask", "close"]
    assert line.device_open_fd is None and line.pointed_at is None
    line.close()  # closed: nothing left to do
    assert line.log[-1] == "close" and line.log.count("close") == 1


def test_a_ctrl_c_in_a_close_step_is_raised_before_a_failure(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    line = Line(token)
    line.open()
    line.fail["point"] = irqbypass.DeviceError("detach refused")
    line.fail["close"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        line.close()
    assert line.device_open_fd is None


def test_the_wording_names_the_producer_the_device_and_the_errno(
    token: irqbypass.Eventfd,
) -> None:
    line = Line(token)
    failure = line.failure("LINE_SET", OSError(errno.EBUSY, "busy"), "close the other user")
    assert str(failure) == (
        "line producer 'l' (the line): LINE_SET failed: Device or resource busy (errno 16); "
        "close the other user"
    )
    assert failure.errno == errno.EBUSY
    assert line.refuse("no such line", errno.ENODEV).errno == errno.ENODEV


# -- the quiesce modes -----------------------------------------------------------


def test_the_quiesce_follows_the_facts(token: irqbypass.Eventfd) -> None:
    assert Line(token).quiesce == "swap"
    assert Line(token, swap_may_drop=True).quiesce == "keep"
    assert Line(token, can_mask=True, swap_may_drop=True).quiesce == "mask"
    assert irqbypass.plugin.QUIESCE_MODES == ("keep", "swap", "mask")


@pytest.mark.parametrize(
    ("facts", "moves"),
    [
        ({}, ["point(hold)", "point(token)"]),
        ({"swap_may_drop": True}, []),
        ({"can_mask": True}, ["mask", "unmask"]),
    ],
)
def test_each_quiesce_mode_loses_nothing_and_delivers_once(
    no_fd_leak: None, token: irqbypass.Eventfd, facts: dict[str, bool], moves: list[str]
) -> None:
    with Line(token, **facts) as line:
        del line.log[:]
        delivered = 0
        for burst in (1, 5, 0, 40):
            line.stop()
            line.fire(burst)
            if facts.get("can_mask") or facts.get("swap_may_drop"):
                pass  # kept by the device (mask) or by the token's counter (keep)
            else:
                assert token.read(0) == 0  # on the holding eventfd
            line.start()
            got = token.read(0)
            # a level masked: one signal on unmask however often it fired
            assert got == (min(burst, 1) if facts.get("can_mask") else burst)
            delivered += got
        assert line.log == moves * 4
        stats = line.stats()
        held = 46 if not facts else 0
        assert stats == {"held": held, "replayed": held, "quiesces": 4, "bound": 1}
        assert delivered == (3 if facts.get("can_mask") else 46)


def test_close_while_stopped_replays_and_unmasks(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    line = Line(token)
    line.open()
    line.stop()
    line.fire(4)
    line.close()
    assert token.read(0) == 4
    masked = Line(token, can_mask=True)
    masked.open()
    masked.stop()
    masked.close()
    assert masked.log[-3:] == ["point(-1)", "unmask", "close"]


def test_open_while_stopped_quiesces_at_once(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    line = Line(token)
    line.stop()
    with line:
        assert line.pointed_at not in (None, token.fileno())
        line.fire(2)
        assert token.read(0) == 0
        line.start()
        assert token.read(0) == 2
    assert line.stats()["quiesces"] == 1


def test_a_refused_start_still_replays(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    with Line(token) as line:
        line.stop()
        line.fire(3)
        line.fail["point"] = irqbypass.DeviceError("refused")
        with pytest.raises(irqbypass.DeviceError):
            line.start()
        assert token.read(0) == 3 and not line.stopped


def test_a_refused_swap_is_no_swap(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    """``swaps`` counts the stops that moved the interrupt to the holding
    eventfd: one the device refused left it on the token, and is not one."""
    with Line(token) as line:
        line.fail["point"] = irqbypass.DeviceError("refused")
        with pytest.raises(irqbypass.DeviceError):
            line.stop()
        assert line.pointed_at == token.fileno() and line.swaps == 0
        line.start()
        line.stop()  # the next one moves it
        assert line.pointed_at != token.fileno() and line.swaps == 1
        assert line.stats()["quiesces"] == 2  # stops, each counted
        line.start()


# -- a device that signals every new fd once (libvhost-user) -------------------------------


def test_the_kick_on_a_new_fd_is_accounted_for(no_fd_leak: None, token: irqbypass.Eventfd) -> None:
    with Line(token, signals_on_new_fd=True) as line:
        assert token.read(0) == 1  # the first kick reaches the token: a phantom
        line.stop()  # the kick on the holding eventfd is taken off
        line.fire(3)
        line.start()  # the kick on the token stands in for the first held one
        assert token.read(0) == 3
        line.stop()
        line.start()  # nothing held: the kick is a phantom
        assert token.read(0) == 1
        stats = line.stats()
    assert stats == {
        "held": 3, "replayed": 3, "quiesces": 2, "bound": 1, "kicks": 5, "phantom": 2,
        "absorbed": 1,
    }  # fmt: skip


def test_a_device_that_may_kick_is_learnt_at_its_first_point_on_the_holding_eventfd(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    class ProbedDevice(LineDevice):
        def open(self) -> None:
            super().open()
            self.owner.learn_signals_on_new_fd()

    class Probed(Line):
        DEVICE = ProbedDevice

    for kicks in (True, False):
        line = Probed(token, signals_on_new_fd=None)  # type: ignore[arg-type]
        line.dev.kicks = kicks
        with line:
            assert line.signals_on_new_fd is kicks
            assert token.read(0) == (1 if kicks else 0)  # the token's bind: a phantom
            stats = line.stats()
        assert line.log[:3] == ["open", "point(hold)", "point(token)"]
        assert (stats["kicks"], stats["phantom"]) == ((2, 1) if kicks else (0, 0))


def test_a_device_said_to_kick_that_left_nothing_is_learnt_not_to(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    line = Line(token, signals_on_new_fd=True)
    line.dev.kicks = False
    with line:
        token.read(0)
        line.stop()
        assert line.signals_on_new_fd is False
        line.fire(2)
        line.start()
        assert token.read(0) == 2  # nothing taken for a kick that never came


class FedDevice(LineDevice):
    """A device the producer feeds itself: idle, a stop only holds its work back."""

    in_flight = waiting = 0

    def defer(self) -> bool:
        return self.in_flight == 0

    def resume(self) -> None:
        self.step("resume")
        self.in_flight, self.waiting = self.waiting, 0


class Fed(Line):
    DEVICE = FedDevice
    dev: FedDevice

    @property
    def in_flight(self) -> int:
        return self.dev.in_flight

    def submit(self) -> None:
        if self.deferring:
            self.dev.waiting += 1
        else:
            self.dev.in_flight += 1

    def complete(self) -> None:
        self.dev.in_flight -= 1
        self.fire()


def test_an_idle_fed_device_defers_and_a_busy_one_swaps(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    with Fed(token) as line:
        del line.log[:]
        line.stop()  # idle: nothing moves
        assert line.deferring and line.pointed_at == token.fileno() and line.log == []
        line.submit()
        assert line.in_flight == 0  # held back
        line.start()
        assert line.log == ["resume"] and not line.deferring and line.in_flight == 1
        line.stop()  # busy: swapped, as the facts say
        assert not line.deferring and line.pointed_at != token.fileno()
        line.complete()
        assert token.read(0) == 0
        line.start()
        assert token.read(0) == 1
        assert (line.stats()["quiesces"], line.swaps) == (2, 1)


class Gone(irqbypass.DeviceError):
    """The peer process went away."""


class PeerDevice(LineDevice):
    gone_errors = (Gone,)


class Peer(Line):
    DEVICE = PeerDevice


def test_a_lost_device_is_recorded_not_raised_and_close_reports_it(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    line = Peer(token)
    line.open()
    line.fail["point"] = Gone("the peer exited; restart it", errno=errno.EPIPE)
    line.stop()  # the swap finds it gone: recorded
    assert line.problem == "the peer exited; restart it" and line.losses == 1
    line.start()  # state only: the device is not asked
    line.stop()
    line.start()
    assert line.log == ["open", "point(token)", "point(hold)"]
    with pytest.raises(Gone, match="the peer exited"):
        line.close()  # released without asking the device to detach
    assert line.log[-1] == "close" and line.device_open_fd is None
    line.close()  # closed: nothing more to say
    line.open()  # a new open starts with no problem; the loss stays counted
    assert line.problem is None and line.losses == 1
    line.close()


def test_a_loss_during_close_is_reported_once_everything_is_released(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    line = Peer(token)
    line.open()
    line.fail["point"] = Gone("gone", errno=errno.EPIPE)
    with pytest.raises(Gone):
        line.close()
    assert line.log[-2:] == ["point(-1)", "close"] and line.device_open_fd is None


class PeerGroup(irqbypass.plugin.DeviceGroup):
    """The device group of peers whose lines are pointed and detached many at
    once, as vfio's vectors of one device are."""

    def __init__(self) -> None:
        super().__init__(-1)
        self.detached: list[list[str]] = []

    def point_batch(self, batch: Sequence[tuple[irqbypass.plugin.DeviceInterrupt, int]]) -> None:
        for interrupt, fd in batch:
            interrupt.point(fd)

    def detach_batch(self, batch: Sequence[irqbypass.plugin.DeviceInterrupt]) -> None:
        self.detached.append([line_of(interrupt).name for interrupt in batch])
        for interrupt in batch:
            interrupt.point(-1)


def line_of(interrupt: irqbypass.plugin.DeviceInterrupt) -> Line:
    assert isinstance(interrupt, LineDevice)
    return interrupt.owner


class BatchPeer(Peer):
    """A peer in a device group."""

    def __init__(self, token: irqbypass.Eventfd, group: PeerGroup) -> None:
        super().__init__(token)
        self.interrupt.group = group


def test_a_batch_close_reports_a_lost_device_as_close_does(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    group = PeerGroup()
    lost, kept = BatchPeer(token, group), BatchPeer(token, group)
    lost.name, kept.name = "lost", "kept"
    BatchPeer.open_batch([lost, kept])
    lost.fail["point"] = Gone("the peer exited; restart it", errno=errno.EPIPE)
    lost.stop()  # the swap finds it gone: recorded
    assert lost.problem == "the peer exited; restart it"
    with pytest.raises(Gone, match="the peer exited"):
        BatchPeer.close_batch([lost, kept])
    assert group.detached == [["kept"]]  # the lost one is not asked to detach
    assert lost.device_open_fd is None and kept.device_open_fd is None
    assert kept.pointed_at is None and kept.log[-2:] == ["point(-1)", "close"]
    BatchPeer.close_batch([lost, kept])  # closed: nothing more to say


def test_device_ready_runs_once_pointed_and_its_failure_rolls_back(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    class ReadyDevice(LineDevice):
        def ready(self) -> None:
            self.step(f"ready at {self.owner.pointed_at == self.token.fileno()}")

    class Ready(Line):
        DEVICE = ReadyDevice

    line = Ready(token)
    line.fail["ready at True"] = irqbypass.DeviceError("cannot start", errno=errno.EIO)
    line.fail["close"] = irqbypass.DeviceError("secondary", errno=errno.EIO)
    with pytest.raises(irqbypass.DeviceError, match="cannot start"):  # not the rollback's
        line.open()
    assert line.log == ["open", "point(token)", "ready at True", "point(-1)", "close"]
    assert line.pointed_at is None and line.device_open_fd is None


def test_a_shared_group_is_found_by_its_class_and_key_and_closed_by_its_last_user() -> None:
    class Mine(irqbypass.plugin.DeviceGroup):
        pass

    class Theirs(irqbypass.plugin.DeviceGroup):
        pass

    seam = irqbypass.system.RealSeam()
    first = Mine.share(seam, ("fd", 5), lambda: Mine(5))
    again = Mine.share(seam, ("fd", 5), lambda: Mine(6))
    other = Theirs.share(seam, ("fd", 5), lambda: Theirs(5))  # the same key, another plugin's
    assert again is first and type(other) is Theirs and other is not first
    assert (first.users, other.users) == (2, 1)
    assert not first.unshare() and first.unshare()  # the last user closes it
    assert other.unshare()
    fresh = Mine.share(seam, ("fd", 5), lambda: Mine(7))  # a new one after the last
    assert fresh.fd == 7 and fresh.unshare()


# -- signal safety -------------------------------------------------------------------


class InterruptedDevice(LineDevice):
    """A Ctrl-C lands as the device acknowledges ``interrupt_in``: after it did it."""

    interrupt_in = ""

    def open(self) -> None:
        super().open()
        self._ack("open")

    def point(self, fd: int) -> None:
        super().point(fd)
        self._ack(self.log[-1])

    def _ack(self, what: str) -> None:
        if what == self.interrupt_in:
            signal.raise_signal(signal.SIGINT)  # handled as this call returns


class InterruptedLine(Line):
    DEVICE = InterruptedDevice
    dev: InterruptedDevice

    def __init__(self, token: irqbypass.Eventfd, step: str) -> None:
        super().__init__(token)
        self.dev.interrupt_in = step


@pytest.mark.parametrize("step", ["point(hold)", "point(token)"])
def test_a_ctrl_c_as_the_device_acks_waits_until_the_state_is_consistent(
    no_fd_leak: None, guarded_sigint: None, token: irqbypass.Eventfd, step: str
) -> None:
    line = InterruptedLine(token, step)
    if step != "point(token)":
        line.open()
    action = line.stop if step == "point(hold)" else line.open
    with pytest.raises(KeyboardInterrupt):
        action()
    # the interrupt was delivered once the producer knew where the line points
    assert line.pointed_at == line.target
    assert (line.target == token.fileno()) == (step == "point(token)")
    line.dev.interrupt_in = ""
    line.start()
    line.close()
    assert line.target is None and line.device_open_fd is None


def test_a_ctrl_c_while_the_device_opens_is_prompt_and_rolls_back(
    no_fd_leak: None, guarded_sigint: None, token: irqbypass.Eventfd
) -> None:
    """device_open is a call-out: a node's open may block, so Ctrl-C acts
    there at once, and the teardown releases what was obtained."""
    line = InterruptedLine(token, "open")
    with pytest.raises(KeyboardInterrupt):
        line.open()
    assert line.log == ["open", "close"] and line.device_open_fd is None


def test_a_ctrl_c_during_teardown_waits_for_its_end(
    no_fd_leak: None, guarded_sigint: None, token: irqbypass.Eventfd
) -> None:
    line = InterruptedLine(token, "point(-1)")
    line.open()
    with pytest.raises(KeyboardInterrupt):
        line.close()
    assert line.log[-2:] == ["point(-1)", "close"] and line.device_open_fd is None


class StalledDevice(PeerDevice):
    """A device in another process whose swap is never acknowledged: the
    operation waits through irqbypass.signalsafe.interruptible, as a peer's reply must."""

    def __init__(self, token: irqbypass.Eventfd, **facts: bool) -> None:
        super().__init__(token, **facts)
        self.waiting = irqbypass.Eventfd()  # written as the wait begins
        self.never = irqbypass.Eventfd()  # the reply that never comes

    def point(self, fd: int) -> None:
        if fd not in (-1, self.token.fileno()):  # the swap to the holding eventfd
            self.waiting.write(1)
            poller = select.poll()
            poller.register(self.never.fileno(), select.POLLIN)
            try:
                irqbypass.signalsafe.interruptible(poller.poll, 600_000)  # the hang guard
            except BaseException:
                # what the peer applied is unknown: the device is lost, not pointed
                self.owner.lose(Gone("interrupted in the middle of the swap", errno=errno.EINTR))
                raise
        super().point(fd)


class StalledPeer(Peer):
    DEVICE = StalledDevice
    dev: StalledDevice

    def release(self) -> None:
        self.dev.waiting.close()
        self.dev.never.close()


def test_a_ctrl_c_passes_a_wait_on_a_peer_inside_stop(
    no_fd_leak: None, guarded_sigint: None, token: irqbypass.Eventfd
) -> None:
    """stop() is a signal-safe section, yet a wait on another process inside
    it is no place to defer a Ctrl-C: it acts in the wait, and what the
    interrupted primitive could not tell is recorded as a loss."""
    line = StalledPeer(token)
    main = threading.main_thread().ident
    assert main is not None

    def interrupt() -> None:
        if readable(line.dev.waiting.fileno()):
            signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt)
    try:
        line.open()
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            line.stop()
        assert line.pointed_at == token.fileno()  # the template recorded no move
        assert line.problem == "interrupted in the middle of the swap"
        line.start()  # a lost device: state only
        with pytest.raises(Gone):
            line.close()
        assert line.log[-1] == "close" and "point(-1)" not in line.log
    finally:
        if interrupter.ident is not None:
            interrupter.join()
        line.release()


def readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(60_000))  # the hang guard


# -- the core's seam and the model base ---------------------------------------------------


def test_ioctl_numbers_are_encoded_as_the_kernel_does() -> None:
    # linux/vhost.h: VHOST_SET_VRING_CALL = _IOW(0xAF, 0x21, struct vhost_vring_file)
    assert irqbypass.system.ioctl_number(irqbypass.system.IOC_WRITE, 0xAF, 0x21, 8) == 0x4008AF21
    assert irqbypass.system.ioctl_number(irqbypass.system.IOC_NONE, 0xAF, 0x01, 0) == 0xAF01
    assert irqbypass.system.ioctl_number(irqbypass.system.IOC_READ, 0xAF, 0x00, 8) == 0x8008AF00


def test_the_real_seam_reports_the_kernels_errno(no_fd_leak: None) -> None:
    seam = irqbypass.system.RealSeam()
    fd = seam.open("/dev/null", os.O_RDWR)
    try:
        with pytest.raises(OSError) as err:
            seam.ioctl(fd, 0x4008AF21, bytearray(8))
        assert err.value.errno == errno.ENOTTY
    finally:
        seam.close(fd)
    with pytest.raises(FileNotFoundError):
        seam.open("/nonexistent-node", os.O_RDWR)


def test_the_model_base_records_fails_on_demand_and_holds_eventfds(
    no_fd_leak: None, token: irqbypass.Eventfd
) -> None:
    fake: irqbypass.testing.FakeDevice[str] = irqbypass.testing.FakeDevice(
        {7: "SEVEN"}, denied=("/dev/x",)
    )
    fd = fake.new_fd("/dev/y", "y")
    fake.fail(7, errno.EBUSY)
    with pytest.raises(OSError) as err:
        fake.record(fd, 7, bytearray(b"ab"))
    assert err.value.errno == errno.EBUSY
    fake.record(fd, 8, 3)
    assert fake.calls == [
        irqbypass.testing.DeviceCall(fd, 7, b"ab", "SEVEN"),
        irqbypass.testing.DeviceCall(fd, 8, 3, "0x8"),
    ]
    with pytest.raises(PermissionError):
        fake.check_access("/dev/x")
    ref = fake.take_eventfd(token.fileno())
    fake.signal(ref, 2)
    assert token.read(0) == 2
    os.close(ref)
    with pytest.raises(OSError) as err:
        fake.take_eventfd(fd)  # /dev/null is no eventfd
    assert err.value.errno == errno.EINVAL
    assert fake.drop_fd(fd) == "y" and fake.open_fds == [] and fake.closed == [fd]
