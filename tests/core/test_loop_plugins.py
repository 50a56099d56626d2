"""The bundled plugins on the event loop: thousands of pairs on a bounded
number of threads, and a raising callback reported against its endpoint
(stats, problem, `irqbypass run`'s summary) while the other pairs go on.

No wall-clock limit anywhere: every wait is for a condition, with a hang guard."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import irqbypass
import pytest
from irqbypass_logging import LoggingConsumer

GUARD = 600.0  # seconds: a hang guard for a loaded 2-core host, never a speed limit
PAIRS = 2000
FIRES = 5
MAX_THREADS = 16


def until(condition: Callable[[], object], what: str, sample: Callable[[], None]) -> None:
    deadline = time.monotonic() + GUARD
    while not condition():
        sample()
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.05)
    sample()


def pairs_toml(n: int, fires: int, *, rate: float = 0.0) -> str:
    out = []
    for i in range(n):
        out.append(
            f'[[producers]]\nname = "m{i}"\nkind = "mock"\ntoken = "t{i}"\n'
            f"options = {{ rate = {rate}, count = {fires} }}\n"
            f'[[consumers]]\nname = "l{i}"\nkind = "logging"\ntoken = "t{i}"\n'
            'options = { level = "DEBUG" }\n'
        )
    return "".join(out)


@pytest.mark.usefixtures("no_fd_leak")
def test_2000_pairs_deliver_everything_on_a_bounded_number_of_threads() -> None:
    config = irqbypass.parse_config(pairs_toml(PAIRS, FIRES), file="scale.toml")
    topology = irqbypass.Topology(config, irqbypass.load_plugins())
    peak = [threading.active_count()]

    def sample() -> None:
        peak[0] = max(peak[0], threading.active_count())

    consumers = []
    topology.apply()
    try:
        consumers = [p.endpoint for p in topology.placed if p.config.side == "consumer"]
        sample()
        until(lambda: topology.finished, "every mock fired its count", sample)
        until(
            lambda: all(c.stats()["delivered"] == FIRES for c in consumers),
            "every interrupt delivered",
            sample,
        )
    finally:
        topology.teardown()
    assert len(consumers) == PAIRS
    assert peak[0] <= MAX_THREADS, f"{peak[0]} threads for {PAIRS} pairs"
    assert sum(c.stats()["delivered"] for c in consumers) == PAIRS * FIRES


def test_a_raising_reader_is_reported_against_its_consumer_and_the_rest_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from irqbypass import cli

    original = LoggingConsumer._on_readable

    def fragile(self: LoggingConsumer) -> None:
        # only as the loop's callback (the reader registered): close()'s last look
        # runs the same function, and this test is about the loop's reader
        if self.name == "l0" and self._reader is not None:
            raise RuntimeError("a bug in the sink")
        original(self)

    monkeypatch.setattr(LoggingConsumer, "_on_readable", fragile)
    topo = tmp_path / "t.toml"
    topo.write_text(pairs_toml(3, 20, rate=200.0))
    assert cli.main(["run", str(topo), "--duration", "30"]) == 0
    out = capsys.readouterr().out
    problems = out.split("problems:\n", 1)[1]
    assert "consumer l0: logging consumer 'l0': its loop callback" in problems
    assert "RuntimeError: a bug in the sink" in problems
    assert "l1" not in problems and "l2" not in problems
    table = out.split("summary:\n", 1)[1].split("problems:", 1)[0]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows["t1"][3:5] == ["20", "20"] and rows["t2"][3:5] == ["20", "20"]
    assert "loop_errors=1" in " ".join(rows["t0"])


def test_a_raising_tick_finishes_the_mock_and_shows_in_its_stats() -> None:
    from irqbypass_mock import MockProducer

    class Broken(MockProducer):
        def fire(self, n: int = 1) -> None:
            raise RuntimeError("the device fell over")

    with irqbypass.Eventfd() as token:
        producer = Broken(token=token, count=10, rate=0.0, name="dev0")
        producer.open()
        try:
            deadline = time.monotonic() + GUARD
            while not producer.finished:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert producer.problem is not None and "mock producer 'dev0'" in producer.problem
            assert producer.stats()["loop_errors"] == 1
        finally:
            producer.close()
        assert producer.problem is not None, "kept after close"
