"""Long runs: I/O errors mid-run are reported and counting goes on; every
buffer a run keeps is bounded."""

from __future__ import annotations

import errno
import io
import logging
import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import irqbypass
import irqbypass_logging
import pytest
from irqbypass_logging import LoggingConsumer
from irqbypass_mock import MockProducer
from rel_support import COUNTERS

pytestmark = pytest.mark.usefixtures("no_fd_leak")

GUARD_SECONDS = 60.0


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"hang guard: {what}"
        time.sleep(0.005)


class _DiskFillsUp(io.StringIO):
    """A json_file whose disk is full after ``room`` records."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def flush(self) -> None:
        if self.getvalue().count("\n") > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["mid-run", "/dev/full"])
def test_json_file_write_error_is_reported_and_counting_goes_on(
    where: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13 item 9: a json_file write error (ENOSPC) mid-run killed the
    reader thread silently, so interrupts stopped being counted, and close()
    raised from the file before anything else was done. Now the error is logged
    once by name, every interrupt is still counted, and close() finishes, then
    says how many records were lost."""
    with irqbypass.Eventfd() as token:
        if where == "mid-run":
            consumer = LoggingConsumer(token=token, name="sink", json_file="unused")
            full = _DiskFillsUp(room=5)
            monkeypatch.setattr(consumer, "_open_json", lambda path: full)
        else:
            consumer = LoggingConsumer(token=token, name="sink", json_file="/dev/full")
        producer = MockProducer(token=token, rate=5000, count=300, name="src")
        mgr = irqbypass.Manager()
        with caplog.at_level(logging.INFO, logger="irqbypass.logging.sink"):
            consumer.open()
            try:
                mgr.register_consumer(consumer)
                producer.open()
                mgr.register_producer(producer)
                _until(lambda: producer.finished, "the mock fires its count")
                _until(lambda: consumer.stats()["delivered"] == 300, "every interrupt counted")
                mgr.unregister_producer(producer)
                mgr.unregister_consumer(consumer)
            finally:
                producer.close()
                with pytest.raises(irqbypass.DeviceError, match="records were not written") as info:
                    consumer.close()
        assert info.value.errno == errno.ENOSPC
        assert "json_file" in str(info.value) and "still counted" in str(info.value)
        stats = consumer.stats()
        assert stats["delivered"] == 300 and stats["json_lost"] > 0
        failures = [r for r in caplog.records if "writing json_file" in r.getMessage()]
        assert len(failures) == 1, "reported once, not once per record"
        assert "'sink'" in failures[0].getMessage()
        assert consumer._reader is None
        assert irqbypass.event_loop().handles(owner="logging consumer 'sink'") == []
    COUNTERS["long runs: json write-error runs"] += 1


def test_logging_consumer_keeps_a_bounded_event_history() -> None:
    """Issue 13 item 10: `events` grew by one entry per read forever (8,767/s
    measured: about 40 GiB over the 7-day maximum run). It keeps the latest
    EVENTS_KEPT now; what it uses stays flat however long the run."""
    kept = irqbypass_logging.EVENTS_KEPT
    with irqbypass.Eventfd() as token:
        consumer = LoggingConsumer(token=token, name="sink")
        for _ in range(kept):  # warm up to the bound
            consumer._event("interrupt", count=1)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(20 * kept):
                consumer._event("interrupt", count=n)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(consumer.events) == kept
        assert grown < 64 * 1024, f"{grown} bytes kept for 20,000 more events"
        consumer._event("close")
        assert consumer.events[-1] == "close"
    COUNTERS["long runs: events recorded past the bound"] += 20 * kept


def test_cli_run_with_a_failing_json_file_prints_the_summary_then_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13 item 9 at the command line: the teardown error hid the summary.
    Now the summary comes first, every interrupt in it, then the error (exit 1)."""
    from irqbypass import cli

    config = tmp_path / "full.toml"
    config.write_text(
        "[[producers]]\nname = 'src'\nkind = 'mock'\ntoken = 't'\n"
        "options = { rate = 5000, count = 200 }\n"
        "[[consumers]]\nname = 'sink'\nkind = 'logging'\ntoken = 't'\n"
        "options = { json_file = '/dev/full' }\n"
    )
    status = cli.main(["run", str(config), "--duration", "30"])
    out, err = capsys.readouterr()
    assert status == 1
    assert "summary:" in out
    summary = out[out.index("summary:") :]
    row = next(line for line in summary.splitlines() if line.strip().startswith("t "))
    assert row.split()[3:8] == ["200", "200", "-", "0", "0"], row  # fired .. lost
    assert "json_lost=" in row
    assert "records were not written to json_file '/dev/full'" in err
    assert "Traceback" not in err
