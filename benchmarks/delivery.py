"""Interrupt delivery into a real KVM guest: irqfd against a userspace relay.

Every path delivers the same interrupts, one at a time, into the plugin's
real-mode guest and waits for the guest's acknowledgement (the guest writes an
I/O port bound to an ioeventfd, so the acknowledgement itself never leaves the
kernel, as a virtio notification does not). Two interrupt kinds, each by two
paths:

- pin (PIC line 5 of a PIC guest):
  - irqfd: the token eventfd is a KVM irqfd (the kvm-irqfd consumer); the
    kernel injects on every write;
  - relay: a Python thread polls the token eventfd, reads it and injects with
    KVM_IRQ_LINE (raise, lower), as a VMM without irqfd would;
- MSI (vector 0x41 of an x2APIC guest, ``Guest(apic="x2apic")``):
  - irqfd-msi: a kvm-irqfd MSI consumer (a GSI routed to the message); KVM
    injects within the eventfd write itself, without a kworker;
  - relay-msi: the relay thread injects with KVM_SIGNAL_MSI.

Both paths run under two halt-polling settings of the guest's VM, side by side
in one run: the kernel's default (the kvm module's halt_poll_ns) and
halt_poll_ns=0 (KVM_CAP_HALT_POLL: a halted vCPU sleeps at once instead of
busy-waiting for its next interrupt).

Measured per path and setting: guest-counted interrupts per second, host CPU
per interrupt (each thread of this process, from /proc/self/task/*/schedstat;
plus the kernel workers' CPU from /proc/*/task/*/schedstat, because irqfd
injects from a kworker, outside this process), the part of the vCPU's time KVM
spent halt polling (the vCPU's binary stats), and latency from the eventfd
write to the guest's acknowledgement (p50, p99).

    .venv/bin/python benchmarks/delivery.py [--count N] [--rounds R] [--gap-us G] [--json FILE]
"""

from __future__ import annotations

import argparse
import math
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import irqbypass
import irqbypass_kvm
from irqbypass_kvm import Guest, KvmIrqfdConsumer, MsiRoute
from report import Report, add_json_option

LINE = 5
VECTOR = 0x41
MSI = MsiRoute(0xFEE00000, VECTOR)
#: the paths, by interrupt kind
PATHS = {"pin": ("irqfd", "relay"), "msi": ("irqfd-msi", "relay-msi")}


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
    halt_poll: float  # seconds KVM spent polling in the vCPU's halts (in vcpu)

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


def halt_poll_seconds(guest: Guest) -> float:
    """Time KVM spent halt polling on the guest's vCPU so far (0 if unknown)."""
    try:
        stats = guest.vcpu_stats()
    except irqbypass.DeviceError:
        return 0.0
    polled: int = stats["halt_poll_success_ns"] + stats["halt_poll_fail_ns"]
    return polled / 1e9


def drive(
    name: str, guest: Guest, token: irqbypass.Eventfd, count: int, gap: float = 0.0
) -> Result:
    """Fire ``count`` interrupts one by one, each after the previous ack (and,
    with ``gap``, after sleeping that long: a device with idle time between
    interrupts, during which the halted vCPU polls or sleeps)."""
    ack = guest.ack_eventfd
    assert ack is not None
    poller = select.poll()
    poller.register(ack.fileno(), select.POLLIN)
    ack_fd = ack.fileno()
    start_count = guest.count
    latencies = [0.0] * count
    vcpu_tid = guest.vcpu_thread_id
    poll0 = halt_poll_seconds(guest)
    kw0, threads0, t0 = kworker_cpu(), thread_cpu(), time.perf_counter()
    for i in range(count):
        sent = time.perf_counter()
        token.write()
        while not poller.poll(10_000):
            raise RuntimeError(f"{name}: no acknowledgement after {i} interrupts")
        os.read(ack_fd, 8)
        latencies[i] = time.perf_counter() - sent
        if gap:
            time.sleep(gap)
    wall = time.perf_counter() - t0
    threads1, kw = thread_cpu(), kworker_cpu() - kw0
    poll = halt_poll_seconds(guest) - poll0
    cpu = sum(t - threads0.get(tid, 0.0) for tid, t in threads1.items())
    vcpu = threads1.get(vcpu_tid or -1, 0.0) - threads0.get(vcpu_tid or -1, 0.0)
    me = threading.get_native_id()
    producer = threads1.get(me, 0.0) - threads0.get(me, 0.0)
    delivered = guest.count - start_count
    return Result(name, delivered, wall, cpu, vcpu, producer, kw, latencies, poll)


