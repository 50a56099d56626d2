"""`irqbypass run` with a SIGINT swept over every bytecode it executes in a
plugin's files (:func:`interrupts.sweep`): the scaffold of the plugins' run
sweeps. After each run: exit 130 when the signal came (0 when it did not), the
summary printed, no fd left, and whatever the caller's ``look`` finds."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType

import interrupts
import irqbypass
import irqbypass.signalsafe
import pytest
from irqbypass import cli
from irqbypass.cli import run as run_module


def open_fds() -> dict[int, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd listdir used, closed by now
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


def _landing(frame: FrameType | None, files: frozenset[str]) -> tuple[str, frozenset[str]]:
    """Where a handler ran: the innermost frame in ``files`` (else the
    innermost), and the names of every function on the stack."""
    codes = []
    while frame is not None:
        codes.append(frame.f_code)
        frame = frame.f_back
    ours = [c for c in codes if c.co_filename in files] or codes
    where = f"{Path(ours[0].co_filename).name}:{ours[0].co_name}" if ours else "?"
    return where, frozenset(c.co_name for c in codes)


def sweep_runs(
    config: Path,
    files: Iterable[str],
    *,
    stride: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    look: Callable[[], list[str]],
    no_summary_in: frozenset[str] = frozenset(),
) -> tuple[int, list[str], int]:
    """Sweep ``irqbypass run config``; returns the arrival points, the failing
    runs (what each left, and where its signal landed) and how many ran.
    ``no_summary_in``: functions in which a signal ends the run before anything
    ran (no summary then)."""
    files = [str(Path(f).resolve()) for f in files]
    names = frozenset(files)
    irqbypass.event_loop().start()  # its fds and threads live as long as the process
    # the plugins are discovered once, not per run (reading every installed
    # distribution's metadata costs about a second here, and is not what is swept)
    host = run_module.plugin_host(cli._parse(["run", "-"]))
    monkeypatch.setattr(run_module, "plugin_host", lambda args, config=None, collect=False: host)
    fds_before = open_fds()
    failures: list[str] = []
    runs = [0]
    # how many SIGINTs reached Python's handler (the guard defers one in a safe
    # section and calls this later), and where each one landed
    arrived = [0, 0]
    landed: list[tuple[str, frozenset[str]]] = []

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        arrived[0] += 1
        landed.append(_landing(frame, names))
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    irqbypass.signalsafe.guard_signals((signal.SIGINT,))

    def make() -> tuple[Callable[[], object], Callable[[BaseException | None], None]]:
        code: list[int] = []

        def action() -> None:
            code.append(cli.main(["run", str(config)]))

        def check(exc: BaseException | None) -> None:
            runs[0] += 1
            signalled, arrived[1] = arrived[0] != arrived[1], arrived[0]
            where, stack = landed[-1] if signalled else ("", frozenset())
            out = capsys.readouterr().out
            now = open_fds()
            leaked = {fd: t for fd, t in now.items() if fds_before.get(fd) != t}
            fds_before.update(leaked)  # each leak told once (closing it is not the test's to do)
            summary_due = not stack & no_summary_in
            problems = [
                *([f"raised {exc!r}"] if exc is not None else []),
                *([f"exit {code}"] if code != ([130] if signalled else [0]) else []),
                *(["no summary"] if "summary" not in out and summary_due else []),
                *([f"fds left: {leaked}"] if leaked else []),
                *look(),
            ]
            if problems:
                at = f" (landed in {where})" if signalled else ""
                failures.append(f"run {runs[0]}{at}: " + "; ".join(problems))

        return action, check

    result = interrupts.sweep(make, files, stride=stride)
    return result.points, failures, runs[0]
