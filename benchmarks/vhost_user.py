"""A vhost-user back-end's completions into a KVM guest: bypass against relay.

qemu-storage-daemon (vhost-user-blk) completes virtio-blk GET_ID requests
queued one at a time on the vhost-user producer's own ring; each completion
signals the virtqueue's call eventfd, and the plugin's real-mode guest
(PIC line 5) counts it and acknowledges through an ioeventfd (no exit to
userspace, as a virtio notification). Two paths, side by side in one run,
alternating rounds, the same daemon, guest and token:

- bypass: the call eventfd is a KVM irqfd (the kvm-irqfd consumer); this
  process never reads it, the kernel injects;
- relay: what a VMM without the bypass runs: a thread polls the call eventfd,
  reads it and injects with KVM_IRQ_LINE (raise, lower).

Measured per path: completions per second (one request in flight), latency from
the kick (the eventfd write that tells the daemon a request is queued) to the
guest's acknowledgement (p50, p99), and host CPU per interrupt: this process's
threads (the driver that queues and kicks, the relay, the vCPU), the kernel
workers (irqfd injects from a kworker) and the daemon's threads.

    .venv/bin/python benchmarks/vhost_user.py [--count N] [--rounds R] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import select
import threading
import time
from dataclasses import dataclass

import irqbypass
import irqbypass_kvm
import irqbypass_vhost_user
from delivery import Relay, kworker_cpu, thread_cpu
from irqbypass_kvm import Guest, KvmIrqfdConsumer
from irqbypass_vhost_user import StorageDaemon, VhostUserProducer
from report import Report, add_json_option

LINE = 5
PATHS = ("bypass", "relay")


def process_cpu(pid: int) -> float:
    """CPU seconds every thread of process ``pid`` ran so far (schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except OSError:
            continue
    return total / 1e9


@dataclass
class Result:
    name: str
    completed: int
    counted: int
    wall: float
    ours: float  # every thread of this process
    vcpu: float
    driver: float  # the thread that queues, kicks and waits
    kworker: float
    daemon: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.completed / self.wall

    @property
    def host_cpu(self) -> float:
        return self.ours + self.kworker + self.daemon

    @property
    def path_cpu(self) -> float:
        """The interrupt's way from the call eventfd into the guest alone: the
        relay thread, or the kworkers that run irqfd injections."""
        return self.ours - self.vcpu - self.driver + self.kworker

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def drive(name: str, producer: VhostUserProducer, guest: Guest, count: int, pid: int) -> Result:
    """``count`` requests, each queued after the guest acknowledged the previous
    completion's interrupt."""
    ack = guest.ack_eventfd
    assert ack is not None
    poller = select.poll()
    poller.register(ack.fileno(), select.POLLIN)
    ack_fd = ack.fileno()
    latencies = [0.0] * count
    counted0 = guest.count
    me, vcpu_tid = threading.get_native_id(), guest.vcpu_thread_id or -1
    completed = 0
    d0, kw0, threads0, t0 = process_cpu(pid), kworker_cpu(), thread_cpu(), time.perf_counter()
    for i in range(count):
        sent = time.perf_counter()
        producer.submit(1)
        if not poller.poll(10_000):
            raise RuntimeError(
                f"{name}: no acknowledgement after {i} requests ({producer.stats()})"
            )
        os.read(ack_fd, 8)
        latencies[i] = time.perf_counter() - sent
        completed += producer.reap()
    while producer.driver is not None and producer.driver.in_flight:
        completed += producer.reap()  # the used ring may trail the interrupt by a hair
    wall = time.perf_counter() - t0
    threads1, kw, daemon = thread_cpu(), kworker_cpu() - kw0, process_cpu(pid) - d0
    ours = sum(t - threads0.get(tid, 0.0) for tid, t in threads1.items())

    def of(tid: int) -> float:
        return threads1.get(tid, 0.0) - threads0.get(tid, 0.0)

    return Result(
        name, completed, guest.count - counted0, wall, ours, of(vcpu_tid), of(me), kw, daemon,
        latencies,
    )  # fmt: skip


def host_kvm() -> str:
    modules = [m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if os.path.isdir(f"/sys/module/{m}")]
    return ", ".join(modules) or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5_000, help="requests per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per path")
    add_json_option(parser)
    args = parser.parse_args()
    for reason in (irqbypass_kvm.unavailable_reason(), irqbypass_vhost_user.unavailable_reason()):
        if reason is not None:
            print(f"skipped: {reason}")
            return 0
    results: dict[str, list[Result]] = {path: [] for path in PATHS}
    with (
        StorageDaemon() as daemon,
        Guest(line=LINE, ack="eventfd") as guest,
        irqbypass.Eventfd() as token,
        VhostUserProducer(token=token, socket=daemon.socket_path, name="vq0") as producer,
    ):
        assert daemon.pid is not None
        token.read(0)  # the bind's phantom, before either path listens
        for _ in range(args.rounds):
            with KvmIrqfdConsumer(token=token, vm=guest, gsi=LINE):
                drive("warm-up", producer, guest, 200, daemon.pid)
                results["bypass"].append(drive("bypass", producer, guest, args.count, daemon.pid))
            with Relay(guest, token):
                drive("warm-up", producer, guest, 200, daemon.pid)
                results["relay"].append(drive("relay", producer, guest, args.count, daemon.pid))
        if producer.stats()["failed"]:
            print(f"WARNING: {producer.stats()['failed']} requests failed")

    # the round with the least delivery-path CPU per interrupt: the least disturbed
    rows = {p: min(rs, key=lambda r: r.path_cpu / r.completed) for p, rs in results.items()}
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"{args.count} requests per path and round, {args.rounds} rounds, best round shown;"
        f" host KVM: {host_kvm()} (kvm_pvm is a software KVM without VMX: these are this"
        f" machine's figures, not hardware's); load average {load} on {os.cpu_count()} CPUs"
    )
    print("CPU per interrupt, in microseconds:")
    print(
        f"{'path':6} {'done':>6} {'counted':>7} {'done/s':>7} {'driver':>7} {'relay':>7}"
        f" {'vCPU':>7} {'kworker':>8} {'daemon':>7} {'host':>7} {'path':>7}"
        f" {'p50 lat':>8} {'p99 lat':>8}"
    )
    for name, r in rows.items():
        us = 1e6 / r.completed
        print(
            f"{name:6} {r.completed:6d} {r.counted:7d} {r.rate:7.0f} {r.driver * us:7.2f}"
            f" {(r.ours - r.vcpu - r.driver) * us:7.2f} {r.vcpu * us:7.2f}"
            f" {r.kworker * us:8.2f} {r.daemon * us:7.2f} {r.host_cpu * us:7.2f}"
            f" {r.path_cpu * us:7.2f} {r.pct(50) * 1e6:8.1f} {r.pct(99) * 1e6:8.1f}"
        )
    print(
        "(done: completions; counted: interrupts the guest counted; driver: the thread that"
        " queues, kicks and waits for the ack; relay: the relay thread; kworker: kernel"
        " workers (irqfd injection); daemon: qemu-storage-daemon's threads; host: all;"
        " path: relay + kworker, the interrupt's way into the guest alone)"
    )
    for name, rs in results.items():
        if any(r.counted != r.completed for r in rs):
            counted, done = [r.counted for r in rs], [r.completed for r in rs]
            print(f"WARNING: {name}: the guest counted {counted} for {done} completions")
    bypass, relay = rows["bypass"], rows["relay"]
    print("-- bypass against relay")
    print(f"   completions per second: {bypass.rate / relay.rate:.2f}x")
    print(
        f"   relay/bypass latency: p50 {relay.pct(50) / bypass.pct(50):.2f}x,"
        f" p99 {relay.pct(99) / bypass.pct(99):.2f}x"
    )
    for label, cost in (("host", Result.host_cpu), ("delivery-path", Result.path_cpu)):
        b = cost.fget(bypass) / bypass.completed * 1e6  # type: ignore[attr-defined]
        r = cost.fget(relay) / relay.completed * 1e6  # type: ignore[attr-defined]
        print(f"   {label} CPU per interrupt: {b:.2f} us bypass, {r:.2f} us relay ({r / b:.2f}x)")
    pairs = zip(results["bypass"], results["relay"], strict=True)
    print(
        "   per round (rate, host CPU): "
        + ", ".join(
            f"{b.rate / r.rate:.2f}x/{(r.host_cpu / r.completed) / (b.host_cpu / b.completed):.2f}x"
            for b, r in pairs
        )
    )
    write_report(rows, args.json)
    return 0


