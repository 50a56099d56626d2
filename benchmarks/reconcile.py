"""Cost of changing a running topology: one pair changed, or nothing, with N pairs running.

Side by side, in one run, for N = 100, 1,000 and 10,000 pairs applied:
- (a) reconcile, change 1: ``Topology.reconcile`` of an already-parsed Config
  with one producer's options changed (it is closed, built, opened and paired
  again; its partner is re-paired); compared group by group (about sqrt(N)
  digests, then the entries of the one group that differs);
- (a) no change: ``reconcile`` with the same entries, in a file that differs by a
  comment (every group's digest compared); same file: the very same text;
- (a) entry by entry: ``reconcile`` right after a ``change()`` (the running
  entries are then no file's: every entry compared, one string comparison
  each), changing 1 pair back;
- (b) reload from a file: ``load_config`` of a file with one pair changed, then
  ``reconcile``: what a SIGHUP costs (the parse is O(N) by nature);
- (c) change API: ``Topology.change(replace=[entry])`` with one producer's
  options changed: nothing else is looked at.

The endpoints are thread-free and open nothing (the kinds of this script), so
the figures are the core's: the diff, the manager and the topology's
bookkeeping. Cost is CPU time (``time.process_time``), wall time beside it: on
a shared, loaded host the wall time is mostly the scheduler's share. Goal
(docs/benchmarks.md): changing 1 pair flat, within 1.5x from 100 to 10,000
pairs. Usage:
    python benchmarks/reconcile.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import irqbypass
import irqbypass.plugin
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
    @irqbypass.plugin.hookimpl
    def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
        def source(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
            opts = spec.options_reader()
            opts.get_int("level", 0)
            opts.finish()
            return Source(token=spec.token, name=spec.name)

        def sink(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
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


#: what is measured, in the order of the table: key -> label
OPERATIONS = {
    "change": "(a) reconcile, change 1",
    "none": "(a) no change",
    "same": "(a) same file",
    "scan": "(a) entry by entry, change 1",
    "reload": "(b) reload from file, change 1",
    "api": "(c) change(), change 1",
}


def timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, float, Any]:
    """(CPU seconds, wall seconds, result) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = call(*args, **kwargs)
    return time.process_time() - cpu, time.perf_counter() - wall, result


