"""Interrupt delivery into a real KVM guest: irqfd against a userspace relay.

Both paths deliver the same interrupts, one at a time, into the plugin's
real-mode guest (PIC line 5) and wait for the guest's acknowledgement (the
guest writes an I/O port bound to an ioeventfd, so the acknowledgement itself
never leaves the kernel, as a virtio notification does not):

- irqfd: the token eventfd is a KVM irqfd (the kvm-irqfd consumer); the kernel
  injects on every write;
- relay: a Python thread polls the token eventfd, reads it and injects with
  KVM_IRQ_LINE (raise, lower), as a VMM without irqfd would.

Measured per path, in one run: guest-counted interrupts per second, host CPU
per interrupt (each thread of this process, from /proc/self/task/*/schedstat;
plus the kernel workers' CPU from /proc/*/task/*/schedstat, because irqfd
injects from a kworker, outside this process), and latency from the eventfd write to the
guest's acknowledgement (p50, p99).

    .venv/bin/python benchmarks/delivery.py [--count N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import irqbypass
import irqbypass_kvm
from irqbypass_kvm import Guest, KvmIrqfdConsumer

LINE = 5


def thread_cpu() -> dict[int, float]:
    """CPU seconds each live thread of this process ran (schedstat, nanoseconds)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat:
                out[int(tid)] = int(stat.read().split()[0]) / 1e9
        except OSError:
            continue
    return out


