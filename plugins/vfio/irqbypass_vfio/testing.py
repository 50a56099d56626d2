"""A model of a vfio-pci device behind the plugin's seam, for tests without one.

:class:`FakeVfio` answers open/close/ioctl as ``linux/vfio.h`` and vfio-pci
document them: a cdev that refuses device ioctls until bound to an iommufd, a
single-open group that hands out device fds only when viable and in a container
with an IOMMU model, ``VFIO_DEVICE_GET_IRQ_INFO`` from a table, and
``VFIO_DEVICE_SET_IRQS`` that keeps (a reference to) each vector's trigger
eventfd, masks INTx (automasking it when it fires) and loops triggers back.
Like vfio-pci it enables one of INTx/MSI/MSI-X at a time, enables MSI/MSI-X
vectors ``0..start+count-1`` on the first attach (returning the number the host
could allocate, > 0, and attaching nothing when that is fewer), and refuses a
vector beyond an enabled MSI or ``NORESIZE`` MSI-X block. A block of vectors
set in one call is all or nothing, as ``vfio_msi_set_block`` unwinds it (and
a first enable whose block fails is disabled again); ``refuse_vectors`` makes
the host refuse chosen vectors (``request_irq`` failing).
Every call is recorded with its exact payload bytes; any request can be made to
fail with an errno. Its fds are real (``/dev/null``) so leak checks see them
(the recording half is the core's :class:`irqbypass.testing.FakeDevice`).

It is a model, not a device: it proves the plugin speaks the documented ABI in
the documented order, nothing about a particular device's behaviour.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import irqbypass
import irqbypass.testing

from . import _abi

Call = irqbypass.testing.DeviceCall

_S = TypeVar("_S", bound=ctypes.Structure)

__all__ = ["PCI_IRQS", "PCI_IRQS_NORESIZE_MSIX", "REQUEST_NAMES", "Call", "FakeVfio"]

REQUEST_NAMES = irqbypass.testing.FakeDevice.request_names(
    _abi,
    "VFIO_GET_API_VERSION",
    "VFIO_CHECK_EXTENSION",
    "VFIO_SET_IOMMU",
    "VFIO_GROUP_GET_STATUS",
    "VFIO_GROUP_SET_CONTAINER",
    "VFIO_GROUP_GET_DEVICE_FD",
    "VFIO_DEVICE_GET_INFO",
    "VFIO_DEVICE_GET_IRQ_INFO",
    "VFIO_DEVICE_SET_IRQS",
    "VFIO_DEVICE_BIND_IOMMUFD",
)

#: vfio-pci's answer for a device with INTx, 8 MSI and 16 MSI-X vectors, ERR, REQ
#: (ERR and REQ NORESIZE, as vfio-pci reports them; found on the driver, in the guest).
PCI_IRQS: dict[int, tuple[int, int]] = {
    _abi.VFIO_PCI_INTX_IRQ_INDEX: (
        _abi.VFIO_IRQ_INFO_EVENTFD | _abi.VFIO_IRQ_INFO_MASKABLE | _abi.VFIO_IRQ_INFO_AUTOMASKED,
        1,
    ),
    _abi.VFIO_PCI_MSI_IRQ_INDEX: (_abi.VFIO_IRQ_INFO_EVENTFD | _abi.VFIO_IRQ_INFO_NORESIZE, 8),
    _abi.VFIO_PCI_MSIX_IRQ_INDEX: (_abi.VFIO_IRQ_INFO_EVENTFD, 16),
    _abi.VFIO_PCI_ERR_IRQ_INDEX: (_abi.VFIO_IRQ_INFO_EVENTFD | _abi.VFIO_IRQ_INFO_NORESIZE, 1),
    _abi.VFIO_PCI_REQ_IRQ_INDEX: (_abi.VFIO_IRQ_INFO_EVENTFD | _abi.VFIO_IRQ_INFO_NORESIZE, 1),
}
#: vfio-pci sets NORESIZE on every index but INTx, MSI-X included, unless it can
#: allocate MSI-X vectors dynamically (Linux 6.5+ with a capable host): PCI_IRQS
#: is such a kernel; this is Linux 6.1's answer (checked on the driver, in the guest).
PCI_IRQS_NORESIZE_MSIX: dict[int, tuple[int, int]] = {
    **PCI_IRQS,
    _abi.VFIO_PCI_MSIX_IRQ_INDEX: (_abi.VFIO_IRQ_INFO_EVENTFD | _abi.VFIO_IRQ_INFO_NORESIZE, 16),
}

_S32 = struct.Struct("=i")
_err = irqbypass.testing.FakeDevice.error


@dataclass
class _File:
    kind: str  # "cdev", "device", "group", "container", "iommufd", "other"
    path: str
    bound: bool = False  # cdev: VFIO_DEVICE_BIND_IOMMUFD done
    container: int | None = None  # group: the container fd it joined
    iommu: int | None = None  # container: the model set
    groups: list[int] = field(default_factory=list)  # container: its groups


class _VfioNodes(irqbypass.testing.FakeDevice["_File"]):
    """The half of :class:`FakeVfio` that hands out device fds: a cdev that
    refuses device ioctls until bound to an iommufd, a single-open group that
    hands out device fds only when viable and in a container with an IOMMU
    model, ``/dev/vfio/vfio`` and ``/dev/iommu``."""

    def __init__(
        self,
        *,
        cdev_path: str,
        group_path: str,
        device_name: str,
        viable: bool,
        models: tuple[int, ...],
        others: tuple[str, ...],
        denied: tuple[str, ...],
        sysfs_root: str,
    ) -> None:
        super().__init__(REQUEST_NAMES, denied=denied, sysfs_root=sysfs_root)
        self.cdev_path = cdev_path
        self.group_path = group_path
        self.device_name = device_name
        #: the other devices of the group (a multifunction device's functions):
        #: GET_DEVICE_FD hands them out too; their interrupts are this model's one
        #: device's (give them vectors of their own)
        self.group_peers: tuple[str, ...] = ()
        self.viable = viable
        self.models = models
        self.others = others

    def open(self, path: str, flags: int) -> int:
        self.check_access(path)
        kinds = {
            self.cdev_path: "cdev",
            self.group_path: "group",
            "/dev/vfio/vfio": "container",
            "/dev/iommu": "iommufd",
        }
        kinds.update(dict.fromkeys(self.others, "other"))
        kind = kinds.get(path)
        if kind is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if kind == "group" and any(f.kind == "group" for f in self.files.values()):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        return self.new_fd(path, _File(kind, path))

    def close(self, fd: int) -> None:
        file = self.drop_fd(fd)
        if file.kind in ("cdev", "device") and not any(
            f.kind in ("cdev", "device") for f in self.files.values()
        ):
            self._last_device_closed()
        if file.kind == "group" and file.container in self.files:
            self.files[file.container].groups.remove(fd)

    def _last_device_closed(self) -> None:
        """The last device fd was closed (vfio-pci then disables every interrupt)."""

    def _device_ready(self, file: _File) -> None:
        if file.kind == "cdev" and not file.bound:
            # vfio_device_fops_unl_ioctl: access_granted is set by the bind
            raise _err(errno.EINVAL)

    def _bind(self, file: _File, arg: bytearray | int) -> int:
        assert isinstance(arg, bytearray)
        bind = _abi.vfio_device_bind_iommufd.from_buffer_copy(arg)
        if bind.argsz < ctypes.sizeof(_abi.vfio_device_bind_iommufd) or bind.flags:
            raise _err(errno.EINVAL)
        if file.bound:
            raise _err(errno.EINVAL)
        ictx = self.files.get(bind.iommufd)
        if ictx is None or ictx.kind != "iommufd":
            raise _err(errno.EBADF)
        file.bound = True
        bind.out_devid = 1
        arg[:] = bytes(bind)
        return 0

    def _group_status(self, file: _File, arg: bytearray | int) -> int:
        assert isinstance(arg, bytearray)
        status = _abi.vfio_group_status.from_buffer_copy(arg)
        status.flags = (_abi.VFIO_GROUP_FLAGS_VIABLE if self.viable else 0) | (
            _abi.VFIO_GROUP_FLAGS_CONTAINER_SET if file.container is not None else 0
        )
        arg[:] = bytes(status)
        return 0

    def _set_container(self, file: _File, arg: bytearray | int) -> int:
        assert isinstance(arg, bytearray)
        cfd = _S32.unpack_from(arg)[0]
        container = self.files.get(cfd)
        if container is None or container.kind != "container":
            raise _err(errno.EBADF)
        if not self.viable:
            raise _err(errno.EPERM)
        if file.container is not None:
            raise _err(errno.EINVAL)
        file.container = cfd
        container.groups.append(next(k for k, v in self.files.items() if v is file))
        return 0

    def _api_version(self, file: _File, arg: bytearray | int) -> int:
        return _abi.VFIO_API_VERSION

    def _check_extension(self, file: _File, arg: bytearray | int) -> int:
        return int(arg in self.models)

    def _set_iommu(self, file: _File, arg: bytearray | int) -> int:
        if not file.groups or arg not in self.models or file.iommu is not None:
            raise _err(errno.EINVAL)
        assert isinstance(arg, int)
        file.iommu = arg
        return 0

    def _get_device_fd(self, file: _File, arg: bytearray | int) -> int:
        assert isinstance(arg, bytearray)
        container = self.files.get(file.container) if file.container is not None else None
        if container is None or container.iommu is None:
            raise _err(errno.EINVAL)
        name = bytes(arg).split(b"\0", 1)[0].decode()
        if name != self.device_name and name not in self.group_peers:
            raise _err(errno.ENODEV)
        path = f"{file.path}:{name}"
        return self.new_fd(path, _File("device", path))


class FakeVfio(_VfioNodes):
    """One vfio-pci device reachable as ``cdev_path``, and as ``device_name`` in
    group ``group_path``; ``/dev/vfio/vfio`` and ``/dev/iommu`` exist; ``others``
    are paths that open but are no VFIO node (ioctl: ENOTTY)."""

    def __init__(
        self,
        *,
        irqs: Mapping[int, tuple[int, int]] | None = None,
        num_irqs: int | None = None,
        cdev_path: str = "/dev/vfio/devices/vfio0",
        group_path: str = "/dev/vfio/7",
        device_name: str = "0000:01:00.0",
        viable: bool = True,
        models: tuple[int, ...] = (_abi.VFIO_TYPE1v2_IOMMU, _abi.VFIO_TYPE1_IOMMU),
        others: tuple[str, ...] = ("/dev/null",),
        denied: tuple[str, ...] = (),
        sysfs_root: str = "/nonexistent-sysfs",
        host_vectors: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__(
            cdev_path=cdev_path, group_path=group_path, device_name=device_name,
            viable=viable, models=models, others=others, denied=denied, sysfs_root=sysfs_root,
        )  # fmt: skip
        self.irqs: dict[int, tuple[int, int]] = dict(PCI_IRQS if irqs is None else irqs)
        self.num_irqs = num_irqs if num_irqs is not None else max(self.irqs, default=-1) + 1
        #: how many MSI/MSI-X vectors the host can allocate (default: all)
        self.host_vectors = dict(host_vectors or {})
        #: (index, vector) -> errno: attaching an eventfd there fails (request_irq)
        self.refuse_vectors: dict[tuple[int, int], int] = {}
        # the device's interrupt state: (index, vector) -> (caller's fd number, our dup)
        self._triggers: dict[tuple[int, int], tuple[int, int]] = {}
        self.intx_masked = False
        self.intx_pending = False
        #: INTx's unmask eventfd (DATA_EVENTFD | ACTION_UNMASK): (caller's fd, our dup)
        self.unmask: tuple[int, int] | None = None
        #: vfio-pci's irq_type (INTx, MSI or MSI-X enabled, or None) and block size
        self.irq_type: int | None = None
        self.enabled_vectors = 0

    # -- steering the model ------------------------------------------------

    def trigger_of(self, index: int, vector: int) -> int | None:
        """The fd number the last SET_IRQS attached to this vector, or None."""
        entry = self._triggers.get((index, vector))
        return entry[0] if entry else None

    def fire(self, index: int, vector: int = 0, n: int = 1) -> int:
        """The device raises the interrupt ``n`` times; returns how many
        signals reached an eventfd now (INTx: level, held while masked)."""
        signalled = 0
        for _ in range(n):
            if index == _abi.VFIO_PCI_INTX_IRQ_INDEX:
                if self.intx_masked:
                    self.intx_pending = True
                    continue
                if self.irqs[index][0] & _abi.VFIO_IRQ_INFO_AUTOMASKED:
                    self.intx_masked = True
            signalled += self._signal(index, vector)
        return signalled

    def unmask_eventfd(self) -> int | None:
        """The fd number INTx's unmask eventfd was set from, or None."""
        return self.unmask[0] if self.unmask else None

    def service_unmask(self) -> bool:
        """vfio's virqfd: when the unmask eventfd was signalled (the guest's EOI),
        read it and unmask INTx, as vfio_pci_intx_unmask_handler does. True if it was."""
        if self.unmask is None:
            return False
        try:
            os.read(self.unmask[1], 8)
        except BlockingIOError:
            return False
        self.intx_masked = False
        if self.intx_pending:
            self.intx_pending = False
            self.fire(_abi.VFIO_PCI_INTX_IRQ_INDEX, 0)
        return True

    def _signal(self, index: int, vector: int) -> int:
        entry = self._triggers.get((index, vector))
        return 0 if entry is None else self.signal(entry[1])

    # -- the seam ------------------------------------------------------------

    def _last_device_closed(self) -> None:
        for index in {i for i, _ in self._triggers}:
            self._disable(index)
        self.intx_masked = self.intx_pending = False
        self.irq_type, self.enabled_vectors = None, 0

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        self.record(fd, request, arg)
        file = self.files.get(fd)
        handler = _HANDLERS.get((file.kind if file else "none", request))
        if file is None or handler is None:
            raise _err(errno.ENOTTY)
        return handler(self, file, arg)

    # -- the kernel's side of each ioctl -----------------------------------

    def _device_arg(
        self, file: _File, arg: bytearray | int, layout: type[_S]
    ) -> tuple[bytearray, _S]:
        """A device ioctl's argument and the struct the kernel reads from it
        (only once the device is ready)."""
        assert isinstance(arg, bytearray)
        self._device_ready(file)
        return arg, layout.from_buffer_copy(arg)

    def _device_info(self, file: _File, arg: bytearray | int) -> int:
        arg, info = self._device_arg(file, arg, _abi.vfio_device_info)
        if info.argsz < 16:
            raise _err(errno.EINVAL)
        info.flags = _abi.VFIO_DEVICE_FLAGS_PCI | _abi.VFIO_DEVICE_FLAGS_RESET
        info.num_regions = 9
        info.num_irqs = self.num_irqs
        arg[:] = bytes(info)
        return 0

    def _irq_info(self, file: _File, arg: bytearray | int) -> int:
        arg, info = self._device_arg(file, arg, _abi.vfio_irq_info)
        # vfio-pci refuses an index it does not report (ERR on a device that is not
        # PCIe) with EINVAL, as it does one out of range (found on the driver)
        if info.argsz < ctypes.sizeof(_abi.vfio_irq_info) or info.index >= self.num_irqs:
            raise _err(errno.EINVAL)
        if info.index not in self.irqs:
            raise _err(errno.EINVAL)
        info.flags, info.count = self.irqs[info.index]
        arg[:] = bytes(info)
        return 0

    def _set_irqs(self, file: _File, arg: bytearray | int) -> int:
        arg, hdr = self._device_arg(file, arg, _abi.vfio_irq_set)
        data = bytes(arg[ctypes.sizeof(_abi.vfio_irq_set) :])
        data_type, action = self._validate(hdr)
        if action == _abi.VFIO_IRQ_SET_ACTION_TRIGGER:
            return self._trigger(hdr, data_type, data)
        return self._mask_or_unmask(hdr, data_type, action, data)

    def _classes(self, index: int) -> tuple[bool, bool, bool]:
        """INTx, MSI/MSI-X, and either (vfio-pci's irq_type: one of them at a time)."""
        intx = index == _abi.VFIO_PCI_INTX_IRQ_INDEX
        msi = index in (_abi.VFIO_PCI_MSI_IRQ_INDEX, _abi.VFIO_PCI_MSIX_IRQ_INDEX)
        return intx, msi, intx or msi

    def _validate(self, hdr: _abi.vfio_irq_set) -> tuple[int, int]:
        """vfio_set_irqs_validate_and_prepare, and what vfio-pci refuses before
        acting: the data type and the action."""
        data_type = hdr.flags & (
            _abi.VFIO_IRQ_SET_DATA_NONE
            | _abi.VFIO_IRQ_SET_DATA_BOOL
            | _abi.VFIO_IRQ_SET_DATA_EVENTFD
        )
        action = hdr.flags & (
            _abi.VFIO_IRQ_SET_ACTION_MASK
            | _abi.VFIO_IRQ_SET_ACTION_UNMASK
            | _abi.VFIO_IRQ_SET_ACTION_TRIGGER
        )
        einval = _err(errno.EINVAL)
        if bin(data_type).count("1") != 1 or bin(action).count("1") != 1:
            raise einval
        if hdr.flags & ~(data_type | action) or hdr.index >= self.num_irqs:
            raise einval
        _, count = self.irqs.get(hdr.index, (0, 0))
        if hdr.start >= count or hdr.start + hdr.count > count:
            raise einval
        size = {_abi.VFIO_IRQ_SET_DATA_BOOL: 1, _abi.VFIO_IRQ_SET_DATA_EVENTFD: 4}.get(data_type, 0)
        if hdr.argsz - ctypes.sizeof(_abi.vfio_irq_set) < size * hdr.count:
            raise einval
        intx, msi, exclusive = self._classes(hdr.index)
        busy = exclusive and self.irq_type not in (None, hdr.index)
        if busy and (action == _abi.VFIO_IRQ_SET_ACTION_TRIGGER or intx):
            raise einval
        if msi and action != _abi.VFIO_IRQ_SET_ACTION_TRIGGER:
            raise _err(errno.ENOTTY)  # "XXX Need masking"
        return data_type, action

    def _trigger(self, hdr: _abi.vfio_irq_set, data_type: int, data: bytes) -> int:
        """ACTION_TRIGGER: disable the index, attach eventfds, or loop back."""
        intx, _, exclusive = self._classes(hdr.index)
        einval = _err(errno.EINVAL)
        if data_type == _abi.VFIO_IRQ_SET_DATA_NONE and hdr.count == 0:
            if exclusive and self.irq_type != hdr.index:
                raise einval
            self._disable(hdr.index)
            return 0
        if intx and (hdr.start != 0 or hdr.count != 1):
            raise einval
        if data_type == _abi.VFIO_IRQ_SET_DATA_EVENTFD:
            return self._attach(hdr, data)
        # DATA_NONE / DATA_BOOL: loopback, as though the device fired
        if exclusive and self.irq_type != hdr.index:
            raise einval
        for i in range(hdr.count):
            if data_type == _abi.VFIO_IRQ_SET_DATA_BOOL and not data[i]:
                continue
            self._signal(hdr.index, hdr.start + i)
        return 0

    def _attach(self, hdr: _abi.vfio_irq_set, data: bytes) -> int:
        """DATA_EVENTFD | ACTION_TRIGGER: the block enabled on the first attach
        (fewer vectors than asked: their count returned, nothing attached), then
        each vector's trigger set, the block unwound on a refusal."""
        flags, _ = self.irqs.get(hdr.index, (0, 0))
        _, msi, exclusive = self._classes(hdr.index)
        if not flags & _abi.VFIO_IRQ_INFO_EVENTFD:
            raise _err(errno.EINVAL)
        end: int = hdr.start + hdr.count
        enabling = exclusive and self.irq_type is None
        if enabling:
            if msi:  # vfio_msi_enable(vdev, start + count, msix)
                got = min(end, self.host_vectors.get(hdr.index, end))
                if got < end:
                    return got  # not an error: the count it could have
            self.irq_type, self.enabled_vectors = hdr.index, end
        elif msi and end > self.enabled_vectors:
            if flags & _abi.VFIO_IRQ_INFO_NORESIZE:
                raise _err(errno.EINVAL)  # vfio_msi_set_block beyond num_ctx
            self.enabled_vectors = end  # dynamic MSI-X allocates more
        fds = [_S32.unpack_from(data, 4 * i)[0] for i in range(hdr.count)]
        for i, new in enumerate(fds):
            try:
                refused = self.refuse_vectors.get((hdr.index, hdr.start + i))
                if refused is not None and new >= 0:
                    raise _err(refused)
                self._set_trigger(hdr.index, hdr.start + i, new)
            except OSError:
                # vfio_msi_set_block: the vectors before it set to -1 again,
                # then vfio_pci_set_msi_trigger disables what it enabled
                for j in range(i):
                    self._set_trigger(hdr.index, hdr.start + j, -1)
                if enabling:
                    self._disable(hdr.index)
                raise
        return 0

    def _mask_or_unmask(
        self, hdr: _abi.vfio_irq_set, data_type: int, action: int, data: bytes
    ) -> int:
        """vfio-pci implements mask and unmask for INTx only, once enabled; an
        unmask eventfd (the guest's EOI) is a virqfd."""
        flags, _ = self.irqs.get(hdr.index, (0, 0))
        intx, _, _ = self._classes(hdr.index)
        einval = _err(errno.EINVAL)
        if not intx or not flags & _abi.VFIO_IRQ_INFO_MASKABLE or self.irq_type != hdr.index:
            raise einval
        if (
            action == _abi.VFIO_IRQ_SET_ACTION_UNMASK
            and data_type == _abi.VFIO_IRQ_SET_DATA_EVENTFD
        ):
            if hdr.start != 0 or hdr.count != 1:
                raise einval
            return self._set_unmask_eventfd(_S32.unpack_from(data)[0])
        if data_type != _abi.VFIO_IRQ_SET_DATA_NONE:
            raise einval  # (masking on an eventfd is not implemented by vfio-pci either)
        if action == _abi.VFIO_IRQ_SET_ACTION_MASK:
            self.intx_masked = True
        else:
            self.intx_masked = False
            if self.intx_pending:
                self.intx_pending = False
                self.fire(hdr.index, 0)
        return 0

    def _set_unmask_eventfd(self, fd: int) -> int:
        if fd < 0:  # vfio_virqfd_disable
            if self.unmask is not None:
                os.close(self.unmask[1])
            self.unmask = None
            return 0
        if self.unmask is not None:
            raise _err(errno.EBUSY)  # vfio_virqfd_enable: one at a time
        self.unmask = (fd, self.take_eventfd(fd))
        return 0

    def _set_trigger(self, index: int, vector: int, fd: int) -> None:
        old = self._triggers.pop((index, vector), None)
        if old is not None:
            os.close(old[1])
        if fd < 0:
            return
        self._triggers[(index, vector)] = (fd, self.take_eventfd(fd))

    def _disable(self, index: int) -> None:
        for key in [k for k in self._triggers if k[0] == index]:
            os.close(self._triggers.pop(key)[1])
        if self.irq_type == index:
            self.irq_type, self.enabled_vectors = None, 0
            self.intx_masked = self.intx_pending = False
            if index == _abi.VFIO_PCI_INTX_IRQ_INDEX and self.unmask is not None:
                os.close(self.unmask[1])  # vfio_intx_disable drops the unmask virqfd
                self.unmask = None


_HANDLERS = {
    ("cdev", _abi.VFIO_DEVICE_BIND_IOMMUFD): FakeVfio._bind,
    **{
        (kind, request): handler
        for kind in ("cdev", "device")
        for request, handler in (
            (_abi.VFIO_DEVICE_GET_INFO, FakeVfio._device_info),
            (_abi.VFIO_DEVICE_GET_IRQ_INFO, FakeVfio._irq_info),
            (_abi.VFIO_DEVICE_SET_IRQS, FakeVfio._set_irqs),
        )
    },
    ("group", _abi.VFIO_GROUP_GET_STATUS): FakeVfio._group_status,
    ("group", _abi.VFIO_GROUP_SET_CONTAINER): FakeVfio._set_container,
    ("group", _abi.VFIO_GROUP_GET_DEVICE_FD): FakeVfio._get_device_fd,
    ("container", _abi.VFIO_GET_API_VERSION): FakeVfio._api_version,
    ("container", _abi.VFIO_CHECK_EXTENSION): FakeVfio._check_extension,
    ("container", _abi.VFIO_SET_IOMMU): FakeVfio._set_iommu,
}
