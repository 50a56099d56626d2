"""One scenario list, run against the model (irqbypass_vfio.testing.FakeVfio)
and the real vfio-pci driver: both must give the results recorded here.

On the host the model runs every scenario; in the vfio test guest the same
scenarios run on the real driver (QEMU's edu, through RealSeam) and on the
model configured as that device, and all three must agree. A difference is a
model bug. Results are plain tuples: ("ok", ...) or ("errno", name).
MSIX_SCENARIOS do the same with QEMU's e1000e (5 MSI-X vectors).

The guest runs them on both of its kernels, whose vfio-pci differ in one way:
Linux 6.1 sets NORESIZE on MSI-X, 6.12 (dynamic MSI-X, since 6.5) does not and
adds a vector alone. The model is configured as the kernel's driver, and
DYNAMIC_MSIX_RESULTS record where a dynamic-MSI-X kernel's results differ.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import irqbypass
import pytest
from irqbypass_vfio import RealSeam, VfioProducer
from irqbypass_vfio import _abi as abi
from irqbypass_vfio.testing import PCI_IRQS_NORESIZE_MSIX as PCI_IRQS
from irqbypass_vfio.testing import FakeVfio

#: the vfio-pci behaviours the scenarios know: Linux 6.1's, and a kernel with
#: dynamic MSI-X (6.5+; the guest's 6.12)
KERNELS = ("6.1", "6.12")

EDU = os.environ.get("IRQBYPASS_TEST_VFIO_EDU", "")
E1000E = os.environ.get("IRQBYPASS_TEST_VFIO_E1000E", "")
INTX, MSI, MSIX = (
    abi.VFIO_PCI_INTX_IRQ_INDEX,
    abi.VFIO_PCI_MSI_IRQ_INDEX,
    abi.VFIO_PCI_MSIX_IRQ_INDEX,
)
ERR, REQ = abi.VFIO_PCI_ERR_IRQ_INDEX, abi.VFIO_PCI_REQ_IRQ_INDEX

#: edu as vfio-pci 6.1 reports it: INTx, one MSI vector, no MSI-X, no ERR (not PCIe: EINVAL)
EDU_IRQS = {
    INTX: (PCI_IRQS[INTX][0], 1),
    MSI: (PCI_IRQS[MSI][0], 1),
    MSIX: (PCI_IRQS[MSIX][0], 0),
    REQ: (PCI_IRQS[REQ][0], 1),
}


#: e1000e (82574L, PCIe) as vfio-pci 6.1 reports it: INTx, one MSI vector, 5 MSI-X
#: vectors (NORESIZE: no dynamic MSI-X before 6.5), ERR (PCIe) and REQ
E1000E_IRQS = {
    INTX: (PCI_IRQS[INTX][0], 1),
    MSI: (PCI_IRQS[MSI][0], 1),
    MSIX: (PCI_IRQS[MSIX][0], 5),
    ERR: (PCI_IRQS[ERR][0], 1),
    REQ: (PCI_IRQS[REQ][0], 1),
}
#: and as 6.12 reports it: MSI-X without NORESIZE (checked on the driver, in the guest)
E1000E_IRQS_DYNAMIC = {**E1000E_IRQS, MSIX: (abi.VFIO_IRQ_INFO_EVENTFD, 5)}


def dynamic_msix(kernel: str) -> bool:
    """Whether vfio-pci of this kernel series can add an MSI-X vector alone (6.5+)."""
    major, minor = (int(n) for n in kernel.split(".")[:2])
    return (major, minor) >= (6, 5)


@dataclass
class Target:
    """Where a scenario runs: a seam (the model or the kernel) and a device."""

    seam: FakeVfio | RealSeam
    group: str
    name: str

    def producer(self, token: irqbypass.Eventfd, **kw: object) -> VfioProducer:
        if "device_fd" not in kw:
            kw.update(device=self.group, device_name=self.name)
        return VfioProducer(token=token, seam=self.seam, **kw)  # type: ignore[arg-type]

    @contextmanager
    def device_fd(self) -> Iterator[int]:
        """A device fd as a VMM gets one, through the same seam."""
        seam = self.seam
        group = seam.open(self.group, os.O_RDWR)
        container = seam.open("/dev/vfio/vfio", os.O_RDWR)
        fd = -1
        try:
            seam.ioctl(
                group, abi.VFIO_GROUP_SET_CONTAINER, bytearray(bytes(ctypes.c_int32(container)))
            )
            seam.ioctl(container, abi.VFIO_SET_IOMMU, abi.VFIO_TYPE1v2_IOMMU)
            fd = seam.ioctl(
                group, abi.VFIO_GROUP_GET_DEVICE_FD, bytearray(self.name.encode() + b"\0")
            )
            yield fd
        finally:
            for f in (fd, group, container):
                if f >= 0:
                    seam.close(f)

    def set_irqs(self, fd: int, flags: int, index: int, data: bytes = b"") -> tuple[object, ...]:
        count = 1 if data or flags & abi.VFIO_IRQ_SET_DATA_NONE else 0
        try:
            self.seam.ioctl(fd, abi.VFIO_DEVICE_SET_IRQS, abi.irq_set(flags, index, 0, count, data))
        except OSError as exc:
            return ("errno", errno.errorcode[exc.errno or 0])
        return ("ok",)


def attempt(action: Callable[[], object]) -> tuple[object, ...]:
    try:
        got = action()
    except irqbypass.DeviceError as exc:
        return ("errno", errno.errorcode.get(exc.errno or 0, "?"))
    return ("ok",) if got is None else ("ok", got)


NONE_TRIGGER = abi.VFIO_IRQ_SET_DATA_NONE | abi.VFIO_IRQ_SET_ACTION_TRIGGER
EVENTFD_TRIGGER = abi.VFIO_IRQ_SET_DATA_EVENTFD | abi.VFIO_IRQ_SET_ACTION_TRIGGER
MASK = abi.VFIO_IRQ_SET_DATA_NONE | abi.VFIO_IRQ_SET_ACTION_MASK
UNMASK = abi.VFIO_IRQ_SET_DATA_NONE | abi.VFIO_IRQ_SET_ACTION_UNMASK


def irq_info(t: Target, token: irqbypass.Eventfd) -> list[object]:
    out: list[object] = []
    for index in ("intx", "msi", "msix", "err", "req"):
        p = t.producer(token, index=index)
        got = attempt(p.open)
        info = p.irq_info
        out.append((index, got, None if info is None else (info.flags, info.count)))
        p.close()
    return out


def msi_loopback_and_quiesce(t: Target, token: irqbypass.Eventfd) -> list[object]:
    out: list[object] = []
    for quiesce in ("swap", "keep"):
        with t.producer(token, index="msi", msi_quiesce=quiesce) as p:
            p.trigger(3)
            out.append(token.read(0))
            p.stop()
            p.trigger(2)
            out.append(token.read(0))
            p.start()
            out.append(token.read(0))
            out.append(p.stats()["held"])
    return out


def intx_loopback_mask_unmask(t: Target, token: irqbypass.Eventfd) -> list[object]:
    out: list[object] = []
    with t.producer(token, index="intx") as p:
        assert p.fd is not None
        p.trigger(1)
        out.append(token.read(0))
        p.stop()  # masked
        p.trigger(1)  # the loopback signals the eventfd as it is, mask or not
        out.append(token.read(0))
        p.start()
        out.append(token.read(0))
        out.append(t.set_irqs(p.fd, UNMASK, INTX))  # unmasking an unmasked line
        out.append(t.set_irqs(p.fd, MASK, INTX))
        out.append(t.set_irqs(p.fd, UNMASK, INTX))
    return out


def one_index_at_a_time(t: Target, token: irqbypass.Eventfd) -> list[object]:
    out: list[object] = []
    with t.device_fd() as fd, irqbypass.Eventfd() as other:
        with t.producer(token, device_fd=fd, index="msi"):
            out.append(attempt(t.producer(other, device_fd=fd, index="intx").open))
        # closing the MSI producer detached its vector but left MSI enabled
        out.append(attempt(t.producer(other, device_fd=fd, index="intx").open))
        out.append(t.set_irqs(fd, NONE_TRIGGER, MSI))  # loopback on a detached vector
        out.append(token.read(0))
        out.append(t.set_irqs(fd, MASK, MSI))  # vfio-pci cannot mask MSI
        out.append(t.set_irqs(fd, NONE_TRIGGER, MSIX))  # an index the device lacks
    return out


def detach_enables(t: Target, token: irqbypass.Eventfd) -> list[object]:
    """fd -1 on a device with nothing enabled still enables MSI (then nothing
    attached), so INTx is refused afterwards."""
    out: list[object] = []
    with t.device_fd() as fd:
        out.append(t.set_irqs(fd, EVENTFD_TRIGGER, MSI, abi.eventfd_data(-1)))
        out.append(attempt(t.producer(token, device_fd=fd, index="intx").open))
        out.append(
            t.set_irqs(fd, abi.VFIO_IRQ_SET_DATA_NONE | abi.VFIO_IRQ_SET_ACTION_TRIGGER, MSI)
        )
    return out


def vector_beyond_the_block(t: Target, token: irqbypass.Eventfd) -> list[object]:
    with t.device_fd() as fd:
        data = abi.eventfd_data(token.fileno())
        buf = abi.irq_set(EVENTFD_TRIGGER, MSI, 1, 1, data)  # vector 1 of a 1-vector MSI
        try:
            t.seam.ioctl(fd, abi.VFIO_DEVICE_SET_IRQS, buf)
        except OSError as exc:
            return [("errno", errno.errorcode[exc.errno or 0])]
        return [("ok",)]


def not_an_eventfd(t: Target, token: irqbypass.Eventfd) -> list[object]:
    """The trigger must be an eventfd: vfio-pci's eventfd_ctx_fdget refuses others."""
    null = os.open("/dev/null", os.O_RDONLY)
    try:
        with t.device_fd() as fd:
            return [t.set_irqs(fd, EVENTFD_TRIGGER, MSI, abi.eventfd_data(null))]
    finally:
        os.close(null)


