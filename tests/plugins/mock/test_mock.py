"""The mock producer: counts, rates, bursts, quiesce without loss, direct path."""

from __future__ import annotations

import time

import irqbypass
import irqbypass.plugin
import irqbypass_mock
import pytest
from irqbypass_mock import MockProducer, irqbypass_register_kinds

pytestmark = pytest.mark.usefixtures("no_fd_leak")


def wait_until(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "hang guard: the condition never came true"
        time.sleep(0.005)


def drain(efd: irqbypass.Eventfd) -> int:
    total = 0
    while value := efd.read(0):
        total += value
    return total


def test_fires_its_count_in_bursts_into_the_eventfd() -> None:
    with irqbypass.Eventfd() as efd:
        mock = MockProducer(token=efd, rate=0.0, count=1003, burst=10)
        with mock:
            wait_until(lambda: mock.finished)
        assert mock.stats()["fired"] == 1003 and mock.finished
        assert drain(efd) == 1003


def test_rate_zero_fires_bursts_back_to_back_each_its_own_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As fast as it can: BURSTS_PER_TURN bursts per turn of the loop's timer,
    each burst one write of ``burst`` interrupts, as at any rate."""
    import irqbypass_mock

    writes: list[int] = []
    original = irqbypass.Eventfd.write

    def write(self: irqbypass.Eventfd, n: int = 1, **kwargs: object) -> None:
        writes.append(n)
        original(self, n, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(irqbypass.Eventfd, "write", write)
    turns = 0  # turns of the timer that fired anything
    tick = MockProducer._tick

    def counted(self: MockProducer) -> None:
        nonlocal turns
        before = len(writes)
        tick(self)
        turns += len(writes) > before

    monkeypatch.setattr(MockProducer, "_tick", counted)
    count, burst = 3 * irqbypass_mock.BURSTS_PER_TURN * 2 + 3, 2
    with irqbypass.Eventfd() as efd:
        mock = MockProducer(token=efd, rate=0.0, count=count, burst=burst)
        with mock:
            wait_until(lambda: mock.finished)
        assert drain(efd) == count
    assert writes == [burst] * (count // burst) + [count % burst]
    assert turns == 4  # 64 bursts, 64, 64, then the last 2 (one of them odd)


def test_rate_paces_the_firing() -> None:
    with irqbypass.Eventfd() as efd:
        mock = MockProducer(token=efd, rate=100.0, count=20)
        opened = time.monotonic()
        with mock:
            time.sleep(0.05)
            # read the count, then the clock: however late this thread runs, the
            # mock can never be ahead of its rate (one fire at 0, then 1 per 10 ms)
            early = mock.stats()["fired"]
            elapsed = time.monotonic() - opened
            wait_until(lambda: mock.finished)
        assert early <= 1 + 100.0 * elapsed, f"{early} fired in {elapsed:.3f} s at 100/s"
        assert drain(efd) == 20


def test_manual_mode_and_owned_eventfd() -> None:
    mock = MockProducer(token="not-an-eventfd", count=0)
    with pytest.raises(irqbypass.IrqBypassError, match="not open"):
        mock.fire()
    with mock:
        assert mock.eventfd is not None
        mock.fire(3)
        assert mock.eventfd.read(0) == 3
        assert mock.finished, "manual mode schedules nothing on its own"
    assert mock.eventfd is None


def test_stop_holds_and_start_replays() -> None:
    with irqbypass.Eventfd() as efd:
        mock = MockProducer(token=efd, count=0)
        with mock:
            mock.stop()
            mock.fire(5)
            assert efd.read(0) == 0 and mock.stats()["pending"] == 5
            mock.start()
            assert efd.read(0) == 5 and mock.stats()["pending"] == 0


@pytest.mark.parametrize("rate", [0.0, 1000.0], ids=["as-fast-as-it-can", "paced"])
def test_the_schedule_waits_while_stopped(monkeypatch: pytest.MonkeyPatch, rate: float) -> None:
    """While the manager has it stopped, the timer fires nothing (a stopped
    device raises no interrupt): a stop holds only what fire() raised, and the
    schedule goes on at start(), its count whole. Before: every tick fired into
    ``pending`` (64 bursts a turn, turns back to back at rate 0), so a stop of a
    second held billions, which start() then delivered one direct call each on
    the manager's thread: a run with a posted-interrupt consumer stayed in its
    apply for longer than 10 minutes."""
    ticks = [0]
    tick = MockProducer._tick

    def counted(self: MockProducer) -> None:
        tick(self)
        ticks[0] += 1

    monkeypatch.setattr(MockProducer, "_tick", counted)
    with irqbypass.Eventfd() as efd:
        mock = MockProducer(token=efd, rate=rate, count=-1, burst=3)
        with mock:
            wait_until(lambda: mock.stats()["fired"] > 0)
            mock.stop()
            fired, seen = mock.stats()["fired"], ticks[0]
            wait_until(lambda: ticks[0] >= seen + 3)  # a tick or two may have begun before
            during = mock.stats()
            # at most the turn that had begun as stop() came: its bursts are held
            turn = 3 * (irqbypass_mock.BURSTS_PER_TURN if rate == 0 else 1)
            assert during["pending"] <= turn, during
            held = during["pending"]
            mock.fire(5)
            assert mock.stats()["pending"] == held + 5
            mock.start()
            assert mock.stats()["pending"] == 0
            wait_until(lambda: mock.stats()["fired"] > during["fired"] + 5)
        assert drain(efd) == mock.stats()["fired"]
    assert fired <= during["fired"]


def test_rate_zero_bounds_a_turn_by_its_direct_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a consumer's direct path a burst is one call per interrupt, so at
    rate 0 a turn of the loop's timer makes at most DIRECT_CALLS_PER_TURN of
    them (a bigger burst goes on at the next turn): the turn stays bounded, as
    the loop's other fds and timers (and a stop waiting for the producer's
    lock) need. Before: 64 bursts of any size a turn (burst = 1,000,000 to a
    posted-interrupt consumer: one turn ran 60 s, a run's teardown waited 10 s)."""
    limit = irqbypass_mock.DIRECT_CALLS_PER_TURN
    calls = [0]
    per_turn: list[int] = []
    tick = MockProducer._tick

    def counted(self: MockProducer) -> None:
        before = calls[0]
        tick(self)
        per_turn.append(calls[0] - before)

    monkeypatch.setattr(MockProducer, "_tick", counted)
    count = 3 * limit + 5
    with irqbypass.Eventfd() as efd:
        mock = MockProducer(token=efd, rate=0.0, count=count, burst=2 * limit, delay=3600.0)
        with mock:
            assert mock.offer_direct_path(lambda: calls.__setitem__(0, calls[0] + 1))
            mock._timer.cancel()  # type: ignore[union-attr]  # the turns run here, in order
            while not mock.finished:
                counted(mock)
        assert efd.read(0) == 0
    assert calls[0] == count and mock.stats()["direct"] == count
    assert max(per_turn) <= limit, per_turn


def test_direct_path_replaces_the_eventfd() -> None:
    delivered: list[int] = []

    class Direct(irqbypass.Consumer):
        def add_producer(self, producer: irqbypass.Producer) -> None:
            assert producer.offer_direct_path(lambda: delivered.append(1))

        def del_producer(self, producer: irqbypass.Producer) -> None:
            producer.offer_direct_path(None)

    with irqbypass.Eventfd() as efd:
        mock, sink = MockProducer(token=efd, count=0), Direct(token=efd)
        mgr = irqbypass.Manager()
        with mock:
            mgr.register_producer(mock)
            mgr.register_consumer(sink)
            mock.fire(7)
            mgr.unregister_consumer(sink)
            mock.fire(2)
        assert len(delivered) == 7 and efd.read(0) == 2
        assert mock.stats() == {"fired": 9, "direct": 7, "eventfd": 2, "pending": 0}


def test_the_kind_s_factory_validates_options() -> None:
    def spec(**options: object) -> irqbypass.plugin.EndpointSpec:
        return irqbypass.plugin.EndpointSpec(
            name="m", kind="mock", side="producer", token="t", options=options,
            key_path="producers[0]", file="f.toml",
        )  # fmt: skip

    registry = irqbypass.plugin.KindRegistry()
    irqbypass_register_kinds(irqbypass.plugin.KindRegistrar("irqbypass-mock", registry))
    from_spec = registry.get("producer", "mock").factory
    mock = from_spec(spec(rate=5.0, count=-1, burst=2, delay=0.5))
    assert isinstance(mock, MockProducer)
    assert (mock.rate, mock.count, mock.burst, mock.delay) == (5.0, -1, 2, 0.5)
    with pytest.raises(irqbypass.ConfigError, match=r"f.toml: producers\[0\].options.count"):
        from_spec(spec(count=-2))
    with pytest.raises(irqbypass.ConfigError, match="did you mean 'burst'"):
        from_spec(spec(brust=3))
    with pytest.raises(irqbypass.InvalidEndpointError):
        MockProducer(token="t", burst=0)


def test_closed_token_refused_on_open() -> None:
    efd = irqbypass.Eventfd()
    efd.close()
    with pytest.raises(irqbypass.InvalidEndpointError, match="closed"):
        MockProducer(token=efd).open()


@pytest.mark.usefixtures("guarded_sigint")  # as in irqbypass run, or beside a Manager
def test_ctrl_c_in_the_close_still_closes_its_own_eventfd(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGINT handled just as the timer is cancelled (a Ctrl-C during a
    teardown): the close still lets its eventfd go (and closes the one it
    owns), then raises the KeyboardInterrupt. Before: it ended there, the
    eventfd it had opened stayed open for good and fire() still wrote to it."""
    import signal

    mock = MockProducer(token="not-an-eventfd", rate=1.0, count=-1, delay=3600.0)
    mock.open()
    timer = mock._timer
    assert timer is not None and mock.eventfd is not None
    real_cancel = type(timer).cancel

    def cancel_then_interrupt(handle: irqbypass.plugin.LoopHandle) -> None:
        real_cancel(handle)
        signal.raise_signal(signal.SIGINT)  # handled as this call returns

    monkeypatch.setattr(type(timer), "cancel", cancel_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        mock.close()
    monkeypatch.undo()
    assert mock.eventfd is None, "the eventfd it owns was left open"
    with pytest.raises(irqbypass.IrqBypassError, match="not open"):
        mock.fire()
