"""Apply, run and teardown of N mock -> logging pairs: Topology, `irqbypass run`, floor.

Side by side in one run, for each N (100, 1,000, 10,000), each in a fresh process
(so its threads and RSS are its own):

- Topology: ``Topology.apply()``, the run (until every interrupt is delivered),
  ``teardown()``: seconds each, the process's peak threads and peak RSS;
- ``irqbypass run FILE --json``: the whole command's wall time, its peak threads
  and peak RSS (sampled from /proc), and whether its summary shows every
  interrupt delivered;
- floor: the same N pairs through a Manager alone, with endpoints that open
  nothing (register both, unregister both): the scale bar's floor, so the
  plugin layer's own cost per pair is a ratio.

Each mock fires FIRES interrupts as fast as it can (rate 0): the run is work,
not a schedule. Cost is CPU time (user + system, every thread of the process);
wall time is printed beside it (on a loaded shared host it is mostly the
scheduler's share). Goals (docs/benchmarks.md): every interrupt delivered at
every N; whole-run CPU cost per pair at 10,000 within 1.5x of that at 100;
peak threads <= 16.

    .venv/bin/python benchmarks/topology.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from report import Report, add_json_option

FIRES = 20
SIZES = (100, 1000, 10_000)
QUICK_SIZES = (100, 1000)
MAX_THREADS = 16
RATIO_GOAL = 1.5
GUARD_SECONDS = 1800.0  # a hang guard for the slowest N on a loaded host
HERE = Path(__file__).resolve().parent
IRQBYPASS = Path(sys.executable).with_name("irqbypass")


def pairs_toml(n: int) -> str:
    return "".join(
        f'[[producers]]\nname = "m{i}"\nkind = "mock"\ntoken = "t{i}"\n'
        f"options = {{ rate = 0, count = {FIRES} }}\n"
        f'[[consumers]]\nname = "l{i}"\nkind = "logging"\ntoken = "t{i}"\n'
        for i in range(n)
    )


def status(pid: int | str = "self") -> dict[str, int]:
    """Threads and peak RSS (kB) of a process, from /proc."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Threads", "VmHWM", "VmRSS"):
                    fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields


class Sampler:
    """Samples a process's thread count and peak RSS every few ms until stopped."""

    def __init__(self, pid: int | str = "self") -> None:
        self.pid = pid
        self.threads = 0
        self.rss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        fields = status(self.pid)
        # the sampler's own thread is not the process's (only in-process)
        own = 1 if self.pid == "self" else 0
        self.threads = max(self.threads, fields.get("Threads", 0) - own)
        self.rss_kb = max(self.rss_kb, fields.get("VmHWM", 0))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()


# -- the children ------------------------------------------------------------


def child_topology(n: int) -> dict[str, Any]:
    import irqbypass

    config = irqbypass.parse_config(pairs_toml(n), file=f"bench-{n}.toml")
    host = irqbypass.load_plugins()
    with Sampler() as sampler:
        topology = irqbypass.Topology(config, host)
        c0, t0 = time.process_time(), time.perf_counter()
        topology.apply()
        c1, t1 = time.process_time(), time.perf_counter()
        consumers = [p.endpoint for p in topology.placed if p.config.side == "consumer"]
        deadline = time.monotonic() + GUARD_SECONDS
        while True:
            check = time.perf_counter()
            delivered = sum(c.stats()["delivered"] for c in consumers)
            cost = time.perf_counter() - check
            if delivered >= n * FIRES or time.monotonic() > deadline:
                break
            time.sleep(max(0.005, 4 * cost))  # the check takes at most a fifth of the time
        c2, t2 = time.process_time(), time.perf_counter()
        topology.teardown()
        c3, t3 = time.process_time(), time.perf_counter()
    return {
        "apply": t1 - t0,
        "run": t2 - t1,
        "teardown": t3 - t2,
        "cpu": c3 - c0,
        "cpu_apply": c1 - c0,
        "cpu_run": c2 - c1,
        "cpu_teardown": c3 - c2,
        "delivered": delivered,
        "expected": n * FIRES,
        "threads": sampler.threads,
        "rss_kb": sampler.rss_kb,
    }


