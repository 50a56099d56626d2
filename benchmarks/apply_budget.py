"""Where a pair's apply and teardown go, part by part, against the floor.

``controlplane.py`` measures ``Topology.apply`` and ``teardown`` whole against a
hand-written loop (one eventfd per pair registered with epoll, then closed).
This script takes them apart, in one process, each part on N pairs of its own
(mock -> logging, as there), CPU time of the main thread per pair:

- floor: ``os.eventfd`` + ``epoll.register`` (apply); ``os.close`` (teardown);
- the token: ``os.eventfd`` alone, its identity (``eventfd-id`` read from
  ``/proc/self/fdinfo``, what pairs a dup'd or passed fd with its original),
  and ``irqbypass.Eventfd()`` whole; its ``close()``;
- the two factories (``from_spec``: options read and checked, the endpoint
  made), the two ``open()``\\ s (a reader and a timer on the event loop), the
  manager's registration of the pair (the kernel's ``__connect`` with the
  endpoints' callbacks) and, for teardown, the unregistration and the closes;
- the whole ``Topology.apply`` and ``teardown`` of N pairs; what the parts
  leave is the topology's own work (the transaction, the ledger's indexes,
  the specs, the checks of what a factory returned, the counts kept for a
  re-plug).

The mocks wait an hour before firing (``delay``), so the loop's thread
takes no CPU meanwhile; the parts are the same calls the topology makes. Each
figure is the median of ROUNDS rounds, the garbage collector off in each (the
topology pauses it in apply and teardown). Usage:

    .venv/bin/python benchmarks/apply_budget.py [--pairs N] [--rounds R] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import select
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import irqbypass
import irqbypass.plugin
from irqbypass._eventfd import _EVENTFD_ID, Eventfd, _fdinfo_field
from report import Report, add_json_option

OPTIONS = {"rate": 0.0, "count": 20, "delay": 3600.0}
GOAL = 10.0  # issue 31: apply and teardown within 10x the floor


def pairs_toml(n: int) -> str:
    return "".join(
        f'[[producers]]\nname = "m{i}"\nkind = "mock"\ntoken = "t{i}"\n'
        "options = { rate = 0, count = 20, delay = 3600 }\n"
        f'[[consumers]]\nname = "l{i}"\nkind = "logging"\ntoken = "t{i}"\n'
        for i in range(n)
    )


@contextmanager
def timed(into: list[float]) -> Iterator[None]:
    """The block's CPU time (this thread's) appended to ``into``, collector off."""
    gc.disable()
    start = time.thread_time()
    try:
        yield
    finally:
        into.append(time.thread_time() - start)
        gc.enable()


class Parts:
    """The parts' times, each a list of rounds (seconds for N pairs)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def slot(self, name: str) -> list[float]:
        return self.times.setdefault(name, [])

    def per_pair_us(self, name: str, n: int) -> float:
        return statistics.median(self.times[name]) / n * 1e6


def floor_round(n: int, parts: Parts) -> None:
    flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
    epoll = select.epoll()
    fds: list[int] = []
    with timed(parts.slot("floor apply")):
        for _ in range(n):
            fd = os.eventfd(0, flags)
            epoll.register(fd, select.EPOLLIN)
            fds.append(fd)
    with timed(parts.slot("floor teardown")):
        for fd in fds:
            os.close(fd)
    epoll.close()


def token_round(n: int, parts: Parts) -> None:
    flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
    with timed(parts.slot("os.eventfd")):
        fds = [os.eventfd(0, flags) for _ in range(n)]
    identity = functools.partial(_fdinfo_field, tag=_EVENTFD_ID)
    with timed(parts.slot("identity read")):
        for fd in fds:
            identity(fd)
    for fd in fds:
        os.close(fd)
    with timed(parts.slot("Eventfd()")):
        tokens = [Eventfd() for _ in range(n)]
    with timed(parts.slot("Eventfd.close")):
        for token in tokens:
            token.close()


def spec(kind: str, side: irqbypass.plugin.Side, i: int, token: Eventfd) -> Any:
    options = OPTIONS if side == "producer" else {}
    name = f"m{i}" if side == "producer" else f"l{i}"
    return irqbypass.plugin.EndpointSpec(
        name=name, kind=kind, side=side, token=token, token_name=f"t{i}", options=options
    )