def msix_every_vector_alone(t: Target, token: irqbypass.Eventfd) -> list[object]:
    """One producer per vector on one device: vector v looped back v+1 times."""
    out: list[object] = []
    with ExitStack() as stack:
        tokens = [stack.enter_context(irqbypass.Eventfd()) for _ in range(5)]
        ps = [t.producer(tokens[v], index="msix", vector=v, name=f"v{v}") for v in range(5)]
        for p in ps:
            out.append(attempt(p.open))
        out.append(len({p.fd for p in ps}))
        for v, p in enumerate(ps):
            p.trigger(v + 1)
        out.append([tok.read(0) for tok in tokens])
        ps[2].close()  # detached: a loopback on vector 2 signals nothing
        for p in ps:
            if p is not ps[2]:
                p.trigger(1)
        assert ps[0].fd is not None
        buf = abi.irq_set(NONE_TRIGGER, MSIX, 0, 5)
        out.append(attempt(lambda: t.seam.ioctl(ps[0].fd or -1, abi.VFIO_DEVICE_SET_IRQS, buf)))
        out.append([tok.read(0) for tok in tokens])
        for p in ps:
            p.close()
    return out


def msix_vector_beyond_the_block(t: Target, token: irqbypass.Eventfd) -> list[object]:
    """On a handed fd: vector 0 attached alone enables 0..0, and vector 3 is then
    beyond the block: EINVAL on a NORESIZE kernel, added alone on a dynamic one.
    Disabled and enabled again as a block of 5, 3 attaches on both."""
    out: list[object] = []
    fd_data = abi.eventfd_data(token.fileno())
    with t.device_fd() as fd:

        def set_irqs(flags: int, start: int, count: int, data: bytes = b"") -> tuple[object, ...]:
            try:
                got = t.seam.ioctl(
                    fd, abi.VFIO_DEVICE_SET_IRQS, abi.irq_set(flags, MSIX, start, count, data)
                )
            except OSError as exc:
                return ("errno", errno.errorcode[exc.errno or 0])
            return ("ok", got)

        out.append(set_irqs(EVENTFD_TRIGGER, 0, 1, fd_data))
        out.append(set_irqs(EVENTFD_TRIGGER, 3, 1, fd_data))
        out.append(set_irqs(NONE_TRIGGER, 0, 0))  # disable the index
        out.append(set_irqs(EVENTFD_TRIGGER, 0, 5, abi.eventfd_data(-1, -1, -1, -1, -1)))
        out.append(set_irqs(EVENTFD_TRIGGER, 3, 1, fd_data))
        out.append(set_irqs(NONE_TRIGGER, 3, 1))  # loopback on vector 3
        out.append(token.read(0))
        out.append(set_irqs(NONE_TRIGGER, 0, 0))
    return out


