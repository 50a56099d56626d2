"""A plugin module for ``irqbypass -p faulty_plugin`` (tests/core on PYTHONPATH):
one kind per way a plugin's code can be wrong, as issue 22 found them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import irqbypass
import irqbypass.plugin


class Sink(irqbypass.Consumer):
    """A consumer that takes its producer and does nothing else."""

    def add_producer(self, producer: irqbypass.Producer) -> None:
        pass

    def del_producer(self, producer: irqbypass.Producer) -> None:
        pass


class StatsRaise(irqbypass.Producer):
    """Finished at once; its stats() raises."""

    @property
    def finished(self) -> bool:
        return True

    def stats(self) -> Mapping[str, int]:
        raise RuntimeError("stats are broken")


class StopRaises(irqbypass.Producer):
    """Its stop() raises, at every connect and disconnect."""

    def stop(self) -> None:
        raise RuntimeError("stop is broken")


class FinishedRaises(irqbypass.Producer):
    @property
    def finished(self) -> bool:
        raise ValueError("finished is broken")


class OpenRaises(Sink):
    def open(self) -> None:
        raise RuntimeError("open is broken")


class CloseRaises(Sink):
    def close(self) -> None:
        raise RuntimeError("close is broken")


def _own_token(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
    return irqbypass.Producer(token=irqbypass.Eventfd(), name=spec.name)


def _own_name(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
    return irqbypass.Producer(token=spec.token)


def _not_an_endpoint(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
    return "an endpoint"  # type: ignore[return-value]


def _built(cls: type[irqbypass.Endpoint]) -> irqbypass.plugin.Factory:
    def factory(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
        spec.options_reader().finish()
        return cls(token=spec.token, name=spec.name)

    return factory


class NeedsPath(Sink):
    """A consumer with a required option, read as the plugin guide shows."""

    @classmethod
    def from_spec(cls, spec: irqbypass.plugin.EndpointSpec) -> NeedsPath:
        opts = spec.options_reader()
        path: str = opts.get_str("path", required=True)
        opts.finish()
        consumer = cls(token=spec.token, name=spec.name)
        consumer.path = path
        return consumer

    path = ""


class SlowOpen(Sink):
    """open() writes its ``marker`` file, then waits (interruptibly) for Ctrl-C."""

    marker = ""

    @classmethod
    def from_spec(cls, spec: irqbypass.plugin.EndpointSpec) -> SlowOpen:
        opts = spec.options_reader()
        marker = opts.get_str("marker")
        opts.finish()
        consumer = cls(token=spec.token, name=spec.name)
        consumer.marker = marker or "marker"
        return consumer

    def open(self) -> None:
        Path(self.marker).write_text("opening")
        deadline = time.monotonic() + 120  # a hang guard
        while time.monotonic() < deadline:
            time.sleep(0.01)


class InterruptedStop(irqbypass.Producer):
    """Its stop() raises KeyboardInterrupt from the second call on: at the
    teardown's disconnect, as a Ctrl-C landing in it does."""

    calls = 0

    def stop(self) -> None:
        self.calls += 1
        if self.calls > 1:
            raise KeyboardInterrupt

    @property
    def finished(self) -> bool:
        return True


def _availability() -> str | None:
    raise OSError("cannot tell")


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.consumer("sink", _built(Sink))
    register.consumer("open-raises", _built(OpenRaises))
    register.consumer("close-raises", _built(CloseRaises))
    register.consumer("unsure", _built(Sink), availability=_availability)
    register.consumer("needs-path", NeedsPath.from_spec)
    register.consumer("never-here", _built(Sink), availability=lambda: "no such device here")
    register.consumer("slow-open", SlowOpen.from_spec)
    register.producer("interrupted-stop", _built(InterruptedStop))
    register.producer("stats-raise", _built(StatsRaise))
    register.producer("finished-raises", _built(FinishedRaises))
    register.producer("stop-raises", _built(StopRaises))
    register.producer("own-token", _own_token)
    register.producer("own-name", _own_name)
    register.producer("not-an-endpoint", _not_an_endpoint)
