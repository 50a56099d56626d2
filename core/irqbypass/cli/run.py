"""``irqbypass run`` and ``irqbypass demo``: apply, wait, tear down, summarize."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from .._config import Config, parse_config
from .._errors import IrqBypassError
from .._notify import notify
from .._signals import interruptible
from .._topology import Placed, Topology
from . import bundled
from .check import pairing_problems, raise_every_error
from .files import STDIN, load_file
from .hosting import plugin_host, print_header, table_errors
from .live import Live, serve_metrics
from .output import (
    counted,
    draw_progress,
    end_progress,
    fresh_line,
    is_tty,
    outliving,
    print_error,
    print_notes,
    print_warning,
    say,
    serving,
    stop_signal,
)
from .summary import print_pairs, print_summary, progress_line, reasons, snapshot

_log = logging.getLogger("irqbypass.cli")


#: the bundled demo's bound when its file had none (a file's run has none: until a signal)
DEFAULT_DURATION = 10.0
#: after every producer finished, how long stragglers may still be delivered
SETTLE_SECONDS = 1.0
TICK_SECONDS = 0.1
#: how long a coalescing consumer's counts must stand still to count as settled
STILL_SECONDS = 0.3


def cmd_run(
    args: argparse.Namespace, config: Config | None = None, default: float | None = None
) -> int:
    """``irqbypass run FILE`` (``demo`` gives its ``config`` and ``default``
    duration). What ``check`` warns of is told before anything is opened (every
    error of the plugin tables first, when there is one); with ``--strict`` a
    warning stops the run."""
    config = load_file(args.file) if config is None else config
    host = plugin_host(args, config, collect=True)
    if getattr(args, "table_errors", None):  # nothing is opened: every error, as check says
        raise_every_error(config, host, table_errors(args))
    warnings = pairing_problems(config, host)
    for warning in warnings:
        print_warning(warning)
    if warnings and args.strict:
        raise IrqBypassError(
            f"{config.file}: {counted(len(warnings), 'warning')} (--strict); nothing was opened"
        )
    duration = args.duration or config.duration or default
    out = sys.stdout
    metrics = None
    if args.metrics_port is not None or args.metrics_textfile is not None:
        metrics = serve_metrics(args, host)
    try:
        topology = Topology(config, host)
        file = getattr(args, "file", None)
        live = Live(topology, file if file not in (None, STDIN) else None, metrics, args.every)
        with outliving():  # a reader gone (`| head`) ends no run: its lines are dropped
            with live.signals():  # before the header: its write may wait for a reader
                if not (args.json or args.quiet):
                    print_header(host, out)
                ended = _session(args, topology, live, duration, out)
            return _report(args, topology, warnings, ended, out)
    finally:  # the session closed them; a stop before it (in the header's write) did not
        if metrics is not None:
            metrics.close()


def cmd_demo(args: argparse.Namespace) -> int:
    config = parse_config(bundled.demo_text(), file=bundled.DEMO)
    bundled.check_demo(config)  # the core alone: one line naming what to install
    args.control = args.metrics_port = args.metrics_textfile = None
    return cmd_run(args, config, DEFAULT_DURATION)


@dataclass
class _Ended:
    """How a run's session ended: what its summary shows, read before teardown."""

    summary: list[dict[str, Any]]
    #: the signal that stopped the run (None: it ran its course)
    stopped_by: int | None
    #: the endpoints, kept: teardown forgets them, and their faults
    placed: list[Placed]
    vetoed: list[tuple[str, str]]
    teardown_error: IrqBypassError | None


def _session(
    args: argparse.Namespace,
    topology: Topology,
    live: Live,
    duration: float | None,
    out: TextIO,
) -> _Ended:
    """Apply, run until done or stopped, read the summary, tear down: the
    teardown runs on every path, and the summary is read before it."""
    try:
        stopped_by = _serve(args, topology, live, duration, out)
        summary, interrupted = _summary(topology)
        stopped_by = stopped_by or interrupted
        placed = topology.placed  # teardown forgets them, and their faults
        vetoed = topology.vetoed
    except BaseException:
        try:
            live.close()
        finally:  # a signal landing in the close still tears down
            _report_teardown(topology)
        raise
    # a teardown error is reported after the summary, never instead of it
    closed_by = _stop_serving(live)  # (not after `or`: it closes whatever stopped the run)
    stopped_by = stopped_by or closed_by
    _log.info("tearing down %s", topology.config.file)
    teardown_error, teardown_signal = _teardown(topology)
    if stopped_by is None:
        stopped_by = teardown_signal
    return _Ended(summary, stopped_by, placed, vetoed, teardown_error)