def child_floor(n: int) -> dict[str, Any]:
    import irqbypass

    class P(irqbypass.Producer):
        pass

    class C(irqbypass.Consumer):
        def add_producer(self, producer: Any) -> None:
            pass

        def del_producer(self, producer: Any) -> None:
            pass

    manager = irqbypass.Manager()
    pairs = [(P(token=i, name=f"m{i}"), C(token=i, name=f"l{i}")) for i in range(n)]
    c0, t0 = time.process_time(), time.perf_counter()
    for p, c in pairs:
        p.open(), c.open()
        manager.register_consumer(c)
        manager.register_producer(p)
    for p, c in reversed(pairs):
        manager.unregister_producer(p)
        manager.unregister_consumer(c)
        p.close(), c.close()
    return {"whole": time.perf_counter() - t0, "cpu": time.process_time() - c0}


def run_child(kind: str, n: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(n)],
        capture_output=True,
        text=True,
        timeout=GUARD_SECONDS,
        check=True,
    )
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def run_cli(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"bench-{n}.toml"
        path.write_text(pairs_toml(n))
        out = Path(tmp) / "out.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with open(out, "w") as stdout:
            proc = subprocess.Popen(
                [str(IRQBYPASS), "run", str(path), "--json", "--duration", "3600"],
                stdout=stdout,
                stderr=subprocess.PIPE,
                text=True,
            )
            with Sampler(proc.pid) as sampler:
                _, err = proc.communicate(timeout=GUARD_SECONDS)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"irqbypass run of {n} pairs failed ({proc.returncode}): {err}")
        summary = json.loads(out.read_text())
    rows = summary["pairs"]
    return {
        "whole": wall,
        "cpu": cpu,
        "delivered": sum(r["delivered"] or 0 for r in rows),
        "expected": n * FIRES,
        "threads": sampler.threads,
        "rss_kb": sampler.rss_kb,
    }


