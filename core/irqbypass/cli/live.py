"""A long run: SIGHUP (reload), SIGUSR1 (status), the control socket and
the metrics exporter; ``irqbypass status`` and ``irqbypass reload``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from .. import _control as control
from .._config import MAX_CONFIG_BYTES, Config, parse_config
from .._errors import ConfigError, IrqBypassError
from .._metrics import REFRESH_SECONDS, Metrics, PairingEvents
from .._notify import notify, reloading
from .._options import show_exception
from .._paths import file_kind
from .._plugins import PluginHost
from .._signals import _Guard, guard_signals
from .._topology import Topology
from .output import counted, os_error, print_error, print_warning, say
from .summary import print_summary, reasons, snapshot

_log = logging.getLogger("irqbypass.cli")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: a clean teardown, then exit 128 + 15."""

    signum = signal.SIGTERM


@dataclass(eq=False)
class Live:
    """What a running ``run`` answers: SIGTERM (a clean teardown), SIGHUP
    (reload the file), SIGUSR1 (a status snapshot on stderr) and the
    ``--control`` socket. The handlers of the last two only note the signal;
    the main loop acts on it at its next tick (:meth:`idle`)."""

    topology: Topology
    #: the file a reload reads again (None: standard input or the demo)
    file: str | None
    metrics: Metrics | None = None
    #: whether SIGUSR1's table lists every pair (the run's --all, -q; None: by its size)
    every: bool | None = None
    server: control.ControlServer | None = field(default=None, init=False)
    started: float = field(default_factory=time.monotonic, init=False)
    reloads: int = field(default=0, init=False)
    failed_reloads: int = field(default=0, init=False)
    #: why the last reload failed, until one succeeds (systemd's STATUS= says it)
    reload_error: str | None = field(default=None, init=False)
    #: signals noted by the handlers, not yet acted on (at most one each)
    pending: set[int] = field(default_factory=set, init=False)
    _metrics_at: float = field(default=0.0, init=False)

    @contextmanager
    def signals(self) -> Iterator[None]:
        """Within the block, SIGTERM tears down as Ctrl-C does instead of
        killing us with devices still attached, and SIGHUP and SIGUSR1 are
        noted for the main loop (only the main thread can install handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def terminate(signum: int, frame: object) -> None:
            raise _Terminated

        def note(signum: int, frame: object) -> None:
            self.pending.add(signum)  # nothing else: the main loop acts on it

        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
        # both wait while the manager's and the topology's bookkeeping runs; SIGINT's
        # guard the manager stood there is left the manager's (gone with it, after)
        guarded = isinstance(signal.getsignal(signal.SIGINT), _Guard)
        guard_signals((signal.SIGTERM,) if guarded else (signal.SIGTERM, signal.SIGINT))
        try:
            for signum in _LIVE_SIGNALS:
                previous[signum] = signal.signal(signum, note)
            yield
        finally:
            for signum, handler in reversed(previous.items()):
                signal.signal(signum, handler)

    def listen(self, path: str) -> None:
        self.server = control.ControlServer(path, self.answer)
        _log.info("control socket: %s", path)

    def ready(self) -> None:
        if self.metrics is not None:
            self._refresh_metrics(self.metrics, force=True)
        notify("READY=1", describe=self._status_line)

    def close(self) -> None:
        """Stop serving (the socket, the exporter) and remove the textfile.
        Never raises: the teardown that follows runs whatever happens here."""
        server, self.server = self.server, None
        metrics, self.metrics = self.metrics, None
        for what, closing in (("control socket", server), ("metrics", metrics)):
            if closing is None:
                continue
            try:
                closing.close()
            except Exception as exc:
                print_warning(
                    f"closing the {what} failed: {show_exception(exc)}; tearing down anyway"
                )

    def _refresh_metrics(self, metrics: Metrics, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._metrics_at < REFRESH_SECONDS:
            return
        self._metrics_at = now
        pairs = [row.as_dict() for row in snapshot(self.topology, settled=False)]
        metrics.update(pairs, self.reloads, self.failed_reloads)

    def idle(self, seconds: float) -> None:
        """Serve the control socket's clients for ``seconds``, acting on the
        signals noted before and meanwhile. Nothing here blocks on a client:
        each is served a step at a time as it is ready (see
        :mod:`irqbypass.control`), and at least once a tick (its deadlines are
        cut there)."""
        end = time.monotonic() + seconds
        served = False
        while True:
            while self.pending:
                signum = min(self.pending)
                self.pending.discard(signum)
                if signum == signal.SIGHUP:
                    self.reload()
                elif signum == signal.SIGUSR1:
                    self.print_status(sys.stderr)
            left = end - time.monotonic()
            if served and left <= 0:
                break
            if self.server is None:
                time.sleep(max(0.0, left))
            else:
                if left > 0:
                    select.select([self.server], [], [], min(left, _DEADLINE_TICK))
                self.server.serve()
            served = True
        if self.metrics is not None:
            self._refresh_metrics(self.metrics)

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
            "pairs": [row.as_dict() for row in snapshot(topology, settled=False)],
            "skipped": reasons(topology.skipped),
            "vetoed": reasons(topology.vetoed),
        }

    def print_status(self, out: TextIO) -> None:
        _print_status(self.status(), out, self.every)

    def _status_line(self) -> str:
        rows = self.topology.status()
        paired = sum(1 for row in rows if row.paired)
        line = f"{counted(len(rows), 'token')}, {paired} paired; {counted(self.reloads, 'reload')}"
        if self.failed_reloads:
            line += f", {self.failed_reloads} failed"
        if self.reload_error is not None:
            line += f"; {self.reload_error}"
        return line

    def reload(self) -> dict[str, Any]:
        """Read the file again and reconcile; a broken file changes nothing."""
        if self.file is None:
            message = "cannot reload: the topology was not read from a file (standard input, demo)"
            print_error(message)
            return {"ok": False, "error": message, "unchanged": True}
        reloading()
        before = {p.config.name: p.config for p in self.topology.placed}
        try:
            old = self.topology.config
            new = _read_again(self.file)
            changes = self.topology.reconcile(new)
            self.reloads += 1
            self.reload_error = None
        except (IrqBypassError, OSError) as exc:  # OSError: the kernel's, out of fds say
            self.failed_reloads += 1
            unchanged = before == {p.config.name: p.config for p in self.topology.placed}
            state = "the running topology is unchanged" if unchanged else "see above"
            if isinstance(exc, IrqBypassError):
                why = str(exc)
            else:
                why = os_error(exc)
                _log.info("the reload's error", exc_info=exc)  # -v: its traceback
            message = f"reload of {self.file} failed; {state}: {why}"
            self.reload_error = message
            print_error(message)
            return {"ok": False, "error": message, "unchanged": unchanged}
        finally:
            notify("READY=1", describe=self._status_line)
        if new.plugins != old.plugins:
            print_warning(
                f"{self.file}: [plugins] changed; the plugins are loaded at start: restart"
            )
        say(f"irqbypass: reloaded {self.file}: {changes.describe()}", sys.stderr)
        if self.metrics is not None:
            self._refresh_metrics(self.metrics, force=True)
        return {
            "ok": True,
            "added": list(changes.added),
            "removed": list(changes.removed),
            "changed": {name: list(changes.why.get(name, ())) for name in changes.changed},
        }


_LIVE_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)
#: how often the control socket's deadlines are checked while idle
_DEADLINE_TICK = 0.25


def _read_again(file: str) -> Config:
    """The topology file read again for a reload, on the main loop: opened
    non-blocking (a FIFO put in its place cannot hang the open), refused
    unless a regular file (a FIFO or a device could stall the read), and read
    up to :data:`~irqbypass.config.MAX_CONFIG_BYTES`."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=file) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(
                f"not a regular file (a {file_kind(mode)}): a reload reads only a file, which "
                "cannot stall the run; put the topology back in a file",
                file=file,
            )
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=file) from exc
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"more than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB: not a configuration file; "
            "check the path",
            file=file,
        )
    return parse_config(b"".join(chunks), file=file)


