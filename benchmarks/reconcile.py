"""Cost of reloading a running topology: one pair changed, or nothing, with N pairs running.

Side by side, in one run, for N = 100, 1,000 and 10,000 pairs applied:
- change 1: ``Topology.reconcile`` with one producer's options changed (it is
  closed, built, opened and paired again; its partner is re-paired);
- no change: ``reconcile`` with the same entries, in a file that differs by a
  comment (every entry compared: one dict lookup each);
- same file: ``reconcile`` with the very same text parsed again (one comparison of
  the texts);
- parse: ``parse_config`` of that file, what a SIGHUP reload adds before it.

The endpoints are thread-free and open nothing (the kinds of this script), so
the figures are the core's: the diff, the manager and the topology's
bookkeeping. Cost is CPU time (``time.process_time``), not wall time: on a
shared, loaded host the wall time is mostly the scheduler's share. Goal
(docs/benchmarks.md): changing 1 pair flat, within 1.5x from 100 to 10,000
pairs. Usage:
    python benchmarks/reconcile.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import irqbypass
from report import Report, add_json_option

GOAL = 1.5


class Source(irqbypass.Producer):
    def add_consumer(self, consumer: Any) -> None:
        pass

    def del_consumer(self, consumer: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    def start(self) -> None:
        pass


class Sink(irqbypass.Consumer):
    def add_producer(self, producer: Any) -> None:
        pass

    def del_producer(self, producer: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    def start(self) -> None:
        pass


class Kinds:
    @irqbypass.hookimpl
    def irqbypass_register_kinds(self, register: irqbypass.KindRegistrar) -> None:
        def source(spec: irqbypass.EndpointSpec) -> irqbypass.Endpoint:
            opts = spec.options_reader()
            opts.get_int("level", 0)
            opts.finish()
            return Source(token=spec.token, name=spec.name)

        def sink(spec: irqbypass.EndpointSpec) -> irqbypass.Endpoint:
            spec.options_reader().finish()
            return Sink(token=spec.token, name=spec.name)

        register.producer("bench-src", source)
        register.consumer("bench-sink", sink)


def topology_text(pairs: int, level: int = 0) -> str:
    """``pairs`` pairs; pair 0's producer has options ``level``."""
    parts = []
    for i in range(pairs):
        options = f"options = {{ level = {level} }}\n" if i == 0 else "options = { level = 0 }\n"
        parts.append(
            f'[[producers]]\nname = "p{i}"\nkind = "bench-src"\ntoken = "t{i}"\n{options}'
            f'[[consumers]]\nname = "c{i}"\nkind = "bench-sink"\ntoken = "t{i}"\n'
        )
    return "".join(parts)


def measure(pairs: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each operation, ``rounds`` times."""
    host = irqbypass.PluginHost()
    host.register(Kinds(), name="bench")
    text_a, text_b = topology_text(pairs, 0), topology_text(pairs, 1)
    start = time.process_time()
    config_a = irqbypass.parse_config(text_a, file="a.toml")
    parse = time.process_time() - start
    config_b = irqbypass.parse_config(text_b, file="a.toml")
    # the same entries parsed again, in a file with one comment more: compared one by one
    again = {"a": irqbypass.parse_config(text_a + "# edited\n", file="a.toml")}
    again["b"] = irqbypass.parse_config(text_b + "# edited\n", file="a.toml")
    # the very same text: compared as one string
    same = {"a": irqbypass.parse_config(text_a, file="a.toml")}
    same["b"] = irqbypass.parse_config(text_b, file="a.toml")
    topology = irqbypass.Topology(config_a, host)
    topology.apply()
    times: dict[str, list[float]] = {"change": [], "none": [], "same": [], "parse": [parse]}
    try:
        for i in range(rounds):
            target = config_b if i % 2 == 0 else config_a
            start = time.process_time()
            changes = topology.reconcile(target)
            times["change"].append(time.process_time() - start)
            assert changes.changed == ("p0",), changes
            start = time.process_time()
            changes = topology.reconcile(same["b" if i % 2 == 0 else "a"])
            times["same"].append(time.process_time() - start)
            assert not changes
            start = time.process_time()
            changes = topology.reconcile(again["b" if i % 2 == 0 else "a"])
            times["none"].append(time.process_time() - start)
            assert not changes
    finally:
        topology.teardown()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    add_json_option(parser)
    args = parser.parse_args()
    sizes = [100, 1_000, 10_000]
    rounds = 10 if args.quick else 40
    us: dict[str, dict[int, float]] = {"change": {}, "none": {}, "same": {}, "parse": {}}
    low: dict[int, float] = {}
    high: dict[int, float] = {}
    print(
        f"{'pairs':>7}  {'change 1 (us)':>14}  {'no change (us)':>15}  {'same file (us)':>15}  "
        f"{'parse (ms)':>11}"
    )
    for size in sizes:
        times = measure(size, rounds)
        for key, values in times.items():
            us[key][size] = statistics.median(values) * 1e6
        low[size] = min(times["change"]) * 1e6
        high[size] = statistics.quantiles(times["change"], n=10)[-1] * 1e6
        print(
            f"{size:>7}  {us['change'][size]:>14.1f}  {us['none'][size]:>15.1f}  "
            f"{us['same'][size]:>15.1f}  {us['parse'][size] / 1000:>11.1f}"
        )
    ratio = us["change"][10_000] / us["change"][100]
    work = {s: us["change"][s] - us["none"][s] for s in sizes}
    work_ratio = work[10_000] / work[100]
    print(f"change 1 at 10,000 / at 100: {ratio:.2f}x")
    print(f"goal change 1 within {GOAL}x from 100 to 10,000: {ratio:.2f}x "
          f"({'met' if ratio <= GOAL else 'NOT met'})")  # fmt: skip
    print(
        f"the change alone (change 1 - no change): {work[100]:.1f} us at 100, "
        f"{work[10_000]:.1f} us at 10,000 ({work_ratio:.2f}x)"
    )
    per_entry = us["none"][10_000] / 20_000 * 1000
    print(f"the comparison: {per_entry:.0f} ns per entry (no change at 10,000 pairs)")

    report = Report("reconcile", "reloading a running topology")
    fig = report.figure(
        "cost", "us per reconcile", x_label="pairs running", y_label="us", log_x=True, log_y=True
    )
    fig.series(
        "change 1 pair",
        sizes,
        [us["change"][s] for s in sizes],
        low=[low[s] for s in sizes],
        high=[high[s] for s in sizes],
    )
    fig.series("no change", sizes, [us["none"][s] for s in sizes])
    fig.series("same file", sizes, [us["same"][s] for s in sizes])
    ratios = report.figure(
        "ratio", "change 1 pair: cost against 100 pairs", x_label="pairs running", y_label="x",
        log_x=True,
    )  # fmt: skip
    ratios.series("change 1 pair", sizes, [us["change"][s] / us["change"][100] for s in sizes])
    ratios.series("no change", sizes, [us["none"][s] / us["none"][100] for s in sizes])
    ratios.goal(GOAL, f"goal: <= {GOAL}x")
    report.write(args.json)


if __name__ == "__main__":
    main()