def msix_group_open_close(t: Target, token: irqbypass.Eventfd) -> list[object]:
    """open_group of the 5 vectors on a handed fd (one SET_IRQS enables them), a
    loopback on each, close_group (one SET_IRQS detaches them): nothing after."""
    out: list[object] = []
    with t.device_fd() as fd, ExitStack() as stack:
        tokens = [stack.enter_context(irqbypass.Eventfd()) for _ in range(5)]
        ps = [t.producer(tokens[v], device_fd=fd, vector=v, name=f"v{v}") for v in range(5)]
        out.append(attempt(lambda: VfioProducer.open_group(ps)))
        for p in ps:
            p.trigger(2)
        out.append([tok.read(0) for tok in tokens])
        out.append(attempt(lambda: VfioProducer.close_group(ps)))
        out.append(t.set_irqs(fd, NONE_TRIGGER, MSIX))  # loopback on detached vector 0
        out.append([tok.read(0) for tok in tokens])
    return out


def msix_quiesce_one_vector(t: Target, token: irqbypass.Eventfd) -> list[object]:
    """Vector 1 stopped (swap, then keep) while 0 and 2 loop back."""
    out: list[object] = []
    for quiesce in ("swap", "keep"):
        with ExitStack() as stack:
            tokens = [stack.enter_context(irqbypass.Eventfd()) for _ in range(3)]
            ps = [
                stack.enter_context(
                    t.producer(tokens[v], vector=v, name=f"v{v}", msi_quiesce=quiesce)
                )
                for v in range(3)
            ]
            ps[1].stop()
            for p in ps:
                p.trigger(1)
            out.append([tok.read(0) for tok in tokens])
            ps[1].start()
            out.append([tok.read(0) for tok in tokens])
    return out