def kworker_cpu() -> float:
    """CPU seconds all kernel workers ran so far (schedstat, nanoseconds)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if not comm.read().startswith("kworker"):
                    continue
            with open(f"/proc/{pid}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except OSError:
            continue
    return total / 1e9


@dataclass
class Result:
    name: str
    delivered: int
    wall: float
    cpu: float
    vcpu: float
    producer: float
    kworker: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.delivered / self.wall

    @property
    def host_cpu(self) -> float:
        """Everything: this process's threads (the vCPU's included) and kworkers."""
        return self.cpu + self.kworker

    @property
    def path_cpu(self) -> float:
        """The delivery path: neither the device (producer) nor the guest (vCPU):
        the relay thread, or the kworkers that run irqfd injections."""
        return self.cpu - self.vcpu - self.producer + self.kworker

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def drive(
    name: str, guest: Guest, token: irqbypass.Eventfd, count: int, setup: Callable[[], None]
) -> Result:
    """Fire ``count`` interrupts one by one, each after the previous ack."""
    ack = guest.ack_eventfd
    assert ack is not None
    poller = select.poll()
    poller.register(ack.fileno(), select.POLLIN)
    ack_fd = ack.fileno()
    start_count = guest.count
    latencies = [0.0] * count
    setup()
    vcpu_tid = guest.vcpu_thread_id
    kw0, threads0, t0 = kworker_cpu(), thread_cpu(), time.perf_counter()
    for i in range(count):
        sent = time.perf_counter()
        token.write()
        while not poller.poll(10_000):
            raise RuntimeError(f"{name}: no acknowledgement after {i} interrupts")
        os.read(ack_fd, 8)
        latencies[i] = time.perf_counter() - sent
    wall = time.perf_counter() - t0
    threads1, kw = thread_cpu(), kworker_cpu() - kw0
    cpu = sum(t - threads0.get(tid, 0.0) for tid, t in threads1.items())
    vcpu = threads1.get(vcpu_tid or -1, 0.0) - threads0.get(vcpu_tid or -1, 0.0)
    me = threading.get_native_id()
    producer = threads1.get(me, 0.0) - threads0.get(me, 0.0)
    delivered = guest.count - start_count
    return Result(name, delivered, wall, cpu, vcpu, producer, kw, latencies)


class Relay:
    """The userspace path: read the eventfd, inject with KVM_IRQ_LINE."""

    def __init__(self, guest: Guest, token: irqbypass.Eventfd) -> None:
        assert guest.vm is not None
        self.vm = guest.vm
        self.token = token
        self.stop = irqbypass.Eventfd()
        self.thread = threading.Thread(target=self.run, name="relay")

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.token.fileno(), select.POLLIN)
        poller.register(self.stop.fileno(), select.POLLIN)
        token_fd = self.token.fileno()
        while True:
            ready = poller.poll()
            if any(fd != token_fd for fd, _ in ready):
                return
            try:
                os.read(token_fd, 8)
            except BlockingIOError:
                continue
            self.vm.irq_line(LINE, 1)
            self.vm.irq_line(LINE, 0)

    def __enter__(self) -> Relay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.write()
        self.thread.join()
        self.stop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="interrupts per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per path")
    args = parser.parse_args()
    reason = irqbypass_kvm.unavailable_reason()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0

    results: dict[str, list[Result]] = {"irqfd": [], "relay": []}
    with Guest(line=LINE, ack="eventfd") as guest, irqbypass.Eventfd() as token:
        for _ in range(args.rounds):
            consumer = KvmIrqfdConsumer(token=token, vm=guest)
            with consumer:
                drive("warm-up", guest, token, 500, lambda: None)
                results["irqfd"].append(drive("irqfd", guest, token, args.count, lambda: None))
            with Relay(guest, token):
                drive("warm-up", guest, token, 500, lambda: None)
                results["relay"].append(drive("relay", guest, token, args.count, lambda: None))

    def best(name: str) -> Result:
        """The round with the least host CPU per interrupt (the least disturbed)."""
        return min(results[name], key=lambda r: r.path_cpu / r.delivered)

    print(f"{args.count} interrupts per path and round, {args.rounds} rounds, best round shown")
    print("CPU per guest-counted interrupt, in microseconds:")
    print(
        f"{'path':6} {'counted':>7} {'irq/s':>7} {'device':>7} {'relay':>7} {'vCPU':>7}"
        f" {'kworker':>8} {'host':>7} {'path':>7} {'p50 lat':>8} {'p99 lat':>8}"
    )
    rows = {name: best(name) for name in results}
    for name, r in rows.items():
        us = 1e6 / r.delivered
        print(
            f"{name:6} {r.delivered:7d} {r.rate:7.0f} {r.producer * us:7.2f}"
            f" {(r.cpu - r.vcpu - r.producer) * us:7.2f} {r.vcpu * us:7.2f}"
            f" {r.kworker * us:8.2f} {r.host_cpu * us:7.2f} {r.path_cpu * us:7.2f}"
            f" {r.pct(50) * 1e6:8.1f} {r.pct(99) * 1e6:8.1f}"
        )
    print(
        "(device: the thread that writes the eventfd and waits for the ack; relay: the"
        " relay thread; vCPU: the guest's thread, halt polling included; host: all of"
        " them; path: relay + kworker, the delivery path alone)"
    )
    for name, rs in results.items():
        if any(r.delivered != args.count for r in rs):
            print(
                f"WARNING: {name}: the guest counted {[r.delivered for r in rs]}, not {args.count}"
            )
    irqfd, relay = rows["irqfd"], rows["relay"]

    def ratio(cpu: Callable[[Result], float]) -> float:
        return (irqfd.delivered / cpu(irqfd)) / (relay.delivered / cpu(relay))

    print(
        f"irqfd/relay interrupts per delivery-path CPU second: {ratio(lambda r: r.path_cpu):.2f}x"
        " (goal >= 2x)"
    )
    print(
        f"irqfd/relay interrupts per host CPU second (vCPU included): "
        f"{ratio(lambda r: r.host_cpu):.2f}x"
    )
    print(f"irqfd/relay interrupts per second: {irqfd.rate / relay.rate:.2f}x")
    print(
        f"relay/irqfd latency: p50 {relay.pct(50) / irqfd.pct(50):.2f}x, "
        f"p99 {relay.pct(99) / irqfd.pct(99):.2f}x"
    )
    spread = [f"{r.path_cpu / r.delivered * 1e6:.2f}" for r in results["irqfd"]]
    spread_relay = [f"{r.path_cpu / r.delivered * 1e6:.2f}" for r in results["relay"]]
    print(f"(path CPU/irq in every round: irqfd {spread} us, relay {spread_relay} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
