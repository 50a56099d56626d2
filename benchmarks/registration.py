"""Cost of a pair's full life (register both, unregister both) with N pairs registered.

Side by side, in one run, on the same endpoints:
- irqbypass.Manager, fast path (no plugin implements a lifecycle hook);
- irqbypass.Manager, wrapped path (one pass-through wrapper on every hook);
- floor: a hand-written two-dict manager calling the methods directly;
- floor + lock: the same under one lock (for reference: the lock is required);
- list walk: the kernel's pre-2025 algorithm (walk both lists on every call).

Goals (docs/benchmarks.md): within 2.0x of the floor at 100 and 100k pairs; the
list walk at 10k at least 50x slower than irqbypass. Usage:
    python benchmarks/registration.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import irqbypass
import irqbypass.plugin
from report import Report, add_json_option


class P(irqbypass.Producer):
    def add_consumer(self, consumer: Any) -> None:
        pass

    def del_consumer(self, consumer: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    def start(self) -> None:
        pass


class C(irqbypass.Consumer):
    def add_producer(self, producer: Any) -> None:
        pass

    def del_producer(self, producer: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    def start(self) -> None:
        pass


class FloorManager:
    """Two dicts and direct method calls: the least a Python manager can do."""

    def __init__(self) -> None:
        self.producers: dict[Any, Any] = {}
        self.consumers: dict[Any, Any] = {}

    def register_producer(self, p: Any) -> None:
        if p.token in self.producers:
            raise RuntimeError("EBUSY")
        c = self.consumers.get(p.token)
        if c is not None:
            p.stop(), c.stop(), p.add_consumer(c), c.add_producer(p), c.start(), p.start()
        self.producers[p.token] = p

    def register_consumer(self, c: Any) -> None:
        if c.token in self.consumers:
            raise RuntimeError("EBUSY")
        p = self.producers.get(c.token)
        if p is not None:
            p.stop(), c.stop(), p.add_consumer(c), c.add_producer(p), c.start(), p.start()
        self.consumers[c.token] = c

    def unregister_producer(self, p: Any) -> None:
        if self.producers.get(p.token) is not p:
            return
        c = self.consumers.get(p.token)
        if c is not None:
            p.stop(), c.stop(), c.del_producer(p), p.del_consumer(c), c.start(), p.start()
        del self.producers[p.token]

    def unregister_consumer(self, c: Any) -> None:
        if self.consumers.get(c.token) is not c:
            return
        p = self.producers.get(c.token)
        if p is not None:
            p.stop(), c.stop(), c.del_producer(p), p.del_consumer(c), c.start(), p.start()
        del self.consumers[c.token]


class LockedFloorManager(FloorManager):
    """The floor plus the one lock that serializes every change (semantics.md),
    taken around a delegating call: a reference for what the lock costs."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def register_producer(self, p: Any) -> None:
        self.lock.acquire()
        try:
            super().register_producer(p)
        finally:
            self.lock.release()

    def register_consumer(self, c: Any) -> None:
        self.lock.acquire()
        try:
            super().register_consumer(c)
        finally:
            self.lock.release()

    def unregister_producer(self, p: Any) -> None:
        self.lock.acquire()
        try:
            super().unregister_producer(p)
        finally:
            self.lock.release()

    def unregister_consumer(self, c: Any) -> None:
        self.lock.acquire()
        try:
            super().unregister_consumer(c)
        finally:
            self.lock.release()


class ListWalkManager:
    """The kernel before 2025: two lists, walked on every registration."""

    def __init__(self) -> None:
        self.producers: list[Any] = []
        self.consumers: list[Any] = []

    def register_producer(self, p: Any) -> None:
        for tmp in self.producers:
            if tmp.token == p.token or tmp is p:
                raise RuntimeError("EBUSY")
        for c in self.consumers:
            if c.token == p.token:
                p.stop(), c.stop(), p.add_consumer(c), c.add_producer(p), c.start(), p.start()
                break
        self.producers.append(p)

    def register_consumer(self, c: Any) -> None:
        for tmp in self.consumers:
            if tmp.token == c.token or tmp is c:
                raise RuntimeError("EBUSY")
        for p in self.producers:
            if p.token == c.token:
                p.stop(), c.stop(), p.add_consumer(c), c.add_producer(p), c.start(), p.start()
                break
        self.consumers.append(c)

    def unregister_producer(self, p: Any) -> None:
        for i, tmp in enumerate(self.producers):
            if tmp is p:
                for c in self.consumers:
                    if c.token == p.token:
                        p.stop(), c.stop(), c.del_producer(p), p.del_consumer(c)
                        c.start(), p.start()
                        break
                del self.producers[i]
                return

    def unregister_consumer(self, c: Any) -> None:
        for i, tmp in enumerate(self.consumers):
            if tmp is c:
                for p in self.producers:
                    if p.token == c.token:
                        p.stop(), c.stop(), c.del_producer(p), p.del_consumer(c)
                        c.start(), p.start()
                        break
                del self.consumers[i]
                return


