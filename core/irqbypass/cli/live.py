"""A long run: SIGHUP (reload), SIGUSR1 (status), the control socket and
the metrics exporter; ``irqbypass status`` and ``irqbypass reload``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from .. import control
from ..errors import IrqBypassError
from ..metrics import REFRESH_SECONDS, Metrics, PairingEvents
from ..notify import notify, reloading
from ..plugins import PluginHost
from ..topology import Topology
from .files import _load
from .output import _count, _error, _say, _warn
from .summary import _print_summary, _snapshot

_log = logging.getLogger("irqbypass.cli")


class _Live:
    """What a running ``run`` answers: SIGHUP (reload the file), SIGUSR1 (a
    status snapshot on stderr) and the ``--control`` socket. The handlers only
    note the signal; the main loop acts on it at its next tick (:meth:`idle`)."""

    def __init__(
        self, topology: Topology, file: str | None, metrics: Metrics | None = None
    ) -> None:
        self.topology = topology
        self.metrics = metrics
        self._metrics_at = 0.0
        #: the file a reload reads again (None: standard input or the demo)
        self.file = file
        self.server: control.ControlServer | None = None
        self.started = time.monotonic()
        self.reloads = 0
        self.failed_reloads = 0
        #: signals noted by the handlers, not yet acted on (at most one each)
        self.pending: set[int] = set()

    @contextmanager
    def signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(signum: int, frame: object) -> None:
            self.pending.add(signum)  # nothing else: the main loop acts on it

        previous = {signum: signal.signal(signum, note) for signum in _LIVE_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def listen(self, path: str) -> None:
        self.server = control.ControlServer(path, self.answer)
        _log.info("control socket: %s", path)

    def ready(self) -> None:
        self._refresh_metrics(force=True)
        notify("READY=1", f"STATUS={self._status_line()}")

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.metrics is not None:
            self._refresh_metrics(force=True)  # the last figures, before the teardown
            self.metrics.close()
            self.metrics = None

    def _refresh_metrics(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.metrics is None or (not force and now - self._metrics_at < REFRESH_SECONDS):
            return
        self._metrics_at = now
        pairs = [row.as_dict() for row in _snapshot(self.topology, settled=False)]
        self.metrics.update(pairs, self.reloads, self.failed_reloads)

    def idle(self, seconds: float) -> None:
        """Wait up to ``seconds`` for a client, then act on what arrived."""
        self._act()
        if self.server is None:
            time.sleep(seconds)
        else:
            ready, _, _ = select.select([self.server], [], [], seconds)
            if ready:
                self.server.serve()
        self._act()
        self._refresh_metrics()

    def _act(self) -> None:
        while self.pending:
            signum = min(self.pending)
            self.pending.discard(signum)
            if signum == signal.SIGHUP:
                self.reload()
            elif signum == signal.SIGUSR1:
                self.print_status(sys.stderr)

    def answer(self, request: str) -> dict[str, Any]:
        if request == "reload":
            return self.reload()
        return self.status()

    def status(self) -> dict[str, Any]:
        topology = self.topology
        return {
            "ok": True,
            "file": topology.config.file,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started, 3),
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
            "pairs": [row.as_dict() for row in _snapshot(topology, settled=False)],
            "skipped": [{"token": t, "reason": r} for t, r in topology.skipped],
            "vetoed": [{"token": t, "reason": r} for t, r in topology.vetoed],
        }

    def print_status(self, out: TextIO) -> None:
        _print_status(self.status(), out)
        out.flush()

    def _status_line(self) -> str:
        rows = self.topology.status()
        paired = sum(1 for row in rows if row.paired)
        return f"{_count(len(rows), 'token')}, {paired} paired; {_count(self.reloads, 'reload')}"

    def reload(self) -> dict[str, Any]:
        """Read the file again and reconcile; a broken file changes nothing."""
        if self.file is None:
            message = "cannot reload: the topology was not read from a file (standard input, demo)"
            _error(message)
            return {"ok": False, "error": message, "unchanged": True}
        reloading()
        before = {p.config.name: p.config for p in self.topology.placed}
        try:
            old = self.topology.config
            new = _load(self.file)
            changes = self.topology.reconcile(new)
            self.reloads += 1
        except IrqBypassError as exc:
            self.failed_reloads += 1
            unchanged = before == {p.config.name: p.config for p in self.topology.placed}
            state = "the running topology is unchanged" if unchanged else "see above"
            message = f"reload of {self.file} failed; {state}: {exc}"
            _error(message)
            return {"ok": False, "error": message, "unchanged": unchanged}
        finally:
            notify("READY=1", f"STATUS={self._status_line()}")
        if new.plugins != old.plugins:
            _warn(f"{self.file}: [plugins] changed; the plugins are loaded at start: restart")
        _say(f"irqbypass: reloaded {self.file}: {changes.describe()}", sys.stderr)
        self._refresh_metrics(force=True)
        return {
            "ok": True,
            "added": list(changes.added),
            "removed": list(changes.removed),
            "changed": {name: list(changes.why.get(name, ())) for name in changes.changed},
        }


_LIVE_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)


def _metrics(args: argparse.Namespace, host: PluginHost) -> Metrics | None:
    """The Prometheus exporter the options ask for, counting pairings through
    a plugin on ``host`` (so only a run with metrics takes the hooked path)."""
    port, textfile = getattr(args, "metrics_port", None), getattr(args, "metrics_textfile", None)
    if port is None and textfile is None:
        return None
    events = PairingEvents()
    metrics = Metrics(events)
    host.register(events, name="irqbypass.metrics")
    try:
        if port is not None:
            metrics.serve(port, args.metrics_address)
        if textfile is not None:
            metrics.write_to(textfile)
    except BaseException:
        metrics.close()
        raise
    return metrics


def _print_status(doc: dict[str, Any], out: TextIO) -> None:
    """A status document (the control socket's, or SIGUSR1's) as text."""
    pairs = doc.get("pairs", [])
    paired = sum(1 for p in pairs if p.get("paired"))
    _say(
        f"{doc.get('file')}: running {doc.get('uptime', 0):.1f} s (pid {doc.get('pid')}), "
        f"{_count(len(pairs), 'token')}, {paired} paired, "
        f"{_count(doc.get('reloads', 0), 'reload')} ({doc.get('failed_reloads', 0)} failed)",
        out,
    )
    if pairs:
        _print_summary(pairs, out, title="")
    for skipped in doc.get("skipped", []):
        _say(f"  {skipped['token']}: skipped: {skipped['reason']}", out)
    for vetoed in doc.get("vetoed", []):
        _say(f"  {vetoed['token']}: unpaired (eventfd only): vetoed: {vetoed['reason']}", out)


def _cmd_status(args: argparse.Namespace) -> int:
    doc = control.request(args.path, "status")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_status(doc, sys.stdout)
    return 0 if doc.get("ok") else 1


def _cmd_reload(args: argparse.Namespace) -> int:
    doc = control.request(args.path, "reload")
    if args.json:
        print(json.dumps(doc, indent=2))
    elif doc.get("ok"):
        what = [
            *(f"added {n!r}" for n in doc.get("added", [])),
            *(f"removed {n!r}" for n in doc.get("removed", [])),
            *(f"changed {n!r} ({', '.join(why)})" for n, why in doc.get("changed", {}).items()),
        ]
        print(f"reloaded: {'; '.join(what) or 'nothing changed'}")
    else:
        _error(str(doc.get("error")))
    return 0 if doc.get("ok") else 1
