"""What the commands write: one line per write, tables that fit a terminal,
warnings and errors on standard error, and the one progress line of a
terminal. Every line goes through :func:`say`, which clears a progress line
being shown first, so a message during a run never starts in the middle of it
(as pip and pytest do).

A reader that stops reading (a pipe into a paused pager, a terminal on
Ctrl-S) holds no loop of ours for long: the event loop's threads never wait
for it, the main thread waits at most :data:`SERVING_WAIT` for it while it
serves a run (:func:`serving`; once: until the reader reads again its later
lines wait no more), and once a signal has stopped the command
(:func:`stop_signal`) at most :data:`LEAVING_SECONDS` in all, so the process
still exits. A line not written in time is dropped, and the count of them is
told on standard error by the main thread's next line."""

from __future__ import annotations

import errno
import logging
import math
import os
import resource
import select
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TextIO

#: once a signal stopped the command, how long its last lines may wait, in all,
#: for a reader that does not read
LEAVING_SECONDS = 0.5
#: while the main thread serves a run, how long one write may wait for its reader
SERVING_WAIT = 0.5
#: how long another thread (the event loop's) waits for the screen's lock
_OTHER_THREAD_WAIT = 0.1
#: bytes per write: a pipe found writable takes this much without blocking
_CHUNK = 512


def stop_signal(exc: KeyboardInterrupt) -> int:
    """The signal that stopped the command (SIGINT unless the interrupt names
    another); from now on the main thread's writes wait for their reader at
    most until :data:`LEAVING_SECONDS` from the first stop."""
    if _SCREEN.leave_by is None:
        _SCREEN.leave_by = time.monotonic() + LEAVING_SECONDS
    signum: int = getattr(exc, "signum", signal.SIGINT)
    return signum


@contextmanager
def serving() -> Iterator[None]:
    """The main thread serves a run meanwhile (the signals, the control socket,
    the progress line): no write of it waits for a reader longer than
    :data:`SERVING_WAIT`."""
    _SCREEN.serving = True
    try:
        yield
    finally:
        _SCREEN.serving = False


@contextmanager
def outliving() -> Iterator[None]:
    """A run outlives the readers of its output (``| head`` that exits, a log
    reader that dies): within the block, a line whose reader has gone is
    dropped and counted as one not read, as a stalled reader's, instead of
    ending the run at once with the BrokenPipeError that ends a one-shot
    command."""
    _SCREEN.outliving = True
    try:
        yield
    finally:
        _SCREEN.outliving = False


def print_notes(exc: BaseException) -> None:
    """What an interrupt let through says it interrupted, as error lines (a note
    starts with "irqbypass: " for a traceback; the line has that prefix already)."""
    for note in getattr(exc, "__notes__", ()):
        print_error(str(note).removeprefix("irqbypass: "))


def fresh_line(signum: int) -> None:
    """After Ctrl-C on a terminal, which echoed ``^C`` where the cursor was:
    start the message on a line of its own."""
    if signum == signal.SIGINT and is_tty(sys.stderr):
        with _SCREEN.lock:
            _SCREEN.progress = None  # the newline ends a progress line being shown
            _SCREEN.write(sys.stderr, "\n")


