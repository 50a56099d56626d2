"""The life of tokens and fds: closed eventfds, reused numbers, fork().

The kernel reuses both eventfd-ids and fd numbers as soon as they are free, so
anything that keeps using a closed token's number may be using an unrelated
eventfd (or file) by then. These tests make the reuse happen on purpose.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable

import irqbypass
import pytest
from irqbypass_logging import LoggingConsumer
from irqbypass_mock import MockProducer
from irqbypass_posted import PostedInterruptConsumer
from rel_support import COUNTERS

pytestmark = pytest.mark.usefixtures("no_fd_leak")

GUARD_SECONDS = 60.0  # a hang guard, never a speed limit


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"hang guard: {what}"
        time.sleep(0.005)


def _recycled(old: irqbypass.Eventfd) -> irqbypass.Eventfd:
    """A new eventfd with the closed ``old``'s kernel identity (ids are reused
    lowest-first, so the next one made usually gets it; try a few)."""
    spare = []
    try:
        for _ in range(64):
            new = irqbypass.Eventfd()
            if new._identity == old._identity:
                return new
            spare.append(new)
    finally:
        for eventfd in spare:
            eventfd.close()
    pytest.skip("the kernel did not reuse the eventfd identity within 64 tries")


# -- item 5: a closed Eventfd is no longer the token it was ----------------------


def test_closed_eventfd_never_equals_the_new_one_that_reuses_its_id() -> None:
    """Issue 13 item 5: a closed Eventfd kept its identity, and the kernel hands
    the freed eventfd-id (or fd number) to the next eventfd, so the two compared
    equal and a consumer on the fresh one paired with a producer on the closed."""
    old = irqbypass.Eventfd()
    old.close()
    new = _recycled(old)
    with new:
        assert old != new and new != old
        assert old == old and hash(old) == hash(new)  # same hash is allowed, not equality
        mgr = irqbypass.Manager()
        producer = MockProducer(token=old, count=0, name="stale")
        consumer = LoggingConsumer(token=new, name="fresh")
        mgr.register_producer(producer)
        mgr.register_consumer(consumer)
        assert producer.consumer is None and consumer.producer is None, "paired across eventfds"
        assert mgr.find_producer(new) is None
        # the closed token is still found by itself, so it can be unregistered
        assert mgr.find_producer(old) is producer
        assert mgr.unregister_producer(producer) and mgr.unregister_consumer(consumer)


def test_open_duplicates_still_pair() -> None:
    """The fix keeps what identity is for: two open fds of one eventfd pair."""
    with irqbypass.Eventfd() as token, token.dup() as twin:
        if token.kernel_id is None:
            pytest.skip("no eventfd-id on this kernel: dups are different tokens")
        assert token == twin
        mgr = irqbypass.Manager()
        producer = MockProducer(token=token, count=0)
        consumer = LoggingConsumer(token=twin)
        mgr.register_producer(producer)
        mgr.register_consumer(consumer)
        assert producer.consumer is consumer
        mgr.unregister_consumer(consumer)
        mgr.unregister_producer(producer)


# -- item 6: closing a token under open endpoints ---------------------------------


def test_eventfd_close_during_a_read_never_reads_a_reused_fd_number() -> None:
    """Issue 13 item 6, in the core: `read` kept the fd number across its poll,
    so a close from another thread let it poll (and read) whatever eventfd got
    that number next, or die with EBADF. Now the number stays taken until the
    read is out, and the read raises EventfdClosedError."""
    token = irqbypass.Eventfd()
    number = token.fileno()
    outcome: list[BaseException | int] = []
    started = threading.Event()

    def reader() -> None:
        started.set()
        try:
            outcome.append(token.read(None))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    started.wait(GUARD_SECONDS)
    time.sleep(0.02)  # let it reach its poll (any moment is fine)
    token.close()
    with irqbypass.Eventfd() as other:
        assert other.fileno() != number or not thread.is_alive(), (
            "the closed number was handed out while a read still used it"
        )
        other.write(5)
        thread.join(GUARD_SECONDS)
        assert not thread.is_alive()
        assert isinstance(outcome[0], irqbypass.EventfdClosedError), outcome
        assert outcome[0].errno == 9  # EBADF
        assert other.read(0) == 5, "the closed token's reader took another eventfd's count"
    with pytest.raises(irqbypass.EventfdClosedError, match="closed"):
        token.read(0)
    with pytest.raises(ValueError):  # still a ValueError, as I/O on a closed file is
        token.write(1)


def test_reads_that_cannot_wait_race_a_close_and_never_read_a_reused_fd_number() -> None:
    """The loop readers' ``read(0)`` is done under the Eventfd's guard in one
    section (it cannot wait): a close from another thread waits for it, so
    the read never touches a number the close gave back and another eventfd took."""
    for _ in range(20):
        token = irqbypass.Eventfd()
        outcome: list[BaseException] = []

        def reader(
            token: irqbypass.Eventfd = token, outcome: list[BaseException] = outcome
        ) -> None:
            while True:
                try:
                    token.read(0)
                except BaseException as exc:
                    outcome.append(exc)
                    return

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        token.close()
        with irqbypass.Eventfd() as other:  # most likely the number just closed
            other.write(5)
            thread.join(GUARD_SECONDS)
            assert not thread.is_alive()
            assert isinstance(outcome[0], irqbypass.EventfdClosedError), outcome
            assert other.read(0) == 5, "the closed token's reader took another eventfd's count"


def test_a_read_of_the_vmms_blocking_eventfd_never_blocks_when_another_reader_wins() -> None:
    """An eventfd the VMM made without EFD_NONBLOCK (``Eventfd.from_fd``) read
    with a timeout: another reader of that eventfd (the VMM's own, or KVM's
    irqfd taking each count in the kernel) may take the count between the
    read's poll and its read(2). That read(2) then blocked until the next
    signal, past the timeout and deaf to a close. Now it is a read that cannot
    wait: the count gone, the read goes on polling, and times out with 0."""
    fd = os.eventfd(0)  # the VMM's eventfd: blocking
    other = os.dup(fd)  # another reader of the same eventfd
    token = irqbypass.Eventfd.from_fd(fd)
    poll_type = type(select.poll())
    outcome: list[BaseException | int] = []
    won: list[int] = []

    def the_other_reader_wins(frame: object, event: str, arg: object) -> None:
        # as the read's poll returns "ready", the other reader takes the count
        if (
            event == "c_return"
            and isinstance(getattr(arg, "__self__", None), poll_type)
            and getattr(arg, "__name__", "") == "poll"
            and not won
        ):
            won.append(int.from_bytes(os.read(other, 8), "little"))

    def reader() -> None:
        sys.setprofile(the_other_reader_wins)
        try:
            outcome.append(token.read(0.2))
        except BaseException as exc:
            outcome.append(exc)
        finally:
            sys.setprofile(None)

    try:
        os.write(other, (1).to_bytes(8, "little"))
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        thread.join(GUARD_SECONDS)
        blocked = thread.is_alive()
        if blocked:  # let it out: a signal it then takes
            os.write(other, (1).to_bytes(8, "little"))
            thread.join(GUARD_SECONDS)
        assert not blocked, "the read blocked in read(2) after the other reader took the count"
        assert won == [1] and outcome == [0], (won, outcome)
    finally:
        token.close()
        os.close(other)
        os.close(fd)


def test_a_read_timeout_is_checked_whatever_the_path() -> None:
    """``read(0)``'s fast path takes an int or a float as it is; everything
    else still goes through the checks (False is not 0 seconds)."""
    with irqbypass.Eventfd() as efd:
        efd.write(2)
        for bad in (False, True, float("nan"), "0"):
            with pytest.raises(irqbypass.InvalidEndpointError, match="timeout"):
                efd.read(bad)  # type: ignore[arg-type]
        assert efd.read(0) == 2, "a refused read took the count"
        efd.write(1)
        assert efd.read(-1) == 1 and efd.read(0.0) == 0


def test_a_read_timeout_no_float_holds_is_forever_or_none() -> None:
    """``read(10**400)``: a timeout beyond any clock is forever, as ``inf`` is;
    ``read(-10**400)`` does not wait, as any negative one. The check of the
    timeout (math.isnan) raised OverflowError for an int no float holds."""
    with irqbypass.Eventfd() as efd:
        efd.write(3)
        assert efd.read(10**400) == 3  # forever: the count is there at once
        assert efd.read(-(10**400)) == 0
        efd.write(1)
        assert efd.read(-(10**400)) == 1


def _pair(kind: str, token: irqbypass.Eventfd) -> tuple[irqbypass.Producer, irqbypass.Consumer]:
    if kind == "mock-eventfd->logging":
        return MockProducer(token=token, rate=2000, count=-1, name="src"), LoggingConsumer(
            token=token, name="sink"
        )
    # a producer that declines the direct path: the posted consumer relays the eventfd
    producer = MockProducer(token=token, rate=2000, count=-1, name="src")
    producer.offer_direct_path = lambda deliver: False  # type: ignore[method-assign]
    return producer, PostedInterruptConsumer(token=token, name="sink", drain=True)


@pytest.mark.parametrize("kind", ["mock-eventfd->logging", "mock-eventfd->posted-relay"])
def test_token_closed_under_an_open_pair_is_reported_and_reads_nothing_else(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13 item 6: with the token closed under an open pair, the mock's and
    logging's threads died with EBADF or spun at 100% CPU, and once the fd number
    was reused the reader consumed an unrelated eventfd's interrupts (30 of 30
    runs). Now each side reports it by name and stops; nothing reads or writes
    the reused number."""
    token = irqbypass.Eventfd()
    producer, consumer = _pair(kind, token)
    mgr = irqbypass.Manager()
    with caplog.at_level(logging.ERROR):
        consumer.open()
        producer.open()
        try:
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            _until(lambda: consumer.stats()["delivered"] > 10, "delivery starts")
            token.close()
            with irqbypass.Eventfd() as unrelated:  # most likely the same fd number
                unrelated.write(7)
                _until(lambda: producer.finished, "the producer gives up")
                _until(lambda: consumer.stats().get("token_closed") == 1, "the consumer reports")
                time.sleep(0.2)  # a spinning or misreading thread would show by now
                assert unrelated.read(0) == 7, "a closed token's reader took another eventfd's"
                readers = [  # the token's reader (a drainer reads its own notification)
                    h
                    for h in irqbypass.event_loop().handles()
                    if "'sink'" in h.owner and "drainer" not in h.owner
                ]
                assert readers == [], f"{readers} still watched after its token closed"
            mgr.unregister_producer(producer)
            mgr.unregister_consumer(consumer)
        finally:
            producer.close()
            consumer.close()
    assert producer.stats()["token_lost"] >= 1
    messages = "\n".join(caplog.messages)
    assert "mock producer 'src': its token eventfd was closed" in messages
    assert "consumer 'sink': its token eventfd was closed" in messages
    COUNTERS["tokens: closed-under-pair runs"] += 1