def write_report(rows: dict[str, Result], path: str | None) -> None:
    report = Report(
        "vhost_user", "qemu-storage-daemon completions into a KVM guest: bypass against relay"
    )
    rate = report.figure(
        "rate",
        "completions per second, one request in flight (best round)",
        x_label="path",
        y_label="completions/s",
        kind="bar",
    )
    rate.series("completions/s", list(PATHS), [rows[p].rate for p in PATHS])
    latency = report.figure(
        "latency",
        "latency from the kick to the guest's acknowledgement",
        x_label="percentile",
        y_label="us",
        kind="bar",
    )
    cpu = report.figure(
        "cpu",
        "host CPU per interrupt (best round)",
        x_label="what",
        y_label="us CPU per interrupt",
        kind="bar",
    )
    for p in PATHS:
        r = rows[p]
        latency.series(p, ["p50", "p99"], [r.pct(50) * 1e6, r.pct(99) * 1e6])
        us = 1e6 / r.completed
        cpu.series(p, ["host", "path", "daemon"], [r.host_cpu * us, r.path_cpu * us, r.daemon * us])
    note = (
        f"host KVM: {host_kvm()} (software KVM without VMX); load average {os.getloadavg()[0]:.2f}"
    )
    for fig in report.figures:
        fig.note = note
    report.write(path)


if __name__ == "__main__":
    raise SystemExit(main())