def serve_metrics(args: argparse.Namespace, host: PluginHost) -> Metrics:
    """The Prometheus exporter that ``--metrics-port`` or ``--metrics-textfile``
    asks for, counting pairings through a plugin on ``host`` (so only a run with
    metrics takes the hooked path)."""
    port, textfile = args.metrics_port, args.metrics_textfile
    events = PairingEvents()
    metrics = Metrics(events)
    host.register(events, name="irqbypass.metrics")
    try:
        if port is not None:
            metrics.serve(port, args.metrics_address)
            address = args.metrics_address
            where = f"http://{f'[{address}]' if ':' in address else address}:{metrics.port}/metrics"
            if port == 0:  # any free port: this line is the only way to know which
                say(f"irqbypass: metrics on {where} (--metrics-port 0: a free port)", sys.stderr)
            else:
                _log.info("metrics: %s", where)
        if textfile is not None:
            metrics.write_to(textfile)
    except BaseException:
        metrics.close()
        raise
    return metrics


def _print_status(doc: dict[str, Any], out: TextIO, every: bool | None = None) -> None:
    """A status document (the control socket's, or SIGUSR1's) as text; its
    table lists ``every`` pair, or only those with a problem (None: every pair
    of a table of at most TABLE_ROWS, as run's tables)."""
    pairs = doc.get("pairs", [])
    paired = sum(1 for p in pairs if p.get("paired"))
    say(
        f"{doc.get('file')}: running {doc.get('uptime', 0):.1f} s (pid {doc.get('pid')}), "
        f"{counted(len(pairs), 'token')}, {paired} paired, "
        f"{counted(doc.get('reloads', 0), 'reload')} ({doc.get('failed_reloads', 0)} failed)",
        out,
    )
    if pairs:
        print_summary(pairs, out, title="", every=every)
    for skipped in doc.get("skipped", []):
        say(f"  {skipped['token']}: skipped: {skipped['reason']}", out)
    for vetoed in doc.get("vetoed", []):
        say(f"  {vetoed['token']}: unpaired (eventfd only): vetoed: {vetoed['reason']}", out)