def test_mock_fire_on_a_closed_token_names_the_producer() -> None:
    token = irqbypass.Eventfd()
    producer = MockProducer(token=token, count=0, name="dev0")
    producer.open()
    try:
        token.close()
        with pytest.raises(irqbypass.EventfdClosedError, match="mock producer 'dev0'"):
            producer.fire()
        assert producer.stats()["token_lost"] == 1
    finally:
        producer.close()


@pytest.mark.usefixtures("guarded_sigint")
@pytest.mark.parametrize("call", ["acquire", "release"])
def test_a_ctrl_c_in_a_token_table_call_acts_as_the_call_returns(
    monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """TokenTable.acquire and release are public and signal-safe (the eventfd
    made is never orphaned); a Ctrl-C landing in one called directly, outside
    any section of irqbypass, waited, and nothing delivered it: it was lost
    unless some later irqbypass call happened to end a section in the main
    thread. Now it acts as the call returns, the table whole (the token held
    by acquire, released by release)."""
    import signal

    from irqbypass import _signals, _tokens

    real = _tokens.Eventfd
    table = irqbypass.TokenTable()

    class Landing(real):  # type: ignore[misc,valid-type]
        """An eventfd whose making, or closing, a Ctrl-C lands in."""

        def __init__(self) -> None:
            if call == "acquire":
                signal.raise_signal(signal.SIGINT)
            super().__init__()

        def close(self) -> None:
            if call == "release":
                signal.raise_signal(signal.SIGINT)
            super().close()

    monkeypatch.setattr(_tokens, "Eventfd", Landing)
    try:
        if call == "release":
            table.acquire("t")
        with pytest.raises(KeyboardInterrupt):
            getattr(table, call)("t")
        assert table.users("t") == (1 if call == "acquire" else 0)
        assert not _signals._DEFERRED, "the Ctrl-C still waits"
    finally:
        _signals._DEFERRED.clear()
        if "t" in table:
            table.release("t")