def _stop_serving(live: Live) -> int | None:
    """Tell systemd the run stops, and close the live surfaces; a signal that
    lands here (Ctrl-C held down: one after another) has the close go on where
    it was cut, so the teardown that follows runs anyway. The first such
    signal, or None."""
    signum: int | None = None
    told = False
    while True:  # ends: each close forgets a surface before closing it
        try:
            if not told:
                told = True
                notify("STOPPING=1")
            live.close()
            return signum
        except KeyboardInterrupt as exc:
            signum = signum or stop_signal(exc)


def _serve(
    args: argparse.Namespace,
    topology: Topology,
    live: Live,
    duration: float | None,
    out: TextIO,
) -> int | None:
    """Listen (``--control``), apply, show the pairs and run until done; the
    signal that stopped it, or None. A signal that stops the apply has it undo
    what it had done: nothing ran."""
    if args.control:
        live.listen(args.control)
    applying: _StepProgress | None = None  # the progress, once made
    try:
        with _step_progress("applying") as applying:
            topology.apply(progress=None if applying is None else applying.applying)
    except KeyboardInterrupt as exc:
        stopped_by: int = stop_signal(exc)
        if applying is None or not applying.shown:  # a progress line is cleared, ^C echo and all
            fresh_line(stopped_by)
        print_notes(exc)
        return stopped_by
    if _log.isEnabledFor(logging.INFO):  # -v: each endpoint's label, made only then
        for placed in topology.placed:
            state = "opened, registered" if placed.registered else "opened, not registered"
            _log.info("%s: %s", placed.label, state)
    try:
        # one reading of the pairs (no count: none is read) serves the table and the wait
        rows = topology.status(settled=False)
        if not args.json:
            print_pairs(topology, rows, out, args.every)
        live.ready()
        producers = [row.producer for row in rows if row.producer is not None]
        with serving():  # the run's main loop: no write of it waits long for a reader
            _wait(topology, producers, duration, sys.stderr, live)
    except KeyboardInterrupt as exc:
        stopped_by = stop_signal(exc)
        # the wait's progress line ends its line itself, after the ^C echo
        if not (is_tty(sys.stderr) and _waits(topology, live)):
            fresh_line(stopped_by)
        return stopped_by
    return None


def _report(
    args: argparse.Namespace,
    topology: Topology,
    warnings: list[str],
    ended: _Ended,
    out: TextIO,
) -> int:
    """Print the summary (or the JSON document), the faults and the errors;
    the exit status."""
    faults = [
        fault + ("; its figures are shown as -" if call == "stats()" else "")
        for one in ended.placed
        for call, fault in one.faults.items()
    ]
    stopped_by = ended.stopped_by
    errors = [] if ended.teardown_error is None else [str(ended.teardown_error)]
    if stopped_by is not None:
        errors.append(f"stopped by {signal.Signals(stopped_by).name}; everything was torn down")
    status = 128 + stopped_by if stopped_by is not None else 1 if errors else 0
    if args.json:
        doc = {
            "ok": status == 0,  # as check, status, reload and the error objects have it
            "exit_status": status,
            "file": topology.config.file,
            "interrupted": stopped_by is not None,
            "pairs": ended.summary,
            "skipped": reasons(topology.skipped),
            "vetoed": reasons(ended.vetoed),
            "warnings": [*warnings, *faults],
            "error": errors[0] if errors else None,
            "errors": errors,
        }
        say(json.dumps(doc, indent=2), out)
    else:
        print_summary(ended.summary, out, every=args.every)
    for fault in faults:
        print_warning(fault)
    for error in errors:
        print_error(error)
    return status


def _summary(topology: Topology) -> tuple[list[dict[str, Any]], int | None]:
    """The summary's rows, and the signal that landed while they were read (a
    plugin's ``stats()`` runs here): a Ctrl-C then is noted and the rows are
    read again, so the run still ends with its summary (three tries: a
    ``stats()`` that hangs cannot keep the run from its teardown)."""
    signum: int | None = None
    for _attempt in range(3):
        try:
            return [row.as_dict() for row in snapshot(topology)], signum
        except KeyboardInterrupt as exc:
            signum = signum or stop_signal(exc)
    return [], signum


def _teardown(
    topology: Topology, *, progress: bool = True
) -> tuple[IrqBypassError | None, int | None]:
    """Tear down; (the error if a step failed, the signal if one interrupted a
    step). The topology finishes its teardown either way, so a second Ctrl-C
    loses neither the summary nor the "torn down" message. ``progress``: show
    ``tearing down: N left`` on a terminal."""
    try:
        with _step_progress("tearing down", progress) as shown:
            topology.teardown(progress=None if shown is None else shown.tearing_down)
    except IrqBypassError as exc:
        return exc, None
    except KeyboardInterrupt as exc:
        signum = stop_signal(exc)
        fresh_line(signum)
        print_notes(exc)
        return None, signum
    return None, None


