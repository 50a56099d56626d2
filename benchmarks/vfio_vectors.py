"""Many vectors of one VFIO device: opened one by one against one batch.

N vfio producers, one per MSI-X vector of one device, opened and closed:

- one by one: ``producer.open()`` for each, then ``close()`` for each (one
  ``VFIO_DEVICE_SET_IRQS`` per vector each way);
- batched: ``VfioProducer.open_group(producers)`` and ``close_group`` (what a
  Topology calls): one ``SET_IRQS`` for the run of N vectors each way.

On the host the device is the model (``irqbypass_vfio.testing.FakeVfio``, a
2048-vector MSI-X index that can resize), so the figures are the producer's
own CPU plus the model's, not the kernel's; N = 16, 256, 2048. With ``--device
BDF`` (in the vfio test guest: QEMU's e1000e, 5 vectors, NORESIZE on 6.1) the
same runs on vfio-pci through the real seam, N = every vector of the device;
the results are then named after the kernel (``vfio_vectors_linux6.12``).
Each figure is the best of its rounds, the two ways interleaved.

    .venv/bin/python benchmarks/vfio_vectors.py [--sizes 16,256,2048] [--rounds R]
        [--device BDF] [--json FILE]
    scripts/guest --kernel 6.12 vfio --exec 'python benchmarks/vfio_vectors.py \
        --device $IRQBYPASS_TEST_VFIO_E1000E --json $IRQBYPASS_GUEST_OUT/vfio_vectors.json'

"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack

import irqbypass
import irqbypass.system
from irqbypass_vfio import VfioProducer, _abi
from irqbypass_vfio.testing import PCI_IRQS, FakeVfio
from report import Report, add_json_option, kernel_series

MSIX = _abi.VFIO_PCI_MSIX_IRQ_INDEX
Timing = tuple[float, float, int]  # open, close (seconds), SET_IRQS calls


class CountingSeam(irqbypass.system.RealSeam):
    """The kernel, with the SET_IRQS calls counted."""

    def __init__(self) -> None:
        self.set_irqs = 0

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        if request == _abi.VFIO_DEVICE_SET_IRQS:
            self.set_irqs += 1
        return super().ioctl(fd, request, arg)


def make(
    n: int, device: str | None
) -> Callable[[list[irqbypass.Eventfd]], tuple[list[VfioProducer], Callable[[], int]]]:
    def build(tokens: list[irqbypass.Eventfd]) -> tuple[list[VfioProducer], Callable[[], int]]:
        if device is None:
            fake = FakeVfio(irqs={**PCI_IRQS, MSIX: (_abi.VFIO_IRQ_INFO_EVENTFD, 2048)})
            where: dict[str, object] = {"device": "/dev/vfio/7", "device_name": "0000:01:00.0"}
            seam: irqbypass.system.Seam = fake
            count = lambda: sum(c.request == _abi.VFIO_DEVICE_SET_IRQS for c in fake.calls)  # noqa: E731
        else:
            counting = CountingSeam()
            seam, where = counting, {"device": device}
            count = lambda: counting.set_irqs  # noqa: E731
        ps = [
            VfioProducer(token=t, seam=seam, index="msix", vector=v, name=f"v{v}", **where)  # type: ignore[arg-type]
            for v, t in enumerate(tokens)
        ]
        return ps, count

    return build


def one_by_one(ps: list[VfioProducer]) -> tuple[float, float]:
    t0 = time.perf_counter()
    for p in ps:
        p.open()
    t1 = time.perf_counter()
    for p in reversed(ps):
        p.close()
    return t1 - t0, time.perf_counter() - t1


def batched(ps: list[VfioProducer]) -> tuple[float, float]:
    t0 = time.perf_counter()
    VfioProducer.open_group(ps)
    t1 = time.perf_counter()
    VfioProducer.close_group(ps)
    return t1 - t0, time.perf_counter() - t1


def measure(
    n: int, device: str | None, way: Callable[[list[VfioProducer]], tuple[float, float]]
) -> Timing:
    with ExitStack() as stack:
        tokens = [stack.enter_context(irqbypass.Eventfd()) for _ in range(n)]
        ps, count = make(n, device)(tokens)
        opened, closed = way(ps)  # both ways open the device (group, container) once
        return opened, closed, count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,256,2048")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", help="a PCI address bound to vfio-pci (in the test guest)")
    add_json_option(parser)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.device:
        sizes = [int(args.sizes)] if args.sizes.isdigit() else [5]
    else:
        sizes = [int(s) for s in args.sizes.split(",")]
    # on a device, the kernel's series names the results: one file per guest kernel
    series = kernel_series()
    where = f"vfio-pci {series}, {args.device}" if args.device else "the model (FakeVfio)"
    print(f"vfio vectors on {where}: best of {args.rounds} rounds, pid {os.getpid()}")
    best: dict[str, dict[int, Timing]] = {"one by one": {}, "batched": {}}
    for n in sizes:
        for _ in range(args.rounds):
            for name, way in (("one by one", one_by_one), ("batched", batched)):
                got = measure(n, args.device, way)
                old = best[name].get(n)
                best[name][n] = (
                    got if old is None else (min(old[0], got[0]), min(old[1], got[1]), got[2])
                )
        one, bat = best["one by one"][n], best["batched"][n]
        print(
            f"N={n:5}: open  one by one {one[0] * 1e6 / n:8.1f} us/vector "
            f"({one[2]} SET_IRQS in all), batched {bat[0] * 1e6 / n:8.1f} us/vector "
            f"({bat[2]} SET_IRQS in all): "
            f"{one[0] / bat[0]:.1f}x"
        )
        print(
            f"         close one by one {one[1] * 1e6 / n:8.1f} us/vector, "
            f"batched {bat[1] * 1e6 / n:8.1f} us/vector: {one[1] / bat[1]:.1f}x"
        )
    name = f"vfio_vectors_linux{series}" if args.device else "vfio_vectors"
    report = Report(name, f"open and close N vfio producers of one device on {where}")
    for phase, i in (("open", 0), ("close", 1)):
        fig = report.figure(
            phase,
            f"us per vector to {phase} N MSI-X vectors of one device ({where})",
            x_label="vectors",
            y_label="us per vector",
            log_x=not args.device,
            kind="bar" if args.device else "line",
        )
        for way in ("one by one", "batched"):
            xs: list[object] = [str(n) for n in sizes] if args.device else list(sizes)
            fig.series(way, xs, [best[way][n][i] * 1e6 / n for n in sizes])
    report.write(args.json)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