class PassThrough:
    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_del(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_stop(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        return (yield)

    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_start(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        return (yield)


def wrapped_manager() -> irqbypass.Manager:
    mgr = irqbypass.Manager()
    mgr.plugins.register(PassThrough(), name="pass-through")
    return mgr


MANAGERS: dict[str, Callable[[], Any]] = {
    "irqbypass": irqbypass.Manager,
    "irqbypass+wrapper": wrapped_manager,
    "floor (two dicts)": FloorManager,
    "floor + lock": LockedFloorManager,
    "list walk (pre-2025)": ListWalkManager,
}


def populate(mgr: Any, n: int) -> None:
    for i in range(n):
        mgr.register_producer(P(token=("bg", i)))
        mgr.register_consumer(C(token=("bg", i)))


def pair_lives(mgr: Any, count: int) -> float:
    """Seconds per pair life, over ``count`` lives."""
    ends = [(P(token=("fg", i)), C(token=("fg", i))) for i in range(count)]
    t0 = time.perf_counter()
    for p, c in ends:
        mgr.register_producer(p)
        mgr.register_consumer(c)
        mgr.unregister_consumer(c)
        mgr.unregister_producer(p)
    return (time.perf_counter() - t0) / count


def measure(size: int, rounds: int, lives: int, walk_lives: int) -> dict[str, float]:
    managers = {}
    for name, factory in MANAGERS.items():
        if name.startswith("list walk") and size > 10_000:
            continue  # minutes per figure: the point is made at 10k
        managers[name] = factory()
        populate(managers[name], size)
    best = {name: float("inf") for name in managers}
    for _ in range(rounds):  # interleaved, best of rounds
        for name, mgr in managers.items():
            n = walk_lives if name.startswith("list walk") else lives
            best[name] = min(best[name], pair_lives(mgr, n))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    add_json_option(parser)
    args = parser.parse_args()
    rounds, lives = (2, 500) if args.quick else (7, 5000)
    sizes = [100, 10_000, 100_000]
    print(f"pair life = register producer, register consumer, unregister both "
          f"(12 callbacks); best of {rounds} rounds")  # fmt: skip
    print(f"{'registered pairs':>16}  {'manager':<22} {'us/life':>10} {'vs floor':>9}")
    results = {}
    for size in sizes:
        walk_lives = max(5, min(lives, 2_000_000 // max(size, 1)))
        best = measure(size, rounds, lives, walk_lives)
        results[size] = best
        floor = best["floor (two dicts)"]
        for name, seconds in best.items():
            print(f"{size:>16,}  {name:<22} {seconds * 1e6:>10.2f} {seconds / floor:>8.2f}x")
    print()
    for size in (100, 100_000):
        ratio = results[size]["irqbypass"] / results[size]["floor (two dicts)"]
        verdict = "met" if ratio <= 2.0 else "NOT met"
        print(f"goal irqbypass <= 2.0x floor at {size:,}: {ratio:.2f}x ({verdict})")
    walk = results[10_000]["list walk (pre-2025)"] / results[10_000]["irqbypass"]
    print(f"goal list walk >= 50x irqbypass at 10,000: {walk:.0f}x "
          f"({'met' if walk >= 50 else 'NOT met'})")  # fmt: skip
    wrap = results[100]["irqbypass+wrapper"] / results[100]["irqbypass"]
    print(f"wrapped path (one wrapper on every hook) vs fast path at 100: {wrap:.1f}x")
    write_report(results, rounds, args.json)


def write_report(results: dict[int, dict[str, float]], rounds: int, path: str | None) -> None:
    report = Report("registration", "Cost of one pair's life with N pairs registered")
    life = report.figure(
        "life",
        f"us per pair life (best of {rounds} rounds)",
        x_label="registered pairs",
        y_label="us per pair life",
        log_x=True,
        log_y=True,
    )
    ratio = report.figure(
        "ratio",
        "cost against the floor (two dicts)",
        x_label="registered pairs",
        y_label="x floor",
        log_x=True,
        log_y=True,
    )
    for name in MANAGERS:
        sizes = [size for size, best in results.items() if name in best]
        life.series(name, sizes, [results[s][name] * 1e6 for s in sizes])
        if not name.startswith("list walk"):
            ratios = [results[s][name] / results[s]["floor (two dicts)"] for s in sizes]
            ratio.series(name, sizes, ratios)
    ratio.goal(2.0, "goal: irqbypass <= 2.0x floor")
    report.write(path)


if __name__ == "__main__":
    main()
