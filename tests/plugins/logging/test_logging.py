"""The logging consumer: every lifecycle step and interrupt, logged and counted."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import irqbypass
import irqbypass.plugin
import irqbypass.system
import pytest
from irqbypass_logging import LoggingConsumer, irqbypass_register_kinds

pytestmark = pytest.mark.usefixtures("no_fd_leak")


class Source(irqbypass.Producer):
    pass


def test_logs_lifecycle_and_interrupts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.jsonl"
    with irqbypass.Eventfd() as efd:
        consumer = LoggingConsumer(token=efd, name="sink", json_file=str(path))
        producer = Source(token=efd, irq=9, name="dev")
        mgr = irqbypass.Manager()
        with caplog.at_level(logging.INFO, logger="irqbypass.logging.sink"), consumer:
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            efd.write(3)
            deadline = time.monotonic() + 30
            while consumer.stats()["delivered"] < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            mgr.unregister_producer(producer)
            efd.write(2)  # delivered by the final drain on close
        assert consumer.stats()["delivered"] == 5
    records = [json.loads(line) for line in path.read_text().splitlines()]
    events = [r["event"] for r in records]
    assert events[:4] == ["open", "stop", "add_producer", "start"]
    assert events[-1] == "close" and records[-1]["delivered"] == 5
    assert [e for e in events[4:] if e in ("stop", "del_producer", "start")] == [
        "stop",
        "del_producer",
        "start",
    ]
    assert sum(r["count"] for r in records if r["event"] == "interrupt") == 5
    assert {r["producer"] for r in records if r["event"] == "add_producer"} == {"dev"}
    assert any("sink add_producer producer=dev irq=9" in m for m in caplog.messages)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_requires_an_eventfd_token() -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match=r"not an irqbypass\.Eventfd"):
        LoggingConsumer(token="x").open()


def test_bad_level_refused() -> None:
    with pytest.raises(irqbypass.InvalidEndpointError, match="unknown level"):
        LoggingConsumer(token="x", level="LOUD")
    spec = irqbypass.plugin.EndpointSpec(
        name="l", kind="logging", side="consumer", token="x", options={"level": "LOUD"}
    )
    registry = irqbypass.plugin.KindRegistry()
    irqbypass_register_kinds(irqbypass.plugin.KindRegistrar("irqbypass-logging", registry))
    with pytest.raises(irqbypass.ConfigError, match="is not one of"):
        registry.get("consumer", "logging").factory(spec)


def test_json_file_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    with irqbypass.Eventfd() as efd:
        consumer = LoggingConsumer(token=efd, json_file=str(link))
        with pytest.raises(irqbypass.system.UnsafePathError, match="symbolic link") as info:
            consumer.open()
        assert info.value.errno == errno.ELOOP
        consumer.close()  # nothing was started: a no-op
    assert target.read_text() == ""


def test_a_fifo_at_json_file_does_not_hang_the_open(tmp_path: Path) -> None:
    """Issue 20: open(2) of a FIFO for writing blocks until a reader comes; the
    open is O_NONBLOCK (ENXIO, or refused as no regular file), never a hang."""
    path = tmp_path / "events.jsonl"
    os.mkfifo(path)
    with irqbypass.Eventfd() as efd:
        consumer = LoggingConsumer(token=efd, json_file=str(path))
        with pytest.raises(irqbypass.IrqBypassError) as info:
            consumer.open()
        assert info.value.errno in (errno.ENXIO, errno.EINVAL)
        consumer.close()


def test_another_users_world_writable_file_is_refused(tmp_path: Path) -> None:
    """Issue 20: another user's 0666 file would receive root's records."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file another user owns (chown): run as root")
    import pwd

    nobody = pwd.getpwnam("nobody").pw_uid
    path = tmp_path / "events.jsonl"
    path.write_text("")
    os.chown(path, nobody, nobody)
    os.chmod(path, 0o666)
    with irqbypass.Eventfd() as efd:
        consumer = LoggingConsumer(token=efd, json_file=str(path))
        with pytest.raises(irqbypass.system.UnsafePathError, match=f"owned by uid {nobody}"):
            consumer.open()
        os.chown(path, 0, 0)  # ours now, but still writable by others
        with pytest.raises(irqbypass.system.UnsafePathError, match="writable by group or others"):
            consumer.open()
        consumer.close()
    assert path.read_text() == ""