OK = ("ok",)
MSIX_SCENARIOS: dict[
    str, tuple[Callable[[Target, irqbypass.Eventfd], list[object]], list[object]]
] = {
    "e1000e_irq_info": (
        irq_info,
        [
            ("intx", OK, (7, 1)),
            ("msi", OK, (9, 1)),
            ("msix", OK, (9, 5)),
            ("err", OK, (9, 1)),  # PCIe
            ("req", OK, (9, 1)),
        ],
    ),
    "msix_every_vector_alone": (
        msix_every_vector_alone,
        [OK, OK, OK, OK, OK, 1, [1, 2, 3, 4, 5], ("ok", 0), [2, 2, 0, 2, 2]],
    ),
    "msix_vector_beyond_the_block": (
        msix_vector_beyond_the_block,
        [("ok", 0), ("errno", "EINVAL"), ("ok", 0), ("ok", 0), ("ok", 0), ("ok", 0), 1, ("ok", 0)],
    ),
    "msix_group_open_close": (
        msix_group_open_close,
        [OK, [2, 2, 2, 2, 2], OK, OK, [0, 0, 0, 0, 0]],
    ),
    "msix_quiesce_one_vector": (
        msix_quiesce_one_vector,
        [[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]],
    ),
}
#: where a dynamic-MSI-X kernel (6.12) gives other results than 6.1
DYNAMIC_MSIX_RESULTS: dict[str, list[object]] = {
    "e1000e_irq_info": [
        ("intx", OK, (7, 1)),
        ("msi", OK, (9, 1)),
        ("msix", OK, (1, 5)),  # EVENTFD alone: no NORESIZE
        ("err", OK, (9, 1)),
        ("req", OK, (9, 1)),
    ],
    "msix_vector_beyond_the_block": [("ok", 0)] * 6 + [1, ("ok", 0)],
}
SCENARIOS: dict[str, tuple[Callable[[Target, irqbypass.Eventfd], list[object]], list[object]]] = {
    "irq_info": (  # flags as vfio-pci 6.1 reported them: 7 = EVENTFD|MASKABLE|AUTOMASKED,
        irq_info,  # 9 = EVENTFD|NORESIZE
        [
            ("intx", OK, (7, 1)),
            ("msi", OK, (9, 1)),
            ("msix", ("errno", "EINVAL"), (9, 0)),
            ("err", ("errno", "EINVAL"), None),  # not PCIe: GET_IRQ_INFO refuses it
            ("req", OK, (9, 1)),
        ],
    ),
    "msi_loopback_and_quiesce": (msi_loopback_and_quiesce, [3, 0, 2, 2, 3, 2, 0, 0]),
    "intx_loopback_mask_unmask": (intx_loopback_mask_unmask, [1, 1, 0, OK, OK, OK]),
    "one_index_at_a_time": (
        one_index_at_a_time,
        [("errno", "EINVAL"), ("errno", "EINVAL"), OK, 0, ("errno", "ENOTTY"), ("errno", "EINVAL")],
    ),
    "detach_enables": (detach_enables, [OK, ("errno", "EINVAL"), OK]),
    "vector_beyond_the_block": (vector_beyond_the_block, [("errno", "EINVAL")]),
    "not_an_eventfd": (not_an_eventfd, [("errno", "EINVAL")]),
}


