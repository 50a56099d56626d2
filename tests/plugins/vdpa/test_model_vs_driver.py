"""One scenario list, run against the model (irqbypass_vdpa.testing.FakeVdpa)
and the real vhost-vdpa driver (vdpa_sim_blk): both must give the results
recorded here.

On the host the model runs every scenario; in the vdpa test guest the same
scenarios run on the real driver (through RealSeam) and on the model
configured as that device, and all three must agree. A difference is a model
bug. Results are plain tuples: ("ok", ...) or ("errno", name).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

import irqbypass
import irqbypass.system
import pytest
from irqbypass_vdpa import RealSeam, VdpaProducer
from irqbypass_vdpa import _abi as abi
from irqbypass_vdpa.testing import FakeVdpa

BLK = os.environ.get("IRQBYPASS_TEST_VDPA_BLK", "")


@dataclass
class Target:
    seam: FakeVdpa | RealSeam
    path: str

    def producer(self, token: irqbypass.Eventfd, **kw: object) -> VdpaProducer:
        if "device_fd" not in kw:
            kw["device"] = self.path
        kw.setdefault("require_driver_ok", False)
        return VdpaProducer(token=token, seam=self.seam, **kw)  # type: ignore[arg-type]

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> tuple[object, ...]:
        try:
            self.seam.ioctl(fd, request, arg)
        except OSError as exc:
            return ("errno", errno.errorcode[exc.errno or 0])
        # what the kernel wrote back, for the ioctls that read
        reads = request >> 30 & irqbypass.system.IOC_READ
        return ("ok", bytes(arg).hex()) if reads and not isinstance(arg, int) else ("ok",)


def attempt(action: Callable[[], object]) -> tuple[object, ...]:
    try:
        action()
    except irqbypass.DeviceError as exc:
        return ("errno", errno.errorcode.get(exc.errno or 0, "?"))
    return ("ok",)


def vring(index: int, value: int = 0) -> bytearray:
    return bytearray(bytes(abi.vhost_vring_file(index=index, fd=value)))


def inspect(t: Target, token: irqbypass.Eventfd) -> list[object]:
    with t.producer(token) as p:
        return [p.device_id, p.status, p.vq_count, p.vq_group, p.bound_to == token.fileno()]


def refusals(t: Target, token: irqbypass.Eventfd) -> list[object]:
    return [
        attempt(t.producer(token, require_driver_ok=True).open),  # status 0 after open
        attempt(t.producer(token, queue=1).open),  # blk has one virtqueue
        attempt(t.producer(token, group=1).open),  # its virtqueue is in group 0
    ]


def one_opener(t: Target, token: irqbypass.Eventfd) -> list[object]:
    fd = t.seam.open(t.path, os.O_RDWR)
    try:
        return [attempt(t.producer(token).open)]
    finally:
        t.seam.close(fd)


def ownership(t: Target, token: irqbypass.Eventfd) -> list[object]:
    """Who may do what on a raw fd, before and after VHOST_SET_OWNER."""
    fd = t.seam.open(t.path, os.O_RDWR)
    try:
        return [
            t.ioctl(fd, abi.VHOST_VDPA_GET_STATUS, bytearray(1)),  # anyone
            t.ioctl(fd, abi.VHOST_VDPA_GET_DEVICE_ID, bytearray(4)),
            t.ioctl(fd, abi.VHOST_VDPA_GET_VQS_COUNT, bytearray(4)),
            t.ioctl(fd, abi.VHOST_SET_VRING_CALL, vring(0, token.fileno())),  # owner only
            t.ioctl(fd, abi.VHOST_VDPA_GET_VRING_GROUP, vring(0)),
            t.ioctl(fd, abi.VHOST_SET_OWNER, 0),
            t.ioctl(fd, abi.VHOST_SET_OWNER, 0),  # once
            t.ioctl(fd, abi.VHOST_VDPA_GET_VRING_GROUP, vring(0)),
            t.ioctl(fd, abi.VHOST_VDPA_GET_VRING_GROUP, vring(1)),  # no such queue
            t.ioctl(fd, abi.VHOST_SET_VRING_CALL, vring(0, token.fileno())),
            t.ioctl(fd, abi.VHOST_SET_VRING_CALL, vring(0, -1)),
            t.ioctl(fd, abi.VHOST_SET_VRING_CALL, vring(0, -1)),  # unbinding twice
            t.ioctl(fd, abi.VHOST_SET_VRING_CALL, vring(1, -1)),
        ]
    finally:
        t.seam.close(fd)


def not_an_eventfd(t: Target, token: irqbypass.Eventfd) -> list[object]:
    fd = t.seam.open(t.path, os.O_RDWR)
    null = os.open("/dev/null", os.O_RDONLY)
    try:
        t.seam.ioctl(fd, abi.VHOST_SET_OWNER, 0)
        return [t.ioctl(fd, abi.VHOST_SET_VRING_CALL, vring(0, null))]
    finally:
        os.close(null)
        t.seam.close(fd)


OK = ("ok",)
SCENARIOS: dict[str, tuple[Callable[[Target, irqbypass.Eventfd], list[object]], list[object]]] = {
    "inspect": (inspect, [2, 0, 1, 0, True]),
    "refusals": (refusals, [("errno", "EAGAIN"), ("errno", "ENOBUFS"), ("errno", "EINVAL")]),
    "one_opener": (one_opener, [("errno", "EBUSY")]),
    "ownership": (
        ownership,
        [
            ("ok", "00"),
            ("ok", "02000000"),
            ("ok", "01000000"),
            ("errno", "EPERM"),
            ("errno", "EPERM"),
            OK,
            ("errno", "EBUSY"),
            ("ok", "0000000000000000"),
            ("errno", "ENOBUFS"),
            OK,
            OK,
            OK,
            ("errno", "ENOBUFS"),
        ],
    ),
    "not_an_eventfd": (not_an_eventfd, [("errno", "EINVAL")]),
}


def run(name: str, target: Target) -> list[object]:
    scenario, _ = SCENARIOS[name]
    with irqbypass.Eventfd() as token:
        got = scenario(target, token)
    return got


def model(path: str = "/dev/vhost-vdpa-0") -> Target:
    return Target(FakeVdpa(path=path, device_id=2, status=0, vq_groups=(0,)), path)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_model_gives_the_recorded_results(no_fd_leak: None, name: str) -> None:
    target = model()
    assert run(name, target) == expected(name)
    assert target.seam.open_fds == []  # type: ignore[union-attr]


def expected(name: str) -> list[object]:
    return SCENARIOS[name][1]


@pytest.mark.guest("vdpa")
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_driver_gives_the_same_results(no_fd_leak: None, name: str) -> None:
    if not BLK:
        pytest.skip("no vdpa_sim_blk device: this runs in the vdpa test guest (make guest-test)")
    on_driver = run(name, Target(RealSeam(), BLK))
    on_model = run(name, model(BLK))
    assert on_driver == on_model == expected(name)