def _has_logger(name: str) -> bool:
    return isinstance(logging.Logger.manager.loggerDict.get(name), logging.Logger)


@pytest.mark.parametrize("own_level", [None, "DEBUG"], ids=["parent-only", "own-logger"])
def test_a_logger_is_made_only_when_a_record_passes_it(
    caplog: pytest.LogCaptureFixture, own_level: str | None
) -> None:
    """Issue 31: a Logger per consumer (it stays for the process's life) cost
    8-10 us of each pair's apply, with nothing logged. One configured by name
    before the consumer exists still decides, as the consumer's own."""
    name = f"lazy-{own_level}"
    parent = logging.getLogger("irqbypass.logging")
    was = parent.level
    parent.setLevel(logging.WARNING)
    if own_level is not None:
        logging.getLogger(f"irqbypass.logging.{name}").setLevel(own_level)
    try:
        with irqbypass.Eventfd() as efd, caplog.at_level(logging.DEBUG, logger="irqbypass.x"):
            with LoggingConsumer(token=efd, name=name, level="INFO") as consumer:
                consumer._event("interrupt", count=1)
            logged = [r.getMessage() for r in caplog.records if r.name.endswith(name)]
        if own_level is None:
            assert logged == [] and not _has_logger(f"irqbypass.logging.{name}")
            parent.setLevel(logging.INFO)  # now a record passes: the logger is made for it
            consumer._event("interrupt", count=2)
            assert _has_logger(f"irqbypass.logging.{name}")
            assert [r.getMessage() for r in caplog.records if r.name.endswith(name)] == [
                f"{name} interrupt count=2"
            ]
        else:
            assert f"{name} interrupt count=1" in logged
    finally:
        parent.setLevel(was)


