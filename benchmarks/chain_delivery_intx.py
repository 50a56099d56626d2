"""A real device's INTx into a KVM guest's level line: the resample irqfd path
against a userspace relay (KVM_IRQ_LINE).

Runs in the test guest (the kvm and vfio families: QEMU's edu behind vfio-pci,
and kvm_amd on the SVM that TCG emulates), on the device named by ``--device``:

    scripts/guest kvm,vfio --exec 'python benchmarks/chain_delivery_intx.py \\
        --device $IRQBYPASS_TEST_VFIO_EDU --json $IRQBYPASS_GUEST_OUT/chain_delivery_intx.json'

edu raises INTx (BAR0 0x60); vfio-pci's handler masks the line (automask) and
signals the vfio producer's token eventfd; the kvm plugin's PIC guest takes it
on level line 10, and its handler acknowledges the device before its EOI (an
exit to this process, which writes edu's ack register, as a driver's MMIO write
lowers the line). The same device, two paths, alternating rounds in one run:

- irqfd: a kvm-irqfd consumer in resample mode paired with the INTx producer by
  a Manager. KVM raises the line within vfio-pci's eventfd signal; at the
  guest's EOI it lowers it and signals its resample eventfd, which the pairing
  made vfio-pci's unmask eventfd: the line is unmasked by the two kernels, no
  userspace step besides the guest's acknowledgement;
- relay: what a VMM without irqfd does: a thread polls the token, reads it and
  raises the line with KVM_IRQ_LINE; at the guest's acknowledgement the vCPU
  thread lowers the line (KVM_IRQ_LINE 0) and unmasks vfio-pci's INTx
  (VFIO_DEVICE_SET_IRQS, ACTION_UNMASK).

Each raise waits for the previous acknowledgement. Measured per path as in
benchmarks/chain_delivery.py: guest-counted interrupts per second, and CPU per
interrupt (this process's threads, the kernel workers, the whole machine).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import irqbypass
from chain_delivery import PATHS, Run, busy_cpu, chain_args, summarize
from delivery import Relay, kworker_cpu, thread_cpu
from irqbypass_kvm import Guest, KvmIrqfdConsumer
from irqbypass_vfio import VfioProducer
from report import Report, kernel_series

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "guest"))
from edu import Edu

#: a PIC line the ELCR can make level-triggered
LINE = 10


class Acks:
    """The guest's acknowledgements (the vCPU thread, at the handler's ack
    exit): edu's ack register written, then the path's own step, then counted."""

    def __init__(self, guest: Guest, edu: Edu) -> None:
        self.count = 0
        self.after_ack: list[Callable[[], None]] = []  # the relay's lower-and-unmask
        self._edu = edu
        self._cond = threading.Condition()
        guest.on_ack = self._acked

    def _acked(self, _acks: int) -> None:
        self._edu.ack()
        for step in self.after_ack:
            step()
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 60.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= n, timeout)


class LineRelay(Relay):
    """Read the token, raise the line; at the guest's ack, lower it and unmask."""

    def __init__(
        self, guest: Guest, token: irqbypass.Eventfd, producer: VfioProducer, acks: Acks
    ) -> None:
        super().__init__(guest, token)
        self.producer, self.acks = producer, acks

    def inject(self) -> None:
        self.vm.irq_line(LINE, 1)  # level: it stays up until the guest's acknowledgement

    def eoi(self) -> None:
        self.vm.irq_line(LINE, 0)
        self.producer.interrupt.unmask()

    def __enter__(self) -> LineRelay:
        self.acks.after_ack.append(self.eoi)
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.acks.after_ack.remove(self.eoi)


def drive(guest: Guest, edu: Edu, acks: Acks, count: int) -> Run:
    """Raise ``count`` INTx interrupts on edu, each after the guest acknowledged the last."""
    start, acked = guest.count, acks.count
    kw0, threads0, busy0, t0 = kworker_cpu(), thread_cpu(), busy_cpu(), time.perf_counter()
    for i in range(1, count + 1):
        edu.raise_irq()
        if not acks.wait(acked + i):
            raise SystemExit(f"no acknowledgement after {i - 1} interrupts (guest {guest.count})")
    wall = time.perf_counter() - t0
    threads1, kw, busy = thread_cpu(), kworker_cpu() - kw0, busy_cpu() - busy0
    process = sum(t - threads0.get(tid, 0.0) for tid, t in threads1.items())
    delivered = guest.count - start
    if delivered != count:
        raise SystemExit(f"the guest counted {delivered} of {count} interrupts")
    return Run(delivered, wall, process, kw, busy)


def measure(device: str, count: int, rounds: int) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {path: [] for path in PATHS}
    with (
        Guest(line=LINE, level=True) as guest,
        irqbypass.Eventfd() as token,
        VfioProducer(token=token, device=device, index="intx", name="edu-intx") as producer,
    ):
        assert producer.fd is not None
        edu = Edu(producer.fd)
        acks = Acks(guest, edu)
        for _ in range(rounds):
            consumer = KvmIrqfdConsumer(
                token=token, vm=guest, gsi=LINE, resample=True, name="irqfd"
            )
            mgr = irqbypass.Manager()
            with consumer:
                mgr.register_consumer(consumer)
                mgr.register_producer(producer)  # the resample eventfd unmasks vfio-pci
                drive(guest, edu, acks, 20)  # warm-up
                runs["irqfd"].append(drive(guest, edu, acks, count))
                mgr.unregister_producer(producer)  # unmasks: nothing left waiting
                mgr.unregister_consumer(consumer)
            with LineRelay(guest, token, producer, acks):
                drive(guest, edu, acks, 20)
                runs["relay"].append(drive(guest, edu, acks, count))
    return runs


def main() -> int:
    args = chain_args(__doc__.splitlines()[0], count=300)
    if args is None:
        return 0
    series = kernel_series()
    runs = measure(args.device, args.count, args.rounds)
    report = Report(
        f"chain_delivery_intx_linux{series}",
        f"edu's INTx into a KVM guest's level line on Linux {series} (TCG test guest): "
        "resample irqfd against a KVM_IRQ_LINE relay",
    )
    summarize(
        runs,
        heading=f"edu INTx ({args.device}) into the PIC guest's level line {LINE} on Linux "
        f"{series} in the TCG test guest: {args.count} interrupts per path and round, "
        f"{args.rounds} rounds, best round shown",
        against="resample irqfd against relay",
        report=report,
        series_label="edu INTx",
        cpu_parts=("machine", "process", "kworker"),
    )
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