_OPTIONAL = (type(None),)
_COUNT = (int,)
#: what a status answer holds, by field: the types each may have
_STATUS_FIELDS: dict[str, tuple[type, ...]] = {
    "ok": (bool,),
    "file": (str, *_OPTIONAL),
    "pid": _COUNT,
    "uptime": (int, float),
    "reloads": _COUNT,
    "failed_reloads": _COUNT,
    "pairs": (list,),
    "skipped": (list,),
    "vetoed": (list,),
}
_PAIR_FIELDS: dict[str, tuple[type, ...]] = {
    "token": (str,),
    "producer": (str, *_OPTIONAL),
    "producer_kind": (str, *_OPTIONAL),
    "consumer": (str, *_OPTIONAL),
    "consumer_kind": (str, *_OPTIONAL),
    "paired": (bool,),
    **{name: (int, *_OPTIONAL) for name in ("fired", "delivered", "coalesced", "queued", "lost")},
    "producer_stats": (dict,),
    "consumer_stats": (dict,),
    "problems": (list,),
}
_REASON_FIELDS: dict[str, tuple[type, ...]] = {"token": (str,), "reason": (str,)}


def _shape(doc: dict[str, Any], path: str) -> dict[str, Any]:
    """``doc`` if it is a status answer of the shape :func:`_print_status`
    reads (a successful one: every field, of its type); a clear error if not.
    The server is a process of ours, but maybe not a working irqbypass."""

    def check(row: object, fields: dict[str, tuple[type, ...]], where: str) -> None:
        if not isinstance(row, dict):
            raise IrqBypassError(f"{path}: {where} is not an object; is this an irqbypass run?")
        for name, types in fields.items():
            value = row.get(name)
            wrong = isinstance(value, bool) and bool not in types  # True is no count
            if name not in row or wrong or not isinstance(value, types):
                raise IrqBypassError(
                    f"{path}: the answer's {where}.{name} is {_shown_type(row, name)}, not "
                    f"{' or '.join(t.__name__ for t in types)}; is this an irqbypass run?"
                )

    if not doc.get("ok"):
        if not isinstance(doc.get("error"), str):
            raise IrqBypassError(f"{path}: the answer is neither a status nor an error")
        return doc
    check(doc, _STATUS_FIELDS, "status")
    for i, pair in enumerate(doc["pairs"]):
        check(pair, _PAIR_FIELDS, f"pairs[{i}]")
        if not all(isinstance(p, str) for p in pair["problems"]):
            raise IrqBypassError(f"{path}: the answer's pairs[{i}].problems are not strings")
    for key in ("skipped", "vetoed"):
        for i, row in enumerate(doc[key]):
            check(row, _REASON_FIELDS, f"{key}[{i}]")
    return doc


def _shown_type(row: dict[str, Any], name: str) -> str:
    return "missing" if name not in row else f"a {type(row[name]).__name__}"


def cmd_status(args: argparse.Namespace) -> int:
    doc = _shape(control.request(args.path, "status"), args.path)
    if args.json:
        print(json.dumps(doc, indent=2))
    elif doc.get("ok"):
        _print_status(doc, sys.stdout, args.every)
    else:
        print_error(str(doc["error"]))
    return 0 if doc.get("ok") else 1


def _reload_shape(doc: dict[str, Any], path: str) -> dict[str, Any]:
    """``doc`` if it is a reload answer :func:`cmd_reload` can show; a clear error if not."""
    if not doc.get("ok"):
        if not isinstance(doc.get("error"), str):
            raise IrqBypassError(f"{path}: the answer is neither a reload's result nor an error")
        return doc
    changed = doc.get("changed")
    lists = [doc.get("added"), doc.get("removed")]
    lists += list(changed.values()) if isinstance(changed, dict) else [None]
    if not all(isinstance(n, list) and all(isinstance(x, str) for x in n) for n in lists):
        raise IrqBypassError(
            f"{path}: the answer's added, removed and changed are not lists of names; "
            "is this an irqbypass run?"
        )
    return doc


def cmd_reload(args: argparse.Namespace) -> int:
    doc = _reload_shape(control.request(args.path, "reload"), args.path)
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
        print_error(str(doc.get("error")))
    return 0 if doc.get("ok") else 1