def test_without_its_logger_a_consumer_logs_as_that_logger_would(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before its logger is made, whether a record passes is the parent's
    (cached) say, except where they differ: logging.disable() stops it; a
    disabled parent (logging.config's disable_existing_loggers) does not,
    the consumer's own new logger is not disabled."""
    parent = logging.getLogger("irqbypass.logging")
    was = parent.disabled
    with irqbypass.Eventfd() as efd, caplog.at_level(logging.INFO, logger="irqbypass.logging"):
        consumer = LoggingConsumer(token=efd, name="cache-check", level="INFO")
        logging.disable(logging.INFO)
        try:
            consumer._event("interrupt", count=1)
        finally:
            logging.disable(logging.NOTSET)
        assert not _has_logger("irqbypass.logging.cache-check")
        parent.disabled = True
        try:
            consumer._event("interrupt", count=2)
        finally:
            parent.disabled = was
    logged = [r.getMessage() for r in caplog.records if r.name.endswith("cache-check")]
    assert logged == ["cache-check interrupt count=2"]


def test_close_counts_what_the_loop_has_not_read_yet() -> None:
    """close() takes what the eventfd still holds: with the loop busy in
    another callback, the reader never ran, and nothing is lost."""
    busy, release = threading.Event(), threading.Event()

    def block() -> None:
        busy.set()
        release.wait(60)

    with irqbypass.Eventfd() as token:
        consumer = LoggingConsumer(token=token, name="late")
        consumer.open()
        blocker = irqbypass.event_loop().call_later(0.0, block, owner="busy endpoint")
        try:
            assert busy.wait(60), "the loop runs the blocking callback"
            token.write(5)
            consumer.close()
            assert consumer.stats()["delivered"] == 5
            assert consumer.events[-2:] == ["interrupt", "close"]
        finally:
            release.set()
            blocker.cancel()


def test_the_loop_names_the_reader_by_the_consumers_name_escaped_once() -> None:
    """A name with a control character is shown as repr() shows it, as every
    other endpoint's reader is (it was escaped twice: 'a\\\\x1bb')."""
    with irqbypass.Eventfd() as token:
        consumer = LoggingConsumer(token=token, name="a\x1bb")
        consumer.open()
        try:
            owners = [h.owner for h in irqbypass.event_loop().handles()]
            assert "logging consumer 'a\\x1bb'" in owners
        finally:
            consumer.close()


@pytest.mark.usefixtures("guarded_sigint")  # as in irqbypass run, or beside a Manager
def test_ctrl_c_in_the_close_still_closes_the_file_and_keeps_the_last_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGINT handled just as the reader is cancelled (a Ctrl-C during a
    teardown): the close still takes what the eventfd holds, writes its last
    records and closes json_file, then raises the KeyboardInterrupt. Before: it
    ended there, the file stayed open for good (a second close returned at
    once) and the last interrupts and the 'close' record were never written."""
    import signal

    path = tmp_path / "events.jsonl"
    with irqbypass.Eventfd() as efd:
        consumer = LoggingConsumer(token=efd, name="sink", json_file=str(path))
        consumer.open()
        reader = consumer._reader
        assert reader is not None
        real_cancel = type(reader).cancel

        def cancel_then_interrupt(handle: irqbypass.plugin.LoopHandle) -> None:
            real_cancel(handle)
            efd.write(4)  # arrived as the reader went: the close's last look takes it
            signal.raise_signal(signal.SIGINT)  # handled as this call returns

        monkeypatch.setattr(type(reader), "cancel", cancel_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            consumer.close()
        monkeypatch.undo()
        assert consumer._json is None, "json_file was left open"
        consumer.close()  # closed already: nothing left to do
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[-1]["event"] == "close" and records[-1]["delivered"] == 4, records
    assert consumer.stats()["delivered"] == 4


def test_a_terminal_nobody_reads_never_holds_the_close() -> None:
    """json_file naming a terminal root owns (/dev/tty, a pty: a character
    device, taken as /dev/null is) whose reader stalls (Ctrl-S, a paused
    pager): close() is uninterrupted, so a blocking write there deferred
    Ctrl-C for as long as the terminal stayed paused (and a record written by
    the loop's reader held the loop's one thread). The records that do not fit
    are lost and said so; nothing waits for the terminal."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    if os.stat(path).st_uid != 0:
        pytest.skip("the pty is not root's: open_file takes only root's devices")
    outcome: list[BaseException | None] = []
    try:
        with irqbypass.Eventfd() as efd:
            consumer = LoggingConsumer(token=efd, name="sink", json_file=path)
            consumer.open()
            os.set_blocking(slave, False)  # fill what the terminal holds: nobody reads it
            with pytest.raises(BlockingIOError):
                while True:
                    os.write(slave, b"x" * 4096)

            def close() -> None:
                try:
                    consumer.close()
                    outcome.append(None)
                except BaseException as exc:
                    outcome.append(exc)

            worker = threading.Thread(target=close)
            worker.start()
            worker.join(120)  # a hang guard only: the close waits for no reader
            if worker.is_alive():
                os.set_blocking(master, False)
                while worker.is_alive():  # read the terminal, so that the close ends
                    with contextlib.suppress(BlockingIOError):
                        os.read(master, 1 << 16)
                    worker.join(0.01)
                pytest.fail("close() waited for a terminal nobody reads")
    finally:
        os.close(master)
        os.close(slave)
    error = outcome[0]
    assert isinstance(error, irqbypass.DeviceError), error
    assert error.errno == errno.EAGAIN and "were not written to json_file" in error.message