def _report_teardown(topology: Topology) -> None:
    """Tear down while another error is on its way out: say what failed."""
    error, _ = _teardown(topology)
    if error is not None:
        print_error(str(error))


@contextmanager
def _step_progress(what: str, wanted: bool = True) -> Iterator[_StepProgress | None]:
    """On a terminal (and if ``wanted``), the progress of the block's step,
    its line cleared at the end; None on a pipe: apply and teardown then get
    no progress callback at all."""
    if not (wanted and is_tty(sys.stderr)):
        yield None
        return
    progress = _StepProgress(sys.stderr, what)
    try:
        yield progress
    finally:
        if progress.shown:
            end_progress(progress.stream, keep=False)


@dataclass
class _StepProgress:
    """``applying 4120/10000`` / ``tearing down: 3100 left`` on a terminal,
    redrawn at most every TICK_SECONDS (see :func:`_step_progress`)."""

    stream: TextIO
    what: str
    shown: bool = False
    #: nothing is drawn in the first TICK_SECONDS: a small topology shows none
    last: float = field(default_factory=time.monotonic)

    def applying(self, done: int, total: int) -> None:
        self._show(f"{self.what} {done}/{total}", done == total)

    def tearing_down(self, left: int) -> None:
        self._show(f"{self.what}: {left} left", left == 0)

    def _show(self, line: str, last: bool) -> None:
        now = time.monotonic()
        if now - self.last < TICK_SECONDS and not (last and self.shown):
            return
        self.last, self.shown = now, True
        draw_progress(line, self.stream)


def _wait(
    topology: Topology,
    producers: list[Placed],
    duration: float | None,
    progress: TextIO,
    service: Live,
) -> None:
    """Run until ``duration`` passes (None: until a signal), or the topology
    finished and every interrupt is accounted for (or had SETTLE_SECONDS to
    be); with no producer (``producers``: as applied) there is nothing to wait
    for. With a control socket a reload may bring producers, so only the
    duration or a signal ends the run. Each tick, ``service`` acts on the
    signals and the control requests that arrived."""
    listening = service.server is not None  # a control socket: a reload may bring work
    if not (producers or listening):  # as _waits says
        _log.info("no producer: nothing to wait for")
        return
    live = is_tty(progress)
    start = time.monotonic()
    finished_at: float | None = None
    previous: list[tuple[int | None, int | None, int | None]] | None = None
    still_since = 0.0
    reloads = (0, 0)
    try:
        while True:
            now = time.monotonic()
            if (service.reloads, service.failed_reloads) != reloads:  # other producers now
                reloads = (service.reloads, service.failed_reloads)
                producers = [p for p in topology.placed if p.config.side == "producer"]
            finished = not listening and topology.finished
            # the rows cost O(pairs): read only for the progress line or once finished
            rows = snapshot(topology, settled=False) if live or finished else []
            if live:
                done = sum(1 for p in producers if p.finished)
                draw_progress(progress_line(rows, now - start, done, len(producers)), progress)
            if duration is not None and now - start >= duration:
                break
            if finished:
                finished_at = finished_at if finished_at is not None else now
                figures = [(r.fired, r.delivered, r.queued) for r in rows]
                if figures != previous:
                    previous, still_since = figures, now
                # a guest's vCPU may lag behind the kernel's injections: settled is
                # nothing moving for STILL_SECONDS, well under SETTLE_SECONDS
                still = now - still_since >= STILL_SECONDS
                accounted = all(
                    r.shortfall in (None, 0) or (r.coalesces and still and not r.queued)
                    for r in rows
                )
                if accounted or now - finished_at >= SETTLE_SECONDS:
                    break
            else:
                finished_at = None  # a reload brought work again
            # a tick's reading may take at most a fifth of the time (10,000 pairs)
            pause = max(TICK_SECONDS, 4 * (time.monotonic() - now))
            # a signal that waited (in a finalizer, say) acts as the wait begins
            interruptible(service.idle, pause)
    finally:
        if live:
            end_progress(progress, keep=True)


def _waits(topology: Topology, service: Live) -> bool:
    """Whether :func:`_wait` waits (and, on a terminal, draws its progress line):
    some producer fires, or a control socket may bring some."""
    return service.server is not None or any(p.config.side == "producer" for p in topology.placed)