class Bench:
    """A topology of ``pairs`` pairs running file a, and what turns it into b."""

    def __init__(self, pairs: int, tmp: Path) -> None:
        self.host = irqbypass.PluginHost()
        self.host.register(Kinds(), name="bench")
        text = {"a": topology_text(pairs, 0), "b": topology_text(pairs, 1)}
        self.files = {k: tmp / f"{k}{pairs}.toml" for k in text}
        for k, path in self.files.items():
            path.write_text(text[k])
        self.configs = {k: irqbypass.parse_config(t, file="a.toml") for k, t in text.items()}
        # the same entries parsed again, in a file with one comment more
        self.again = {k: irqbypass.parse_config(t + "# edited\n", file="a.toml")
                      for k, t in text.items()}  # fmt: skip
        # the very same text
        self.same = {k: irqbypass.parse_config(t, file="a.toml") for k, t in text.items()}
        self.p0 = {k: c.by_name["p0"] for k, c in self.configs.items()}
        self.times: dict[str, list[tuple[float, float]]] = {k: [] for k in [*OPERATIONS, "parse"]}
        self.topology = irqbypass.Topology(self.configs["a"], self.host)
        self.topology.apply()

    def record(self, key: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        cpu, wall, result = timed(call, *args, **kwargs)
        self.times[key].append((cpu, wall))
        return result

    def round(self) -> None:
        """Each operation twice: a -> b, then back to a."""
        topology = self.topology
        for now, other in (("a", "b"), ("b", "a")):
            changes = self.record("change", topology.reconcile, self.configs[other])
            assert changes.changed == ("p0",), changes
            assert not self.record("same", topology.reconcile, self.same[other])
            assert not self.record("none", topology.reconcile, self.again[other])
            changes = self.record("api", topology.change, replace=[self.p0[now]])
            assert changes.changed == ("p0",), changes
            changes = self.record("scan", topology.reconcile, self.again[other])
            assert changes.changed == ("p0",), changes

    def reload(self) -> None:
        """A SIGHUP's work, twice: read and parse the file, reconcile."""
        for other in ("b", "a"):
            cpu, wall, config = timed(irqbypass.load_config, self.files[other])
            self.times["parse"].append((cpu, wall))
            more_cpu, more_wall, changes = timed(self.topology.reconcile, config)
            self.times["reload"].append((cpu + more_cpu, wall + more_wall))
            assert changes.changed == ("p0",), changes

    def close(self) -> None:
        self.topology.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    add_json_option(parser)
    args = parser.parse_args()
    sizes = [100, 1_000, 10_000]
    rounds = 10 if args.quick else 40
    reloads = 2 if args.quick else 5
    keys = [*OPERATIONS, "parse"]
    cpu: dict[str, dict[int, float]] = {key: {} for key in keys}
    wall: dict[str, dict[int, float]] = {key: {} for key in keys}
    low: dict[int, float] = {}
    high: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        benches = {size: Bench(size, Path(tmp)) for size in sizes}
        try:
            # the sizes in turn, round by round: a load that comes and goes on a
            # shared host falls on all of them alike
            for i in range(rounds):
                for bench in benches.values():
                    bench.round()
                    if i < reloads:
                        bench.reload()
        finally:
            for bench in benches.values():
                bench.close()
        for size, bench in benches.items():
            times = bench.times
            for key, values in times.items():
                cpu[key][size] = statistics.median(c for c, _ in values) * 1e6
                wall[key][size] = statistics.median(w for _, w in values) * 1e6
            changes = [c * 1e6 for c, _ in times["change"]]
            low[size] = min(changes)
            high[size] = statistics.quantiles(changes, n=10)[-1]
    labels = {**OPERATIONS, "parse": "(b) of which load_config"}
    print(
        f"per call, CPU us (wall us): the median of {rounds * 2} calls ({reloads * 2} for a reload)"
    )
    print(f"{'':32}" + "".join(f"{f'{n:,} pairs':>24}" for n in sizes)
          + f"{'10,000 / 100':>24}")  # fmt: skip
    for key in keys:
        cells = "".join(f"{f'{cpu[key][n]:,.0f} ({wall[key][n]:,.0f})':>24}" for n in sizes)
        ratio = (
            f"{cpu[key][10_000] / cpu[key][100]:.2f}x ({wall[key][10_000] / wall[key][100]:.2f}x)"
        )
        print(f"{labels[key]:32}{cells}{ratio:>24}")
    for key in ("change", "api"):
        ratio = cpu[key][10_000] / cpu[key][100]
        print(f"goal {labels[key]} within {GOAL}x from 100 to 10,000 (CPU): {ratio:.2f}x "
              f"({'met' if ratio <= GOAL else 'NOT met'})")  # fmt: skip
    per_entry = (cpu["scan"][10_000] - cpu["scan"][100]) / (2 * (10_000 - 100)) * 1000
    print(f"entry by entry: {per_entry:.0f} ns of CPU per entry compared")

    report = Report("reconcile", "changing a running topology")
    fig = report.figure(
        "cost", "CPU us per call", x_label="pairs running", y_label="us", log_x=True, log_y=True
    )
    for key in keys:
        extra: dict[str, Any] = {}
        if key == "change":
            extra = {"low": [low[s] for s in sizes], "high": [high[s] for s in sizes]}
        fig.series(labels[key], sizes, [cpu[key][s] for s in sizes], **extra)
    ratios = report.figure(
        "ratio", "change 1 pair: CPU cost against 100 pairs", x_label="pairs running",
        y_label="x", log_x=True,
    )  # fmt: skip
    for key in ("change", "api", "none"):  # entry by entry (100x) is in the cost figure
        ratios.series(labels[key], sizes, [cpu[key][s] / cpu[key][100] for s in sizes])
    ratios.goal(GOAL, f"goal: <= {GOAL}x")
    report.write(args.json)


if __name__ == "__main__":
    main()
