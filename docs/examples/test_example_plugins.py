"""Tests for the example plugins: register them in-process, build, pair, count.

Run from the repository root with the examples on the path:
``PYTHONPATH=docs/examples/ticker:docs/examples/counter:docs/examples
.venv/bin/pytest docs/examples``
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import irqbypass
import irqbypass.exceptions
import irqbypass.plugin
import irqbypass_counter
import irqbypass_ticker
import pytest
from tracer import Tracer


def spec(
    side: Literal["producer", "consumer"], kind: str, token: irqbypass.Eventfd, **options: object
) -> irqbypass.plugin.EndpointSpec:
    """What the topology would hand the kind's factory for one TOML entry."""
    return irqbypass.plugin.EndpointSpec(
        name=f"{kind}0", kind=kind, side=side, token=token, options=options
    )


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait for a condition; the generous timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "hang guard: the condition never came true"
        time.sleep(0.01)


def test_kinds_register_in_process() -> None:
    host = irqbypass.PluginHost()
    with host.registered(irqbypass_ticker), host.registered(irqbypass_counter):
        assert host.kinds.get("producer", "ticker").plugin == host.pm.get_name(irqbypass_ticker)
        assert host.kinds.get("consumer", "counter").factory == (
            irqbypass_counter.CounterConsumer.from_spec
        )
    with pytest.raises(irqbypass.exceptions.UnknownKindError):
        host.kinds.get("producer", "ticker")  # unregistered again


def test_factory_refuses_a_typo_with_the_closest_name() -> None:
    with irqbypass.Eventfd() as token, pytest.raises(irqbypass.ConfigError) as info:
        irqbypass_ticker.TickerProducer.from_spec(spec("producer", "ticker", token, cuont=3))
    assert "unknown option 'cuont'; did you mean 'count'?" in str(info.value)


@pytest.mark.parametrize("direct", [True, False])
def test_pair_delivers_every_interrupt(direct: bool) -> None:
    host = irqbypass.PluginHost()
    with host.registered(irqbypass_ticker), host.registered(irqbypass_counter):
        manager = irqbypass.Manager(host)
        with irqbypass.Eventfd() as token:
            consumer = host.kinds.get("consumer", "counter").factory(
                spec("consumer", "counter", token, direct=direct)
            )
            producer = host.kinds.get("producer", "ticker").factory(
                spec("producer", "ticker", token, period=0.001, count=50)
            )
            # pair before the ticker starts (it fires from open on): every tick
            # then takes the direct path, however late the ticker's thread runs
            with consumer:  # open; close on the way out
                manager.register_consumer(consumer)
                manager.register_producer(producer)
                assert producer.consumer is consumer
                with producer:
                    wait_for(lambda: consumer.stats()["delivered"] == 50)
                    manager.unregister_producer(producer)
                    manager.unregister_consumer(consumer)
            assert producer.stats()["fired"] == 50
            assert consumer.stats()["delivered"] == 50
            assert consumer.stats()["direct"] == (50 if direct else 0)


def test_tracer_times_every_callback_and_vetoes() -> None:
    tracer = Tracer(refuse={"counter1"})
    manager = irqbypass.Manager()
    with manager.plugins.registered(tracer, name="tracer"):
        producer = irqbypass_ticker.TickerProducer(token="t", name="ticker0")
        consumer = irqbypass_counter.CounterConsumer(token="t", name="counter0")
        manager.register_producer(producer)
        manager.register_consumer(consumer)
        manager.unregister_consumer(consumer)
        steps = [(step, side) for step, side, _, _ in tracer.calls]
        # Hooks fire only for callbacks the endpoint defines: the ticker has no
        # add_consumer/del_consumer, the counter no stop/start.
        assert steps == [
            ("stop", "producer"),
            ("add", "consumer"),
            ("start", "producer"),
            ("stop", "producer"),
            ("del", "consumer"),
            ("start", "producer"),
        ]
        with pytest.raises(irqbypass.exceptions.ConnectError) as info:
            manager.register_consumer(irqbypass_counter.CounterConsumer(token="t", name="counter1"))
        assert isinstance(info.value.__cause__, irqbypass.Veto)
        assert producer.consumer is None
        # the ticker has no add_consumer: the veto sees its pairings all the same
        tracer.refuse = {"ticker1"}
        manager.unregister_producer(producer)
        manager.register_consumer(consumer)
        with pytest.raises(irqbypass.exceptions.ConnectError, match="ticker1 may not be paired"):
            manager.register_producer(irqbypass_ticker.TickerProducer(token="t", name="ticker1"))
        assert consumer.producer is None
    assert not manager.plugins.wrapped  # back on the fast path
