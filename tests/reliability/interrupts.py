"""A signal at every moment: deterministic Ctrl-C (or SIGTERM) injection.

CPython runs a Python signal handler only at certain points: when a function
starts, right after a call into C returns, on a backward jump, and inside a
blocking call that was interrupted. :func:`sweep` makes the signal *arrive*
before the n-th bytecode of the code under test, for every n, and lets CPython
itself decide where the handler runs, exactly as for a real signal: it trips
the interpreter's pending-signal flag with ``_thread.interrupt_main`` from a
trace function that then switches itself off (called through a property, so
the tracer's own frame never reaches a point where the handler could run).

So every point where a real signal could land is hit, and only those points;
a window found here is one a real Ctrl-C can open.
"""

from __future__ import annotations

import _thread
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any


class _Trip(int):
    """``TRIP[signum].fire`` marks the signal pending without a call opcode."""

    fire = property(_thread.interrupt_main)


def _trip(signum: int) -> Any:
    return _Trip(signum).fire


@dataclass
class SweepResult:
    """What one sweep did: how many arrival points, where the handlers ran."""

    points: int = 0
    interrupted: int = 0
    #: (file name, function, line) -> how many arrivals landed there
    landings: Counter[tuple[str, str, int]] = field(default_factory=Counter)

    @property
    def landing_points(self) -> int:
        return len(self.landings)


class _Tracer:
    def __init__(self, files: frozenset[str], target: int | None, signum: int) -> None:
        self.files = files
        self.target = target
        self.signum = signum
        self.count = 0
        self.tripped = False

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        if self.tripped:
            return None
        if frame.f_code.co_filename not in self.files:
            return self  # keep tracing calls made from here
        frame.f_trace_opcodes = True
        if event == "opcode":
            self.count += 1
            if self.count == self.target:
                self.tripped = True
                sys.settrace(None)
                frame.f_trace = None  # type: ignore[assignment]
                _Trip(self.signum).fire  # noqa: B018 - the property does it
                return None
        return self


def _landing(exc: BaseException) -> tuple[str, str, int]:
    tb = exc.__traceback__
    assert tb is not None
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return (Path(code.co_filename).name, code.co_name, tb.tb_lineno)


def count_points(action: Callable[[], object], files: Iterable[str]) -> int:
    """How many bytecodes of ``files`` one run of ``action`` executes."""
    tracer = _Tracer(frozenset(files), None, signal.SIGINT)
    sys.settrace(tracer)
    try:
        action()
    finally:
        sys.settrace(None)
    return tracer.count


def sweep(
    make: Callable[[], tuple[Callable[[], object], Callable[[BaseException | None], None]]],
    files: Iterable[str],
    *,
    signum: int = signal.SIGINT,
    stride: int = 1,
    expect: type[BaseException] = KeyboardInterrupt,
) -> SweepResult:
    """For each n, a fresh ``action, check = make()``; the signal arrives before
    the n-th bytecode in ``files`` that ``action`` runs; ``check(exc)`` then
    gets the exception it raised (None if the handler only ran after it
    returned). Must run in the main thread, where signal handlers run."""
    assert _thread.get_ident() == _thread_main(), "signal handlers run in the main thread"
    names = frozenset(str(Path(f).resolve()) for f in files) | frozenset(files)
    action, check = make()
    total = count_points(action, names)
    check(None)
    result = SweepResult(points=total)
    for target in range(1, total + 1, stride):
        action, check = make()
        tracer = _Tracer(names, target, signum)
        raised: BaseException | None = None
        try:
            sys.settrace(tracer)
            try:
                action()
            finally:
                sys.settrace(None)
            len(())  # a pending signal not handled inside the action lands here
        except expect as exc:
            raised = exc
            result.landings[_landing(exc)] += 1
        if not tracer.tripped:
            check(raised)
            continue
        if raised is not None and _landing(raised)[1] != sweep.__name__:
            result.interrupted += 1
            check(raised)
        else:
            check(None)
    return result


def _thread_main() -> int:
    import threading

    return threading.main_thread().ident or 0