class Relay:
    """The userspace path: read the eventfd, inject with KVM_IRQ_LINE (pin) or
    KVM_SIGNAL_MSI (``msi``)."""

    def __init__(self, guest: Guest, token: irqbypass.Eventfd, msi: MsiRoute | None = None) -> None:
        assert guest.vm is not None
        self.vm = guest.vm
        self.msi = msi
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
            self.inject()

    def inject(self) -> None:
        """One interrupt into the guest: the MSI, or an edge on the pin."""
        if self.msi is not None:
            self.vm.signal_msi(self.msi)
        else:
            self.vm.irq_line(LINE, 1)
            self.vm.irq_line(LINE, 0)

    def __enter__(self) -> Relay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.write()
        self.thread.join()
        self.stop.close()


#: the halt-polling settings compared: the kernel's default, and never poll
SETTINGS: dict[str, int | None] = {"default": None, "poll=0": 0}


def per_second(a: Result, b: Result, cpu: Callable[[Result], float]) -> float:
    """How many more interrupts per CPU second ``a`` delivers than ``b`` (inf
    when ``a`` used none: an MSI irqfd injects within the eventfd write, so its
    delivery path has no thread of its own to charge; it is in the device's)."""
    if cpu(a) <= 0:
        return math.inf
    return (a.delivered / cpu(a)) / (b.delivered / cpu(b)) if cpu(b) > 0 else 0.0