# -- the report ----------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 100 and 1000 only")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    add_json_option(parser)
    args = parser.parse_args()
    if args.child:
        kind, n = args.child[0], int(args.child[1])
        print(json.dumps(child_topology(n) if kind == "topology" else child_floor(n)))
        return

    sizes = QUICK_SIZES if args.quick else SIZES
    load = os.getloadavg()
    print(f"{FIRES} interrupts per pair (mock rate 0 -> logging); load {load[0]:.1f}")
    print(
        f"{'N':>6} {'apply':>6} {'run':>6} {'down':>6} {'wall':>6} {'cpu':>6} {'cpu us/pr':>9} "
        f"{'floor':>6} {'x floor':>7} {'thr':>4} {'MB':>4} | {'cli wall':>8} {'cli cpu':>7} "
        f"{'us/pr':>6} {'thr':>4} {'MB':>4} | delivered"
    )
    topo: dict[int, dict[str, Any]] = {}
    cli: dict[int, dict[str, Any]] = {}
    floor: dict[int, dict[str, Any]] = {}
    for n in sizes:
        floor[n] = run_child("floor", n)
        topo[n] = run_child("topology", n)
        cli[n] = run_cli(n)
        t, c, f = topo[n], cli[n], floor[n]
        t["per_pair_us"] = t["cpu"] / n * 1e6
        t["wall_per_pair_us"] = (t["apply"] + t["run"] + t["teardown"]) / n * 1e6
        c["per_pair_us"] = c["cpu"] / n * 1e6
        f["per_pair_us"] = f["cpu"] / n * 1e6
        every = t["delivered"] == t["expected"] and c["delivered"] == c["expected"]
        print(
            f"{n:>6} {t['apply']:>6.2f} {t['run']:>6.2f} {t['teardown']:>6.2f} "
            f"{t['apply'] + t['run'] + t['teardown']:>6.2f} {t['cpu']:>6.2f} "
            f"{t['per_pair_us']:>9.0f} {f['per_pair_us']:>6.1f} "
            f"{t['per_pair_us'] / f['per_pair_us']:>7.0f} {t['threads']:>4} "
            f"{t['rss_kb'] / 1024:>4.0f} | {c['whole']:>8.2f} {c['cpu']:>7.2f} "
            f"{c['per_pair_us']:>6.0f} {c['threads']:>4} {c['rss_kb'] / 1024:>4.0f} | "
            f"{'all' if every else 'NOT ALL'} ({t['delivered']}/{t['expected']}, "
            f"cli {c['delivered']}/{c['expected']})"
        )
    print(
        "seconds (apply, run, down: wall), cpu: user + system of every thread; "
        "us/pr: CPU us per pair; floor: the Manager alone"
    )

    first, last = sizes[0], sizes[-1]
    ratio = topo[last]["per_pair_us"] / topo[first]["per_pair_us"]
    cli_ratio = cli[last]["per_pair_us"] / cli[first]["per_pair_us"]
    peak = max(max(topo[n]["threads"], cli[n]["threads"]) for n in sizes)
    delivered = all(r[n]["delivered"] == r[n]["expected"] for r in (topo, cli) for n in sizes)

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"goal every interrupt delivered at every N: {met(delivered)}")
    wall_ratio = topo[last]["wall_per_pair_us"] / topo[first]["wall_per_pair_us"]
    print(
        f"goal whole-run CPU cost per pair at {last} within {RATIO_GOAL}x of {first} "
        f"(Topology): {ratio:.2f}x ({met(ratio <= RATIO_GOAL)}); irqbypass run: "
        f"{cli_ratio:.2f}x; wall time per pair (Topology): {wall_ratio:.2f}x"
    )
    print(f"goal peak threads <= {MAX_THREADS}: {peak} ({met(peak <= MAX_THREADS)})")

    report = Report("topology", "Apply, run and teardown of N mock -> logging pairs")
    xs = list(sizes)
    fig = report.figure(
        "cost",
        "Whole-run CPU per pair (apply + run + teardown)",
        x_label="pairs",
        y_label="CPU us per pair",
        log_x=True,
        log_y=True,
        note=f"{FIRES} interrupts per pair; floor: the Manager alone, endpoints that open nothing",
    )
    fig.series("Topology", xs, [topo[n]["per_pair_us"] for n in sizes])
    fig.series("irqbypass run", xs, [cli[n]["per_pair_us"] for n in sizes])
    fig.series("floor (Manager alone)", xs, [floor[n]["per_pair_us"] for n in sizes])
    steps = report.figure(
        "steps",
        "Topology: seconds per step",
        x_label="pairs",
        y_label="s",
        log_x=True,
        log_y=True,
    )
    for step in ("apply", "run", "teardown"):
        steps.series(step, xs, [topo[n][step] for n in sizes])
    threads = report.figure(
        "threads", "Peak threads of the process", x_label="pairs", y_label="threads", log_x=True
    )
    threads.series("Topology", xs, [float(topo[n]["threads"]) for n in sizes])
    threads.series("irqbypass run", xs, [float(cli[n]["threads"]) for n in sizes])
    threads.goal(MAX_THREADS, f"goal: <= {MAX_THREADS}")
    rss = report.figure("rss", "Peak RSS", x_label="pairs", y_label="MB", log_x=True)
    rss.series("Topology", xs, [topo[n]["rss_kb"] / 1024 for n in sizes])
    rss.series("irqbypass run", xs, [cli[n]["rss_kb"] / 1024 for n in sizes])
    report.write(args.json)


if __name__ == "__main__":
    main()