def os_error(exc: OSError) -> str:
    """An OSError of the kernel's (one that escaped every layer, or ended a
    reload: out of fds), as a message that says what to do."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (
            f"out of file descriptors ({errno.errorcode[exc.errno]}: {exc.strerror}; "
            f"`ulimit -n` is {soft}): each token needs an eventfd and each endpoint what its "
            "device needs; raise the limit (`ulimit -n 4096`) or split the topology"
        )
    what = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{what}; run with -v for the traceback"


def reader_gone(stream: TextIO) -> None:
    """The reader of ``stream`` has gone: its fd writes to /dev/null from now
    on, so what print() left in its buffer, and Python's flush at exit, raise
    no BrokenPipeError."""
    fd = stream.fileno()
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.dup2(devnull, fd, inheritable=fd <= 2)
    finally:
        os.close(devnull)
    with suppress(OSError, ValueError):
        stream.flush()


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def screen_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


def _fit(line: str, width: int) -> str:
    """Cut to one line of the terminal: a full last column would wrap it."""
    room = max(10, width - 1)
    return line if len(line) <= room else line[: room - 3] + "..."


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def number(value: int | None) -> str:
    return "-" if value is None else str(value)


class _Screen:
    """The progress line a terminal shows now, if any, the lock every write
    takes (a log line comes from the event loop's thread too), and the writes
    themselves, which wait for a stalled reader only as long as the module doc
    says."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        #: the terminal stream a progress line is drawn on, until cleared or ended
        self.progress: TextIO | None = None
        #: when the main thread stops waiting for readers (set by stop_signal)
        self.leave_by: float | None = None
        #: whether the main thread serves a run now (see serving)
        self.serving = False
        #: lines dropped since the last told (their reader was not reading), under a
        #: lock of its own: a thread that timed out on the screen's lock counts too
        self.dropped = 0
        self._counting = threading.Lock()
        #: whether a reader gone drops the lines instead of ending the command (outliving)
        self.outliving = False
        #: the fds whose reader has gone (within outliving), now writing to /dev/null
        self.gone: set[int] = set()
        #: the fds whose reader the main thread waited for in vain, until it reads again:
        #: a status of many lines costs one wait, not one per line
        self.stalled: set[int] = set()

    def drop(self, lines: int = 1) -> None:
        """Count ``lines`` dropped, to be told by the main thread's next line."""
        with self._counting:
            self.dropped += lines

    def take_dropped(self) -> int:
        """The lines dropped since the last told, now to be told."""
        with self._counting:
            dropped, self.dropped = self.dropped, 0
        return dropped

    def write(self, stream: TextIO, text: str) -> bool:
        """Write ``text`` whole, or as much as its reader takes in time (the
        rest is dropped); False if some was dropped. A stream with no file
        descriptor (a StringIO) is written as it is. Within :func:`outliving`,
        a reader gone drops this line and every later one (see :meth:`_gone`)."""
        if stream is None:  # the fd was closed when Python started (`>&-`): as print() does
            return True
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            stream.write(text)
            stream.flush()
            return True
        if fd in self.gone:
            return False
        try:
            return self._write(stream, fd, text)
        except BrokenPipeError:
            if not self.outliving:
                raise  # a command's own end: main's "the reader went away"
            self._gone(stream, fd)
            return False

    def _gone(self, stream: TextIO, fd: int) -> None:
        """The reader of ``fd`` has gone: the fd writes to /dev/null from now on
        (what print() left in the stream's buffer, and Python's flush at exit,
        go there), and the lines meant for it are dropped and counted."""
        self.gone.add(fd)
        reader_gone(stream)

    def _write(self, stream: TextIO, fd: int, text: str) -> bool:
        """:meth:`write` on a stream with a file descriptor."""
        stream.flush()  # what an earlier print() left in its buffer goes first
        # a view: each chunk written moves it on instead of copying what is left
        # (a copy per chunk made a 5 MB --json summary quadratic)
        # a strict stream (a UTF-8 locale) shows what it cannot encode escaped: a file
        # name of another encoding (a lone surrogate from argv) is no traceback
        errors = stream.errors if stream.errors not in (None, "strict") else "backslashreplace"
        data = memoryview(text.encode(stream.encoding or "utf-8", errors))
        main = threading.current_thread() is threading.main_thread()
        end = self._wait_until(fd, main)
        writable = select.poll()
        writable.register(fd, select.POLLOUT)
        while data:
            left = None if end is None else max(0, math.ceil((end - time.monotonic()) * 1000))
            if not writable.poll(left):
                if main:  # the main thread waited its while in vain: not again for this fd
                    self.stalled.add(fd)
                return False
            data = data[os.write(fd, data[:_CHUNK]) :]
        self.stalled.discard(fd)
        return True

    def _wait_until(self, fd: int, main: bool) -> float | None:
        """How long a write may wait for its reader: the event loop's threads
        not at all; the main thread until it leaves, or a while if it serves a
        run (once: not at all while its reader has not read since, ``stalled``),
        else as long as it takes (a Ctrl-C ends that wait too)."""
        now = time.monotonic()
        if not main:
            return now
        if self.leave_by is None and not self.serving:
            return None
        if fd in self.stalled:
            return now
        return self.leave_by if self.leave_by is not None else now + SERVING_WAIT


#: the one screen of the process: every line of the CLI goes through it
_SCREEN = _Screen()


#: a table of at most this many pairs is printed whole (it fits a terminal);
#: a longer one as its totals and the pairs with a problem, unless asked
TABLE_ROWS = 20


def lists_every(every: bool | None, rows: int) -> bool:
    """Whether a table of ``rows`` lists every one: as the user asked (``--all``,
    ``-q``), else (None) when it has at most TABLE_ROWS."""
    return rows <= TABLE_ROWS if every is None else every


def print_table(
    header: Sequence[str],
    rows: Sequence[tuple[Sequence[str], bool]],
    out: TextIO,
    every: bool | None = True,
    width: int | None = None,
) -> None:
    """A table of ``(cells, has a problem)`` rows: all of them, or (``every``
    false) only those with a problem, then how many were left out (None: all
    of a table of at most TABLE_ROWS). Columns are padded to their widest cell.
    On a terminal (or given ``width``), a last column too long for it (a skip
    reason of 250 characters) wraps at word boundaries under itself, instead of
    the terminal breaking it anywhere; piped output keeps one line per row, for
    scripts and diffs. Columns are two spaces apart, or one where the
    columns before the last would not fit the terminal with two (the
    demo's summary on 80 columns: its header's LOST wrapped)."""
    every = lists_every(every, len(rows))
    shown = [cells for cells, problem in rows if every or problem]
    widths = [max(len(r[i]) for r in [header, *shown]) for i in range(len(header))]
    if width is None and is_tty(out):
        width = screen_width(out)
    gap = 2
    if width is not None and sum(w + gap for w in widths[:-1]) > width - 1:
        gap = 1
    indent = 2 + sum(w + gap for w in widths[:-1])
    room = (width - 1 - indent) if width is not None else 0
    for r in [header, *shown] if shown else []:  # no row shown: no header either
        head = "  " + "".join(c.ljust(w + gap) for c, w in zip(r[:-1], widths, strict=False))
        last = r[-1]
        if width is None or len(last) <= room:
            say((head + last).rstrip(), out)
        elif room >= 20:  # wrapped under its column
            lines = textwrap.wrap(last, room, break_on_hyphens=False) or [last]
            say("\n".join([head + lines[0], *(" " * indent + ln for ln in lines[1:])]), out)
        else:  # no room left at the right: on lines of its own, indented
            lines = textwrap.wrap(last, max(20, width - 7), break_on_hyphens=False) or [last]
            say("\n".join([head.rstrip(), *("      " + ln for ln in lines)]), out)
    left = len(rows) - len(shown)
    if left:
        say(f"  ({counted(left, 'pair')} without a problem not listed: --all lists them)", out)


def say(text: str, out: TextIO) -> None:
    """Print one line in one write, after clearing a progress line on the same
    terminal: print() writes the text and its newline apart, and unbuffered
    (PYTHONUNBUFFERED) a log line of the loop thread could land between them, on
    the same stream or, with 2>&1, the other. Another thread's line is dropped
    (and counted) rather than wait long for the main thread's write."""
    if threading.current_thread() is threading.main_thread():
        with _SCREEN.lock:
            _say(text, out, main=True)
    elif _SCREEN.lock.acquire(timeout=_OTHER_THREAD_WAIT):
        try:  # (signals run their handlers in the main thread: none lands in between)
            _say(text, out, main=False)
        finally:
            _SCREEN.lock.release()
    else:
        _SCREEN.drop()


def _say(text: str, out: TextIO, main: bool) -> None:
    """:func:`say`'s line, the screen's lock held."""
    # the progress line is cleared before a line on its stream or on another
    # terminal (the same screen, as a rule); it is drawn again at its next tick
    stream = _SCREEN.progress
    if stream is not None and (out is stream or is_tty(out)):
        _SCREEN.progress = None
        _SCREEN.write(stream, "\r\x1b[K")
    if main and (dropped := _SCREEN.take_dropped()):
        notice = (
            f"irqbypass: warning: {counted(dropped, 'line')} of output not written: "
            "nothing was reading it\n"
        )
        if not _SCREEN.write(sys.stderr, notice):
            _SCREEN.drop(dropped)  # still to be told
    if not _SCREEN.write(out, text + "\n"):
        _SCREEN.drop()


def draw_progress(line: str, stream: TextIO) -> None:
    """Draw (or redraw) the progress line, cut to the terminal's width."""
    with _SCREEN.lock:
        _SCREEN.write(stream, f"\r{_fit(line, screen_width(stream))}\x1b[K")
        _SCREEN.progress = stream


def end_progress(stream: TextIO, keep: bool) -> None:
    """The progress on ``stream`` is over: end its line with a newline
    (keeping its last figures, or after a ``^C`` the terminal echoed on a
    line a message cleared), or clear it."""
    with _SCREEN.lock:
        _SCREEN.progress = None
        _SCREEN.write(stream, "\n" if keep else "\r\x1b[K")


class LogLines(logging.Handler):
    """Log records as lines of the CLI's standard error, through :func:`say`
    (a record from the event loop's thread clears the progress line too)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            say(self.format(record), sys.stderr)
        except Exception:
            self.handleError(record)


def print_warning(message: str) -> None:
    say(on_screen(f"irqbypass: warning: {message}", sys.stderr), sys.stderr)


def print_error(message: str) -> None:
    say(on_screen(f"irqbypass: error: {message}", sys.stderr), sys.stderr)


def on_screen(text: str, stream: TextIO) -> str:
    """On a terminal, a message fitted to it (:func:`fit_to_screen`: the
    terminal broke it anywhere, "No such file or dire" / "ctory"); piped, one
    line as it is, for scripts."""
    return fit_to_screen(text, stream) if is_tty(stream) else text


def fit_to_screen(text: str, stream: TextIO, indent: str = "  ") -> str:
    """Each line of ``text`` filled to the terminal's width less one, broken at
    spaces only (a path longer than the width stays whole), later lines
    indented by ``indent``: how every long line this CLI prints on a terminal
    wraps."""
    width = max(40, screen_width(stream) - 1)
    return "\n".join(
        textwrap.fill(
            line,
            width,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
        for line in text.split("\n")
    )
