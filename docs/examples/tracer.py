"""A hook-wrapper plugin: traces and times every callback, and vetoes pairings.

Register it in-process (``host.register(Tracer(...))``) or ship it as a
distribution with an ``irqbypass`` entry point, like a kind plugin.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Generator

import irqbypass
import irqbypass.plugin


class Tracer:
    """Records ``(step, side, endpoint name, seconds)`` for every callback call."""

    def __init__(self, *, refuse: Collection[str] = ()) -> None:
        self.calls: list[tuple[str, str, str, float]] = []
        self.refuse = refuse  # endpoint names that must never be paired

    def _timed(
        self, step: str, endpoint: irqbypass.Endpoint, side: irqbypass.plugin.Side
    ) -> Generator[None, None, None]:
        began = time.perf_counter()
        try:
            yield  # the inner implementations: in the end, the endpoint's method
        finally:
            self.calls.append((step, side, endpoint.name, time.perf_counter() - began))

    @irqbypass.plugin.hookimpl
    def irqbypass_pair(self, producer: irqbypass.Producer, consumer: irqbypass.Consumer) -> None:
        # Once per pairing, before any callback, whatever callbacks the ends
        # define (a wrapper of irqbypass_add never runs for a producer without
        # add_consumer). Raising vetoes: the registration fails with
        # ConnectError, its __cause__ this; Veto(why, unpaired=True) leaves a
        # topology's pair unpaired instead.
        for name in (producer.name, consumer.name):
            if name in self.refuse:
                raise irqbypass.Veto(f"{name} may not be paired")

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_add(
        self, endpoint: irqbypass.Endpoint, partner: irqbypass.Endpoint, side: irqbypass.plugin.Side
    ) -> Generator[None, None, None]:
        return (yield from self._timed("add", endpoint, side))

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_del(
        self, endpoint: irqbypass.Endpoint, partner: irqbypass.Endpoint, side: irqbypass.plugin.Side
    ) -> Generator[None, None, None]:
        return (yield from self._timed("del", endpoint, side))

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_stop(
        self, endpoint: irqbypass.Endpoint, side: irqbypass.plugin.Side
    ) -> Generator[None, None, None]:
        return (yield from self._timed("stop", endpoint, side))

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_start(
        self, endpoint: irqbypass.Endpoint, side: irqbypass.plugin.Side
    ) -> Generator[None, None, None]:
        return (yield from self._timed("start", endpoint, side))
