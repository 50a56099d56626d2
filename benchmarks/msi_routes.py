"""MSI routing that scales: open and close N kvm-irqfd MSI consumers on one VM.

Three ways, side by side in one run, each on a fresh VM (in-kernel irqchip, no
vCPU: routing and irqfds need none) for N = 64, 1024 and 4000:

- floor: a bare loop that issues the same ioctls from buffers prepared before
  the clock starts: one KVM_SET_GSI_ROUTING with the N MSI entries, then N
  KVM_IRQFD assigns; closing, N KVM_IRQFD deassigns, then one
  KVM_SET_GSI_ROUTING back to the defaults. Nothing can do less.
- batched: ``KvmIrqfdConsumer.open_group(consumers)`` and ``close_group`` (what
  ``Topology.apply``/``teardown`` call): one routing write each way.
- one at a time: ``consumer.open()`` for each, then ``close()`` for each (a
  routing write per consumer, whose kernel side copies the whole table).

Goals (issue 10), batched: the cost per consumer at 4000 within 1.5x of that at
64; open within 4x of the floor and close within 1.5x of it, at every N.

    .venv/bin/python benchmarks/msi_routes.py [--sizes 64,1024,4000] [--rounds R] [--json FILE]

Wall-clock times under load are noisy (KVM's routing write waits for an SRCU
grace period and its deassign flushes a workqueue, both of which wait for the
other CPUs): each figure is the best of its rounds, every way of every round on
a fresh VM, the ways interleaved.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys
import time
from collections.abc import Callable

import irqbypass
import irqbypass_kvm
from irqbypass_kvm import KvmIrqfdConsumer, MsiRoute, Vm, _abi, _kvm, _routing
from report import Report, add_json_option

Timing = tuple[float, float]  # open, close (seconds)
#: one at a time is 100x slower and no goal depends on it: this many rounds only
SLOW_ROUNDS = 2


def fresh_vm(kvm_fd: int) -> Vm:
    vm = Vm.create(kvm_fd)
    _kvm.ioctl(vm.fd, _abi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")
    return vm


def route(i: int) -> MsiRoute:
    return MsiRoute(0xFEE00000, 0x20 + i % 0xDF)


def floor(kvm_fd: int, tokens: list[irqbypass.Eventfd]) -> Timing:
    """The same ioctls from prepared buffers: the least any implementation pays."""
    n = len(tokens)
    vm = fresh_vm(kvm_fd)
    try:
        full = _routing.RoutingTable()
        for i in range(n):
            full._put(24 + i, route(i))
        full_buf = ctypes.create_string_buffer(full.buffer())
        empty_buf = ctypes.create_string_buffer(_routing.RoutingTable().buffer())
        assigns = [_abi.kvm_irqfd(fd=t.fileno(), gsi=24 + i) for i, t in enumerate(tokens)]
        deassigns = [
            _abi.kvm_irqfd(fd=t.fileno(), gsi=24 + i, flags=_abi.KVM_IRQFD_FLAG_DEASSIGN)
            for i, t in enumerate(tokens)
        ]
        assign_ptrs = [ctypes.addressof(a) for a in assigns]
        deassign_ptrs = [ctypes.addressof(d) for d in deassigns]
        ioctl, fd = _kvm.raw_ioctl, vm.fd
        routing, irqfd = _abi.KVM_SET_GSI_ROUTING, _abi.KVM_IRQFD
        t0 = time.perf_counter()
        ok = ioctl(fd, routing, ctypes.addressof(full_buf)) == 0
        for ptr in assign_ptrs:
            ok &= ioctl(fd, irqfd, ptr) == 0
        t1 = time.perf_counter()
        for ptr in deassign_ptrs:
            ok &= ioctl(fd, irqfd, ptr) == 0
        ok &= ioctl(fd, routing, ctypes.addressof(empty_buf)) == 0
        t2 = time.perf_counter()
        if not ok:
            raise SystemExit("the floor's ioctls failed: is KVM working here?")
        return t1 - t0, t2 - t1
    finally:
        vm.close()


def consumers_on(vm: Vm, tokens: list[irqbypass.Eventfd]) -> list[KvmIrqfdConsumer]:
    return [
        KvmIrqfdConsumer(token=t, vm=vm.fd, msi=route(i), name=f"v{i}")
        for i, t in enumerate(tokens)
    ]


def batched(kvm_fd: int, tokens: list[irqbypass.Eventfd]) -> Timing:
    vm = fresh_vm(kvm_fd)
    try:
        consumers = consumers_on(vm, tokens)
        t0 = time.perf_counter()
        KvmIrqfdConsumer.open_group(consumers)
        t1 = time.perf_counter()
        check_open(consumers, vm)
        t2 = time.perf_counter()
        KvmIrqfdConsumer.close_group(consumers)
        t3 = time.perf_counter()
        return t1 - t0, t3 - t2
    finally:
        vm.close()


def one_at_a_time(kvm_fd: int, tokens: list[irqbypass.Eventfd]) -> Timing:
    vm = fresh_vm(kvm_fd)
    try:
        consumers = consumers_on(vm, tokens)
        t0 = time.perf_counter()
        for consumer in consumers:
            consumer.open()
        t1 = time.perf_counter()
        check_open(consumers, vm)
        t2 = time.perf_counter()
        for consumer in consumers:
            consumer.close()
        t3 = time.perf_counter()
        return t1 - t0, t3 - t2
    finally:
        vm.close()


def check_open(consumers: list[KvmIrqfdConsumer], vm: Vm) -> None:
    """Every consumer assigned with its own route (outside the timed part)."""
    shared = Vm.borrow(vm.fd)
    try:
        if not all(c.assigned for c in consumers) or len(shared.msi_routes) != len(consumers):
            raise SystemExit("not every consumer was opened: this is a bug")
    finally:
        shared.close()


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"this benchmark needs {needed} open files and the hard limit is {hard}; "
            f"raise it (ulimit -Hn {needed}, as root) or pass smaller --sizes"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,1024,4000", help="comma-separated N (<= 4056)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=7,
        help=f"best of R rounds (default 7; one at a time: the first {SLOW_ROUNDS} only)",
    )
    add_json_option(parser)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if not sizes or min(sizes) < 1 or max(sizes) > _routing.MAX_MSI_ROUTES or args.rounds < 1:
        parser.error(f"sizes must be 1..{_routing.MAX_MSI_ROUTES} and rounds >= 1")
    reason = irqbypass_kvm.unavailable_reason()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    raise_fd_limit(max(sizes) + 256)
    ways: dict[str, Callable[[int, list[irqbypass.Eventfd]], Timing]] = {
        "floor": floor,
        "batched": batched,
        "one at a time": one_at_a_time,
    }
    best: dict[tuple[str, int], list[float]] = {}
    kvm_fd = _kvm.open_device()
    try:
        for n in sizes:
            tokens = [irqbypass.Eventfd() for _ in range(n)]
            try:
                for r in range(args.rounds):
                    for name, way in ways.items():
                        if name == "one at a time" and r >= SLOW_ROUNDS:
                            continue
                        opened, closed = way(kvm_fd, tokens)
                        old = best.get((name, n), [opened, closed])
                        best[(name, n)] = [min(old[0], opened), min(old[1], closed)]
                    print(f"  N={n} round {r + 1}/{args.rounds} done", file=sys.stderr)
            finally:
                for token in tokens:
                    token.close()
    finally:
        os.close(kvm_fd)
    print_table(sizes, best, args.rounds)
    goals_met = print_goals(sizes, best)
    write_report(sizes, best, args.json)
    return 0 if goals_met else 1


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def print_table(sizes: list[int], best: dict[tuple[str, int], list[float]], rounds: int) -> None:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"MSI consumers on one VM, best of {rounds} rounds (one at a time: of "
        f"{min(rounds, SLOW_ROUNDS)}), load average {load}:"
    )
    print()
    print(
        "| N | floor open | batched open | x floor | one at a time open "
        "| floor close | batched close | x floor | one at a time close "
        "| batched open / consumer | batched close / consumer |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        fo, fc = best[("floor", n)]
        bo, bc = best[("batched", n)]
        oo, oc = best[("one at a time", n)]
        print(
            f"| {n} | {fmt(fo)} | {fmt(bo)} | {bo / fo:.2f}x | {fmt(oo)} "
            f"| {fmt(fc)} | {fmt(bc)} | {bc / fc:.2f}x | {fmt(oc)} "
            f"| {bo / n * 1e6:.2f} us | {bc / n * 1e6:.2f} us |"
        )
    print()


def print_goals(sizes: list[int], best: dict[tuple[str, int], list[float]]) -> bool:
    met = True

    def goal(text: str, value: float, limit: float) -> None:
        nonlocal met
        ok = value <= limit
        met &= ok
        print(f"goal {text}: {value:.2f}x (<= {limit}x: {'met' if ok else 'NOT met'})")

    lo, hi = min(sizes), max(sizes)
    for i, side in enumerate(("open", "close")):
        per_lo = best[("batched", lo)][i] / lo
        per_hi = best[("batched", hi)][i] / hi
        goal(f"batched {side} per consumer, N={hi} against N={lo}", per_hi / per_lo, 1.5)
        floor_lo = best[("floor", lo)][i] / lo
        floor_hi = best[("floor", hi)][i] / hi
        print(
            f"  (the floor's own {side} per consumer, N={hi} against N={lo}: "
            f"{floor_hi / floor_lo:.2f}x; KVM's deassign walks the VM's whole irqfd list)"
            if side == "close"
            else f"  (the floor's own {side} per consumer, N={hi} against N={lo}: "
            f"{floor_hi / floor_lo:.2f}x)"
        )
    for n in sizes:
        goal(
            f"batched open against the floor, N={n}",
            best[("batched", n)][0] / best[("floor", n)][0],
            4.0,
        )
        goal(
            f"batched close against the floor, N={n}",
            best[("batched", n)][1] / best[("floor", n)][1],
            1.5,
        )
    return met


def write_report(
    sizes: list[int], best: dict[tuple[str, int], list[float]], path: str | None
) -> None:
    report = Report("msi_routes", "Opening and closing N MSI consumers on one VM")
    for i, side in enumerate(("open", "close")):
        fig = report.figure(
            side,
            f"{side} of N MSI consumers on one VM: us per consumer",
            x_label="MSI consumers on the VM (N)",
            y_label="us per consumer",
            log_x=True,
            log_y=True,
        )
        for name in ("floor", "batched", "one at a time"):
            fig.series(name, list(sizes), [best[(name, n)][i] / n * 1e6 for n in sizes])
    report.write(path)


if __name__ == "__main__":
    sys.exit(main())
