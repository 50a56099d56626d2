"""A real device's MSI into a KVM guest: the irqfd path against a userspace relay.

Runs in the test guest (the kvm and vfio families: QEMU's edu behind vfio-pci,
and kvm_amd on the SVM that TCG emulates), on the device named by ``--device``:

    scripts/guest kvm,vfio --exec 'python benchmarks/chain_delivery.py \\
        --device $IRQBYPASS_TEST_VFIO_EDU --json $IRQBYPASS_GUEST_OUT/chain_delivery.json'

edu raises an MSI (BAR0 0x60); vfio-pci's handler signals the vfio producer's
token eventfd; the kvm plugin's x2APIC guest counts it on vector 0x41 and
acknowledges it on an ioeventfd (the acknowledgement never leaves the kernel).
The same device, two paths, alternating rounds in one run:

- irqfd: a kvm-irqfd consumer on an MSI route, paired with the producer by a
  Manager; KVM injects within vfio-pci's eventfd signal, no userspace step;
- relay: a thread polls the token, reads it and injects with KVM_SIGNAL_MSI
  (``delivery.Relay``), as a VMM without irqfd would.

Each raise waits for the previous acknowledgement. Measured per path:
guest-counted interrupts per second, and CPU per interrupt: this process's
threads and the kernel workers (as benchmarks/delivery.py), and the whole
machine's busy time from /proc/stat (the device's MMIO write, vfio-pci's
interrupt handler, the nested vCPU: everything both paths pay).
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import irqbypass
import irqbypass_kvm
from delivery import Relay, kworker_cpu, thread_cpu
from irqbypass_kvm import Guest, KvmIrqfdConsumer, MsiRoute
from irqbypass_vfio import VfioProducer
from report import Report, add_json_option, kernel_series

# edu's registers through the VFIO region (the guest tests' helper)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "guest"))
from edu import Edu

VECTOR = 0x41
MSI = MsiRoute(0xFEE00000, VECTOR)
PATHS = ("irqfd", "relay")


def busy_cpu() -> float:
    """Seconds every CPU of this machine was busy so far (/proc/stat: all but
    idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - fields[3] - fields[4]) / ticks


@dataclass
class Run:
    delivered: int
    wall: float
    process: float  # this process's threads, the vCPU's included
    kworker: float
    machine: float

    @property
    def rate(self) -> float:
        return self.delivered / self.wall

    def us(self, seconds: float) -> float:
        return seconds / self.delivered * 1e6


def summarize(
    runs: dict[str, list[Run]],
    *,
    heading: str,
    against: str,
    report: Report,
    series_label: str,
    cpu_parts: tuple[str, ...],
) -> None:
    """Print each path's best round (the least machine CPU per interrupt: the
    least disturbed), the ratios and every round, and draw the figures into
    ``report``."""
    rows = {path: min(runs[path], key=lambda r: r.machine / r.delivered) for path in PATHS}
    print(heading)
    print(f"{'path':6} {'irq/s':>7} {'process us':>11} {'kworker us':>11} {'machine us':>11}")
    for path, r in rows.items():
        print(
            f"{path:6} {r.rate:7.0f} {r.us(r.process):11.1f} {r.us(r.kworker):11.1f}"
            f" {r.us(r.machine):11.1f}"
        )
    irqfd, relay = rows["irqfd"], rows["relay"]
    print(
        f"{against}: {irqfd.rate / relay.rate:.2f}x the interrupts per second, "
        f"{relay.us(relay.machine) / irqfd.us(irqfd.machine):.2f}x less machine CPU per "
        f"interrupt, {relay.us(relay.process) / irqfd.us(irqfd.process):.2f}x less of this "
        "process's"
    )
    for path in PATHS:
        print(f"  {path} per round (irq/s): " + ", ".join(f"{r.rate:.0f}" for r in runs[path]))
    rate = report.figure(
        "rate", "guest-counted interrupts per second (best round)", x_label="path",
        y_label="interrupts/s", kind="bar",
    )  # fmt: skip
    rate.series(series_label, list(PATHS), [rows[p].rate for p in PATHS])
    cpu = report.figure(
        "cpu", "CPU per interrupt (best round)", x_label="path", y_label="us per interrupt",
        kind="bar",
    )  # fmt: skip
    for part in cpu_parts:
        cpu.series(part, list(PATHS), [rows[p].us(getattr(rows[p], part)) for p in PATHS])


