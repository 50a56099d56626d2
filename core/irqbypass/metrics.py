"""Prometheus metrics of a running ``irqbypass run`` (the optional extra
``irqbypass[metrics]``, which brings ``prometheus_client``).

Per pair (labels ``token``, ``producer``, ``consumer``): the counters fired,
delivered and coalesced (over every open of the entry: a reload that re-opens
an endpoint does not reset them), the gauges queued, lost and paired; for the
run: the pairings and unpairings the manager made, the reloads and the failed
ones. Served over HTTP (``--metrics-port``, a ``prometheus_client`` server
thread: it reads the last snapshot, never the topology) or written to a file
for node_exporter's textfile collector (``--metrics-textfile``: written
beside it and renamed, through the checked directory's fd, never following a
link). The run's main loop takes the snapshot once a second.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator, Sequence
from typing import Any

from .errors import IrqBypassError
from .hookspecs import hookimpl
from .paths import open_directory, split_path

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
        self.pairings = 0
        self.unpairings = 0

    @hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        result = yield
        if side == "consumer":
            self.pairings += 1
        return result

    @hookimpl(wrapper=True)
    def irqbypass_del(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        result = yield
        if side == "consumer":
            self.unpairings += 1
        return result


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

    def update(self, pairs: Sequence[dict[str, Any]], reloads: int, failed: int) -> None:
        self._latest = (list(pairs), reloads, failed)
        if self._textfile is not None:
            self._write()

    def collect(self) -> Iterator[Any]:
        core = self._client.core
        pairs, reloads, failed = self._latest
        for name, what in _COUNTERS:
            family = core.CounterMetricFamily(f"irqbypass_{name}", what, labels=_PAIR_LABELS)
            for row in pairs:
                if isinstance(row.get(name), int):
                    family.add_metric(_labels(row), row[name])
            yield family
        for name, what in _GAUGES:
            family = core.GaugeMetricFamily(f"irqbypass_{name}", what, labels=_PAIR_LABELS)
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
            ("pairings", self.events.pairings, "pairs the manager connected"),
            ("unpairings", self.events.unpairings, "pairs the manager disconnected"),
            ("reloads", reloads, "reloads of the file that changed the topology as asked"),
            ("reload_failures", failed, "reloads refused or rolled back"),
        ):
            yield core.CounterMetricFamily(f"irqbypass_{name}", what, value=value)

    def serve(self, port: int, address: str) -> None:
        try:
            self._server, _thread = self._client.start_http_server(
                port, addr=address, registry=self.registry
            )
        except OSError as exc:
            raise IrqBypassError(
                f"--metrics-port {port}: cannot listen on {address}: {exc.strerror}",
                errno=exc.errno,
            ) from exc

    def write_to(self, path: str) -> None:
        directory, name = split_path(path)
        self._textfile = (open_directory(directory), name)
        self._write()

    def _write(self) -> None:
        """Write the file beside it, then rename: a reader sees a whole one."""
        assert self._textfile is not None
        dirfd, name = self._textfile
        text = self._client.generate_latest(self.registry)
        temporary = f".{name}.{os.getpid()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o644, dir_fd=dirfd)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
        os.replace(temporary, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._textfile is not None:
            with contextlib.suppress(OSError):
                os.close(self._textfile[0])
            self._textfile = None


def _labels(row: dict[str, Any]) -> list[str]:
    return [str(row.get("token")), str(row.get("producer") or ""), str(row.get("consumer") or "")]