def endpoint_round(n: int, parts: Parts, host: irqbypass.PluginHost) -> None:
    kinds = host.kinds
    consumer_kind, producer_kind = kinds.get("consumer", "logging"), kinds.get("producer", "mock")
    tokens = [Eventfd() for _ in range(n)]
    consumer_specs = [spec("logging", "consumer", i, t) for i, t in enumerate(tokens)]
    producer_specs = [spec("mock", "producer", i, t) for i, t in enumerate(tokens)]
    with timed(parts.slot("factories")):
        consumers = [consumer_kind.factory(s) for s in consumer_specs]
        producers = [producer_kind.factory(s) for s in producer_specs]
    pairs: list[Any] = list(zip(consumers, producers, strict=True))
    with timed(parts.slot("opens")):
        for consumer, producer in pairs:
            consumer.open()
            producer.open()
    manager = irqbypass.Manager(host)
    with timed(parts.slot("register pair")):
        for consumer, producer in pairs:
            manager.register_consumer(consumer)
            manager.register_producer(producer)
    with timed(parts.slot("unregister pair")):
        for consumer, producer in pairs:
            manager.unregister_producer(producer)
            manager.unregister_consumer(consumer)
    with timed(parts.slot("closes")):
        for consumer, producer in pairs:
            producer.close()
            consumer.close()
    for token in tokens:
        token.close()


def topology_round(config: irqbypass.Config, parts: Parts, host: irqbypass.PluginHost) -> None:
    topology = irqbypass.Topology(config, host)
    with timed(parts.slot("Topology.apply")):
        topology.apply()
    with timed(parts.slot("Topology.teardown")):
        topology.teardown()


APPLY_PARTS = ("Eventfd()", "factories", "opens", "register pair")
TEARDOWN_PARTS = ("unregister pair", "closes", "Eventfd.close")
#: for each step: its floor, its parts (those of the token's first: what Eventfd() is
#: made of), its whole
STEPS = {
    "apply": ("floor apply", ("os.eventfd", "identity read", *APPLY_PARTS), "Topology.apply"),
    "teardown": ("floor teardown", TEARDOWN_PARTS, "Topology.teardown"),
}
#: shown, not added up: they are inside Eventfd()
INSIDE = ("os.eventfd", "identity read")


def step_rows(parts: Parts, n: int, step: str) -> list[tuple[str, float]]:
    """(label, us per pair) of a step: its floor, its parts, the topology's own
    (the whole less the parts), the whole."""
    floor, names, whole = STEPS[step]
    us = parts.per_pair_us
    own = us(whole, n) - sum(us(p, n) for p in names if p not in INSIDE)
    return [
        ("floor", us(floor, n)),
        *((f"({p})" if p in INSIDE else p, us(p, n)) for p in names),
        ("the topology's own", own),
        (whole, us(whole, n)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000, help="pairs per part and round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (the median is kept)")
    add_json_option(parser)
    args = parser.parse_args()
    n = args.pairs
    host = irqbypass.load_plugins(allow=["irqbypass-mock", "irqbypass-logging"], strict=True)
    config = irqbypass.parse_config(pairs_toml(n))
    parts = Parts()
    load = os.getloadavg()
    rounds: list[Callable[[], None]] = [
        lambda: floor_round(n, parts),
        lambda: token_round(n, parts),
        lambda: endpoint_round(n, parts, host),
        lambda: topology_round(config, parts, host),
    ]
    topology_round(config, Parts(), host)  # everything imported and warm
    for _ in range(args.rounds):
        for one_round in rounds:  # interleaved: a load that comes and goes hits all
            one_round()
    irqbypass.event_loop().close()
    report = Report("apply_budget", "Where a pair's apply and teardown go")
    print(f"{n:,} pairs, CPU us per pair, median of {args.rounds} rounds; load {load[0]:.1f}")
    for step in STEPS:
        rows = step_rows(parts, n, step)
        floor, whole = rows[0][1], rows[-1][1]
        print(f"{step:34s} {'us/pair':>8s} {'x floor':>8s}")
        for label, value in rows:
            print(f"  {label:32s} {value:8.2f} {value / floor:7.1f}x")
        print(
            f"goal {step} within {GOAL:.0f}x the floor: {whole:.1f} us against "
            f"{GOAL * floor:.1f} ({whole / floor:.1f}x)"
        )
        figure = report.figure(
            step,
            f"{step}: CPU us per pair, part by part ({n:,} pairs)",
            x_label="part",
            y_label="us per pair",
            kind="bar",
        )
        figure.series("us per pair", [label for label, _ in rows], [v for _, v in rows])
        figure.goal(GOAL * floor, f"goal: {GOAL:.0f}x the floor")
    report.write(args.json)


if __name__ == "__main__":
    main()