def drive(guest: Guest, edu: Edu, count: int) -> Run:
    """Raise ``count`` MSIs on edu, each after the guest acknowledged the last."""
    ack = guest.ack_eventfd
    assert ack is not None
    poller = select.poll()
    poller.register(ack.fileno(), select.POLLIN)
    start = guest.count
    kw0, threads0, busy0, t0 = kworker_cpu(), thread_cpu(), busy_cpu(), time.perf_counter()
    for i in range(count):
        edu.raise_irq()
        if not poller.poll(60_000):
            raise SystemExit(f"no acknowledgement after {i} interrupts (guest {guest.count})")
        os.read(ack.fileno(), 8)
    wall = time.perf_counter() - t0
    threads1, kw, busy = thread_cpu(), kworker_cpu() - kw0, busy_cpu() - busy0
    process = sum(t - threads0.get(tid, 0.0) for tid, t in threads1.items())
    delivered = guest.count - start
    if delivered != count:
        raise SystemExit(f"the guest counted {delivered} of {count} interrupts")
    return Run(delivered, wall, process, kw, busy)


def chain_args(description: str, count: int) -> argparse.Namespace | None:
    """A chain benchmark's options (``--device``, ``--count``, ``--rounds``,
    ``--json``), or None, said why, where it cannot run: no edu named (it runs
    in the test guest), or no usable /dev/kvm."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", help="edu's PCI address, bound to vfio-pci (test guest)")
    parser.add_argument("--count", type=int, default=count, help="interrupts per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per path")
    add_json_option(parser)
    args = parser.parse_args()
    reason = irqbypass_kvm.unavailable_reason()
    if not args.device:
        print("skipped: needs edu behind vfio-pci: run it in the test guest (see the docstring)")
        return None
    if reason is not None:
        print(f"skipped: {reason}")
        return None
    return args


def main() -> int:
    args = chain_args(__doc__.splitlines()[0], count=500)
    if args is None:
        return 0
    series = kernel_series()
    runs: dict[str, list[Run]] = {path: [] for path in PATHS}
    with (
        Guest(apic="x2apic", ack="eventfd") as guest,
        irqbypass.Eventfd() as token,
        VfioProducer(token=token, device=args.device, index="msi", name="edu") as producer,
    ):
        assert producer.fd is not None
        edu = Edu(producer.fd)
        for _ in range(args.rounds):
            consumer = KvmIrqfdConsumer(token=token, vm=guest, msi=MSI, name="irqfd")
            mgr = irqbypass.Manager()
            with consumer:
                mgr.register_consumer(consumer)
                mgr.register_producer(producer)
                drive(guest, edu, 20)  # warm-up
                runs["irqfd"].append(drive(guest, edu, args.count))
                mgr.unregister_producer(producer)
                mgr.unregister_consumer(consumer)
            with Relay(guest, token, msi=MSI):
                drive(guest, edu, 20)
                runs["relay"].append(drive(guest, edu, args.count))
        if guest.vector_counts() != {VECTOR: guest.count}:
            raise SystemExit(f"MSIs arrived on other vectors: {guest.vector_counts()}")

    report = Report(
        f"chain_delivery_linux{series}",
        f"edu's MSI into a KVM guest on Linux {series} (TCG test guest): irqfd against a relay",
    )
    summarize(
        runs,
        heading=f"edu MSI ({args.device}) into the x2APIC guest on Linux {series} in the TCG "
        f"test guest: {args.count} interrupts per path and round, {args.rounds} rounds, "
        "best round shown",
        against="irqfd against relay",
        report=report,
        series_label="edu MSI",
        # kworkers: next to nothing on either path (an MSI irqfd injects within the
        # eventfd signal); printed, not drawn (a bar of height 0)
        cpu_parts=("machine", "process"),
    )
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