def run(name: str, target: Target) -> list[object]:
    scenario, _ = {**SCENARIOS, **MSIX_SCENARIOS}[name]
    with irqbypass.Eventfd() as token:
        return scenario(target, token)


def model(group: str = "/dev/vfio/7", name: str = "0000:01:00.0") -> Target:
    return Target(FakeVfio(irqs=EDU_IRQS, group_path=group, device_name=name), group, name)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_model_gives_the_recorded_results(no_fd_leak: None, name: str) -> None:
    target = model()
    assert run(name, target) == SCENARIOS[name][1]
    assert target.seam.open_fds == []  # type: ignore[union-attr]


@pytest.mark.guest("vfio")
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_driver_gives_the_same_results(no_fd_leak: None, name: str) -> None:
    if not EDU:
        pytest.skip("no edu device: this runs in the vfio test guest (make guest-test)")
    group = "/dev/vfio/" + os.path.basename(os.readlink(f"/sys/bus/pci/devices/{EDU}/iommu_group"))
    on_driver = run(name, Target(RealSeam(), group, EDU))
    on_model = run(name, model(group, EDU))
    assert on_driver == on_model == SCENARIOS[name][1]


def e1000e_model(kernel: str, group: str = "/dev/vfio/7", name: str = "0000:01:00.0") -> Target:
    """The model configured as the e1000e on ``kernel``'s vfio-pci."""
    irqs = E1000E_IRQS_DYNAMIC if dynamic_msix(kernel) else E1000E_IRQS
    return Target(FakeVfio(irqs=irqs, group_path=group, device_name=name), group, name)


def msix_expected(name: str, kernel: str) -> list[object]:
    if dynamic_msix(kernel) and name in DYNAMIC_MSIX_RESULTS:
        return DYNAMIC_MSIX_RESULTS[name]
    return MSIX_SCENARIOS[name][1]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", sorted(MSIX_SCENARIOS))
def test_the_e1000e_model_gives_the_recorded_results(
    no_fd_leak: None, name: str, kernel: str
) -> None:
    target = e1000e_model(kernel)
    assert run(name, target) == msix_expected(name, kernel)
    assert target.seam.open_fds == []  # type: ignore[union-attr]


@pytest.mark.guest("vfio")
@pytest.mark.parametrize("name", sorted(MSIX_SCENARIOS))
def test_the_e1000e_driver_gives_the_same_results(
    no_fd_leak: None, name: str, guest_kernel: str
) -> None:
    if not E1000E:
        pytest.skip("no e1000e device: this runs in the vfio test guest (make guest-test)")
    link = f"/sys/bus/pci/devices/{E1000E}/iommu_group"
    group = "/dev/vfio/" + os.path.basename(os.readlink(link))
    on_driver = run(name, Target(RealSeam(), group, E1000E))
    on_model = run(name, e1000e_model(guest_kernel, group, E1000E))
    assert on_driver == on_model == msix_expected(name, guest_kernel)
