"""Prometheus metrics of a running ``irqbypass run`` (the optional extra
``irqbypass[metrics]``, which brings ``prometheus_client``).

Per pair (labels ``token``, ``producer``, ``consumer``): the counters fired,
delivered and coalesced (over every open of the entry: a reload that re-opens
an endpoint does not reset them), the gauges queued, lost and paired; for the
run: the pairings and unpairings the manager made, the reloads and the failed
ones. Served over HTTP (``--metrics-port``: one thread of ours, see
:mod:`irqbypass.exporter`, reads the last snapshot, never the topology) or
written to a file for node_exporter's textfile collector
(``--metrics-textfile``). The run's main loop takes the snapshot once a second.

The textfile's directory may be shared (``/var/lib/node_exporter/textfile``,
``/tmp``): the temporary written beside it is created exclusively (``O_EXCL``,
an unguessable name) through the checked directory's fd, never following a
link and never opening a FIFO, then renamed over the textfile. A write that
fails (a full disk) is a warning, never an exception: the run and its teardown
go on. At exit the textfile is removed (if it is still the one we wrote), so
node_exporter does not go on exporting pairs that no longer exist.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Generator, Iterator, Sequence
from typing import Any

from ._errors import IrqBypassError
from ._hookspecs import hookimpl
from ._options import show_error, show_value
from ._paths import UnsafePathError, open_at, open_directory, split_path

_log = logging.getLogger("irqbypass.metrics")

#: how often the main loop refreshes the figures
REFRESH_SECONDS = 1.0
_PAIR_LABELS = ("token", "producer", "consumer")
_COUNTERS = (
    ("fired", "interrupts the pair's producer raised"),
    ("delivered", "interrupts the pair's consumer took"),
    ("coalesced", "interrupts the consumer took but merged"),
)
_GAUGES = (
    ("queued", "signals the token's eventfd holds, taken by no one yet"),
    ("lost", "interrupts fired that no one can account for"),
)


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError:
        raise IrqBypassError(
            "metrics need prometheus_client, which is not installed: "
            "pip install 'irqbypass[metrics]' (or prometheus-client)"
        ) from None
    return prometheus_client


class PairingEvents:
    """A plugin counting the connects and disconnects the manager makes (one
    per pair: the consumer's ``add`` and ``del``, the callbacks every consumer has)."""

    def __init__(self) -> None:
        #: connects and disconnects so far, by the hook step that counts them
        self.counts = {"add": 0, "del": 0}

    def _counted(self, side: str, step: str) -> Generator[None, None, None]:
        """Around a callback: the consumer's counted once it returned."""
        result = yield
        if side == "consumer":
            self.counts[step] += 1
        return result

    @hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        return (yield from self._counted(side, "add"))

    @hookimpl(wrapper=True)
    def irqbypass_del(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        return (yield from self._counted(side, "del"))


class Metrics:
    """The collector: the figures of the last :meth:`update`, in Prometheus form."""

    def __init__(self, events: PairingEvents) -> None:
        self._client = _prometheus()
        self.events = events
        self.registry = self._client.CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        #: (pair rows, reloads, failed reloads), replaced whole by update()
        self._latest: tuple[Sequence[dict[str, Any]], int, int] = ((), 0, 0)
        self._server: Any = None
        self._textfile: tuple[int, str] | None = None
        #: the identity of the textfile we wrote last: removed at exit if still there
        self._written: tuple[int, ...] | None = None
        #: why the last textfile write failed (None: it worked), warned of once
        self.problem: str | None = None

    def update(self, pairs: Sequence[dict[str, Any]], reloads: int, failed: int) -> None:
        self._latest = (list(pairs), reloads, failed)
        if self._textfile is not None:
            self._write()

    def collect(self) -> Iterator[Any]:
        core = self._client.core
        pairs, reloads, failed = self._latest
        for table, family_of in (
            (_COUNTERS, core.CounterMetricFamily),
            (_GAUGES, core.GaugeMetricFamily),
        ):
            for name, what in table:
                family = family_of(f"irqbypass_{name}", what, labels=_PAIR_LABELS)
                for row in pairs:
                    if isinstance(row.get(name), int):
                        family.add_metric(_labels(row), row[name])
                yield family
        paired = core.GaugeMetricFamily(
            "irqbypass_paired", "1 while the pair's bypass is connected", labels=_PAIR_LABELS
        )
        for row in pairs:
            paired.add_metric(_labels(row), 1 if row.get("paired") else 0)
        yield paired
        for name, value, what in (
            ("pairings", self.events.counts["add"], "pairs the manager connected"),
            ("unpairings", self.events.counts["del"], "pairs the manager disconnected"),
            ("reloads", reloads, "reloads of the file that changed the topology as asked"),
            ("reload_failures", failed, "reloads refused or rolled back"),
        ):
            yield core.CounterMetricFamily(f"irqbypass_{name}", what, value=value)

    def serve(self, port: int, address: str) -> None:
        from ._exporter import Exporter

        self._server = Exporter(port, address, self.scrape)

    @property
    def port(self) -> int | None:
        """The port the HTTP exporter listens on (None: none)."""
        return None if self._server is None else int(self._server.port)

    def scrape(self) -> bytes:
        """The exposition text of the last figures."""
        return bytes(self._client.generate_latest(self.registry))

    def write_to(self, path: str) -> None:
        try:
            directory, name = split_path(path)
            self._textfile = (open_directory(directory), name)
        except UnsafePathError as exc:
            raise UnsafePathError(
                f"--metrics-textfile {show_value(path)}: {exc.message}", errno=exc.errno
            ) from exc
        self._write()

    def _write(self) -> None:
        """Write the file beside it, then rename: a reader sees a whole one.
        A failure is warned of (once until a write works again), never raised."""
        assert self._textfile is not None
        dirfd, name = self._textfile
        try:
            self._written = _replace(dirfd, name, self.scrape())
        except (OSError, IrqBypassError) as exc:
            problem = f"cannot write the metrics textfile {name}: {_why(exc)}"
            if problem != self.problem:
                _log.warning("irqbypass: %s; the run goes on, the file is stale", problem)
            self.problem = problem
            return
        if self.problem is not None:
            _log.warning("irqbypass: the metrics textfile %s is written again", name)
        self.problem = None

    def close(self) -> None:
        """Stop serving, and remove the textfile if it is still the one we
        wrote: also when a Ctrl-C cuts the wait for the exporter's thread
        (called again, close finishes the exporter)."""
        try:
            if self._server is not None:
                self._server.close()
                self._server = None
        finally:
            self._remove_textfile()

    def _remove_textfile(self) -> None:
        if self._textfile is not None:
            dirfd, name = self._textfile
            self._textfile = None
            with contextlib.suppress(OSError):
                info = os.lstat(name, dir_fd=dirfd)
                if _identity(info) == self._written:
                    os.unlink(name, dir_fd=dirfd)
            os.close(dirfd)


#: how many names a temporary may try before giving up (each one is random)
_ATTEMPTS = 8


def _identity(info: os.stat_result) -> tuple[int, ...]:
    """What tells our file from another put at its name (an inode number is reused)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _replace(dirfd: int, name: str, text: bytes) -> tuple[int, ...]:
    """Write ``text`` to a new temporary beside ``name`` and rename it over
    ``name``; the :func:`_identity` of what was written. The temporary is created with
    ``O_EXCL`` under a random name, so nothing planted there is ever used."""
    for _ in range(_ATTEMPTS):
        temporary = f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
        try:
            fd = open_at(
                dirfd, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644,
                what="metrics temporary file",
            )  # fmt: skip
        except FileExistsError:
            continue
        try:
            try:
                view = memoryview(text)
                while view:
                    view = view[os.write(fd, view) :]
                written = _identity(os.fstat(fd))
            finally:
                os.close(fd)
            os.replace(temporary, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=dirfd)
            raise
        return written
    raise OSError(errno.EEXIST, f"{_ATTEMPTS} random temporary names were all taken")


def _why(exc: OSError | IrqBypassError) -> str:
    if isinstance(exc, IrqBypassError):
        return show_error(exc)
    return f"{exc.strerror or show_error(exc)} (errno {exc.errno})"


def _labels(row: dict[str, Any]) -> list[str]:
    return [str(row.get("token")), str(row.get("producer") or ""), str(row.get("consumer") or "")]
