"""The block load generator alone (BlkLoad), on the process's event loop, with
a stand-in for its producer: one request in flight at a time, a tick that
finds the producer busy tried again, a failure recorded and the feeding
ended. No back-end: these hold whatever qemu-storage-daemon does."""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field

import irqbypass
import pytest
from irqbypass_vhost_user import BackendGoneError, VhostUserError, VhostUserProducer
from irqbypass_vhost_user._load import BlkLoad

from .conftest import wait_for


@dataclass
class Driver:
    submitted: int = 0
    completed: int = 0
    in_flight: int = 0


@dataclass
class Target:
    """Completes every request at the next reap; records what the load did."""

    driver: Driver | None = field(default_factory=Driver)
    problem: str | None = None
    lost: list[irqbypass.IrqBypassError] = field(default_factory=list)
    most_in_flight: int = 0
    reap_raises: BaseException | None = None

    def describe(self) -> str:
        return "vhost-user producer 'vq' (a stand-in)"

    def check_alive(self) -> None:
        pass

    def submit(self, n: int = 1) -> int:
        assert self.driver is not None
        self.driver.submitted += n
        self.driver.in_flight += n
        self.most_in_flight = max(self.most_in_flight, self.driver.in_flight)
        return n

    def reap(self) -> int:
        if self.reap_raises is not None:
            raise self.reap_raises
        assert self.driver is not None
        done, self.driver.in_flight = self.driver.in_flight, 0
        self.driver.completed += done
        return done

    def lose(self, error: irqbypass.IrqBypassError) -> None:
        self.lost.append(error)
        self.problem = self.problem or error.message


def load(target: Target, lock: threading.RLock, requests: int = 5) -> BlkLoad:
    return BlkLoad(target, lock, requests=requests, rate=1000.0, delay=0.0)


def test_it_queues_its_requests_one_at_a_time_then_is_finished() -> None:
    target, lock = Target(), threading.RLock()
    feeder = load(target, lock)
    assert not feeder.finished()
    feeder.start()
    assert feeder.running
    try:
        wait_for(feeder.finished, "five completions")
    finally:
        feeder.stop()
    assert target.driver is not None
    assert (target.driver.submitted, target.driver.completed) == (5, 5)
    assert target.most_in_flight == 1 and target.lost == []


class CountingLock:
    """The producer's RLock, counting the ticks' tries."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tries = 0

    def acquire(self, blocking: bool = True) -> bool:
        self.tries += 1
        return self.lock.acquire(blocking)

    def release(self) -> None:
        self.lock.release()


def test_a_tick_that_finds_the_producer_busy_waits_for_none() -> None:
    """The producer holds its lock across a round trip to the back-end: the
    tick never waits for it (on the loop's thread), it tries at the next."""
    target, lock = Target(), CountingLock()
    feeder = BlkLoad(target, lock, requests=5, rate=1000.0, delay=0.0)  # type: ignore[arg-type]
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock.lock:
            taken.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait()
    feeder.start()
    try:
        wait_for(lambda: lock.tries >= 3, "three ticks while the producer is busy")
        assert target.driver is not None and target.driver.submitted == 0
        release.set()
        holder.join()
        wait_for(feeder.finished, "five completions once the lock is free")
    finally:
        release.set()
        feeder.stop()


@pytest.mark.parametrize(
    ("raised", "recorded"),
    [
        (BackendGoneError("the back-end went away"), "the back-end went away"),
        (RuntimeError("a bug"), "the request feeder failed: RuntimeError('a bug'); this is a bug"),
    ],
)
def test_a_failing_tick_is_recorded_and_ends_the_feeding(
    raised: BaseException, recorded: str
) -> None:
    """What goes wrong in a tick becomes the producer's problem (which run and
    stats show) and the feeding ends: never a traceback on the loop's thread."""
    target, lock = Target(reap_raises=raised), threading.RLock()
    feeder = load(target, lock)
    feeder.start()
    try:
        wait_for(lambda: target.lost != [], "the failure to be recorded")
        assert feeder.finished()  # a problem ends it
    finally:
        feeder.stop()
    (error,) = target.lost
    assert isinstance(error, VhostUserError) and recorded in error.message
    assert error.errno == (errno.EPIPE if isinstance(raised, VhostUserError) else errno.EIO)
    assert not feeder.running  # the timer was cancelled from its own tick


def test_without_requests_it_never_starts_nor_finishes() -> None:
    target = Target()
    feeder = load(target, threading.RLock(), requests=0)
    feeder.start()
    assert not feeder.running and not feeder.finished()


def test_submit_needs_an_open_producer_that_owns_its_connection() -> None:
    with irqbypass.Eventfd() as token:
        producer = VhostUserProducer(token=token, name="vq", socket="/run/vu.sock")
        with pytest.raises(VhostUserError, match="submit needs an open producer") as caught:
            producer.submit()
        assert caught.value.errno == errno.ENOTCONN
        assert producer.reap() == 0 and not producer.finished