def ratio(value: float) -> str:
    return "inf (no CPU of its own)" if math.isinf(value) else f"{value:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="interrupts per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per path")
    parser.add_argument(
        "--gap-us",
        type=float,
        default=0.0,
        help="sleep this long after each acknowledgement (default 0: back to back)",
    )
    add_json_option(parser)
    args = parser.parse_args()
    reason = irqbypass_kvm.unavailable_reason()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0

    # (setting, path) -> one Result per round; a fresh guest per setting and
    # round, so no idle guest's vCPU runs (or polls) during another's run
    results: dict[tuple[str, str], list[Result]] = {
        (setting, path): [] for setting in SETTINGS for paths in PATHS.values() for path in paths
    }
    default_ns = "?"
    try:
        with open("/sys/module/kvm/parameters/halt_poll_ns") as param:
            default_ns = param.read().strip()
    except OSError:
        pass
    gap = args.gap_us / 1e6
    for _ in range(args.rounds):
        for setting, halt_poll_ns in SETTINGS.items():
            with (
                Guest(line=LINE, ack="eventfd", halt_poll_ns=halt_poll_ns) as guest,
                irqbypass.Eventfd() as token,
            ):
                with KvmIrqfdConsumer(token=token, vm=guest):
                    drive("warm-up", guest, token, 500)
                    results[setting, "irqfd"].append(drive("irqfd", guest, token, args.count, gap))
                with Relay(guest, token):
                    drive("warm-up", guest, token, 500)
                    results[setting, "relay"].append(drive("relay", guest, token, args.count, gap))
            with (
                Guest(apic="x2apic", ack="eventfd", halt_poll_ns=halt_poll_ns) as guest,
                irqbypass.Eventfd() as token,
            ):
                with KvmIrqfdConsumer(token=token, vm=guest, msi=MSI):
                    drive("warm-up", guest, token, 500)
                    run = drive("irqfd-msi", guest, token, args.count, gap)
                    results[setting, "irqfd-msi"].append(run)
                with Relay(guest, token, msi=MSI):
                    drive("warm-up", guest, token, 500)
                    run = drive("relay-msi", guest, token, args.count, gap)
                    results[setting, "relay-msi"].append(run)
                if guest.vector_counts() != {VECTOR: guest.count}:
                    raise SystemExit(f"MSIs arrived on other vectors: {guest.vector_counts()}")

    def best(key: tuple[str, str]) -> Result:
        """The round with the least delivery-path CPU per interrupt (the least disturbed)."""
        return min(results[key], key=lambda r: r.path_cpu / r.delivered)

    print(
        f"{args.count} interrupts per path, setting and round, {args.rounds} rounds, best round"
        f" shown; kernel default halt_poll_ns = {default_ns}; gap after each ack"
        f" {args.gap_us:g} us"
    )
    print("CPU per guest-counted interrupt, in microseconds:")
    print(
        f"{'setting':8} {'path':9} {'counted':>7} {'irq/s':>7} {'device':>7} {'relay':>7}"
        f" {'vCPU':>7} {'(poll)':>7} {'kworker':>8} {'host':>7} {'path':>7}"
        f" {'p50 lat':>8} {'p99 lat':>8}"
    )
    rows = {key: best(key) for key in results}
    for (setting, name), r in rows.items():
        us = 1e6 / r.delivered
        print(
            f"{setting:8} {name:9} {r.delivered:7d} {r.rate:7.0f} {r.producer * us:7.2f}"
            f" {(r.cpu - r.vcpu - r.producer) * us:7.2f} {r.vcpu * us:7.2f}"
            f" {r.halt_poll * us:7.2f} {r.kworker * us:8.2f} {r.host_cpu * us:7.2f}"
            f" {r.path_cpu * us:7.2f} {r.pct(50) * 1e6:8.1f} {r.pct(99) * 1e6:8.1f}"
        )
    print(
        "(device: the thread that writes the eventfd and waits for the ack; relay: the"
        " relay thread; vCPU: the guest's thread, halt polling included; (poll): the part"
        " of vCPU KVM spent halt polling; host: all of them; path: relay + kworker, the"
        " delivery path alone)"
    )
    for key, rs in results.items():
        if any(r.delivered != args.count for r in rs):
            print(
                f"WARNING: {key}: the guest counted {[r.delivered for r in rs]}, not {args.count}"
            )
    for setting in SETTINGS:
        for kind, (irqfd_path, relay_path) in PATHS.items():
            irqfd, relay = rows[setting, irqfd_path], rows[setting, relay_path]
            print(f"-- halt polling {setting}, {kind}: {irqfd_path} against {relay_path}")
            path = per_second(irqfd, relay, lambda r: r.path_cpu)
            host = per_second(irqfd, relay, lambda r: r.host_cpu)
            print(f"   interrupts per delivery-path CPU second: {ratio(path)}")
            print(
                f"   interrupts per host CPU second (vCPU, device, relay, kworkers): {host:.2f}x"
                f" (goal >= 2x: {'met' if host >= 2 else 'NOT met'}; the vCPU's cost, which"
                " both paths pay alike, is in it)"
            )
            apart = per_second(irqfd, relay, lambda r: r.host_cpu - r.vcpu)
            print(
                "   interrupts per host CPU second apart from the vCPU (device, relay,"
                f" kworkers): {ratio(apart)}"
            )
            print(f"   interrupts per second: {irqfd.rate / relay.rate:.2f}x")
            print(
                f"   {relay_path}/{irqfd_path} latency: p50 {relay.pct(50) / irqfd.pct(50):.2f}x,"
                f" p99 {relay.pct(99) / irqfd.pct(99):.2f}x"
            )
            pairs = zip(results[setting, irqfd_path], results[setting, relay_path], strict=True)
            rounds = [
                (per_second(i, r, lambda x: x.path_cpu), per_second(i, r, lambda x: x.host_cpu))
                for i, r in pairs
            ]
            print(
                "   per round (path, host): "
                + ", ".join(f"{ratio(p)}/{ratio(h)}" for p, h in rounds)
            )
    print("-- poll=0 against the default, same path")
    for name in (path for paths in PATHS.values() for path in paths):
        d, z = rows["default", name], rows["poll=0", name]
        host_d, host_z = d.host_cpu / d.delivered * 1e6, z.host_cpu / z.delivered * 1e6
        print(
            f"   {name}: host CPU per interrupt {host_z:.2f} us with poll=0, {host_d:.2f} us"
            f" with the default ({host_z / host_d:.2f}x); irq/s {z.rate / d.rate:.2f}x;"
            f" latency p50 {z.pct(50) / d.pct(50):.2f}x, p99 {z.pct(99) / d.pct(99):.2f}x"
        )
    write_report(rows, args.json)
    return 0


def write_report(rows: dict[tuple[str, str], Result], path: str | None) -> None:
    report = Report("delivery", "Interrupt delivery into a KVM guest: irqfd against a relay")
    cpu = report.figure(
        "cpu",
        "host CPU per guest-counted interrupt (best round)",
        x_label="halt polling",
        y_label="us CPU per interrupt",
        kind="bar",
    )
    latency = report.figure(
        "latency",
        "latency from the eventfd write to the guest's acknowledgement",
        x_label="halt polling, percentile",
        y_label="us",
        kind="bar",
    )
    for name in (path for paths in PATHS.values() for path in paths):
        for part, cost in (("host", lambda r: r.host_cpu), ("path", lambda r: r.path_cpu)):
            cpu.series(
                f"{name} ({part})",
                list(SETTINGS),
                [cost(rows[s, name]) / rows[s, name].delivered * 1e6 for s in SETTINGS],
            )
        latency.series(
            name,
            [f"{s} p{p}" for s in SETTINGS for p in (50, 99)],
            [rows[s, name].pct(p) * 1e6 for s in SETTINGS for p in (50, 99)],
        )
    report.write(path)


if __name__ == "__main__":
    sys.exit(main())
