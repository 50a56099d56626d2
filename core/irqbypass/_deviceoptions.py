"""What every device producer shares besides its life: its options (the device,
a path or the VMM's fd, and its interrupt's number, checked once for the TOML
path and the constructor) and its wording (how messages name it and its device)."""

from __future__ import annotations

import errno
from typing import Any, ClassVar

from ._devicegroup import DeviceCalls
from ._errors import DeviceError, InvalidEndpointError
from ._kinds import EndpointSpec
from ._options import MAX_FD, Options, show_value

__all__ = ["DeviceOptions", "DeviceWording"]


class DeviceOptions:
    """What :class:`~irqbypass.plugin.DeviceProducer` offers its subclasses' constructors
    and factories: the device-or-fd rule and the interrupt's number."""

    kind: ClassVar[str]
    NUMBER_LABEL: ClassVar[str | None]
    name: str

    @classmethod
    def spec_common(cls, spec: EndpointSpec) -> dict[str, Any]:
        """The constructor arguments every spec gives: token, irq, name."""
        return {"token": spec.token, "irq": spec.irq, "name": spec.name}

    @staticmethod
    def number(value: int | None, irq: int | None) -> int:
        """An interrupt's number (queue, vector): given, else the spec's irq, else 0."""
        return value if value is not None else (irq if irq is not None else 0)

    @classmethod
    def number_option(cls, opts: Options, irq: int | None) -> int:
        """A spec's interrupt number: the option :attr:`NUMBER_LABEL` names ("queue",
        "vector"), as the constructor's keyword is named, 0..2**32-1; else ``irq``, else 0."""
        assert cls.NUMBER_LABEL is not None, f"{cls.__name__} numbers no interrupt"
        return opts.get_int(cls.NUMBER_LABEL, cls.number(None, irq), min=0, max=2**32 - 1)

    def check_number(self, label: str, value: object) -> None:
        """Refuse ``value`` unless it is an int in 0..2**32-1 (an ioctl's u32), naming
        ``label``; InvalidEndpointError."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            raise InvalidEndpointError(
                f"{self.kind} producer {self.name!r}: {label} {value!r} must be an integer "
                "0..2**32-1"
            )

    @classmethod
    def device_or_fd(cls, opts: Options, device_help: str) -> tuple[str | None, int | None]:
        """A spec's ``device`` (a path) or ``fd`` (inherited): exactly one."""
        device = opts.get_str("device")
        if device == "":
            raise opts.error("device", f"the device is empty; name one ({device_help})")
        fd = opts.get_fd("fd")
        if (device is None) == (fd is None):
            raise opts.error(
                "device", f"give exactly one of device ({device_help}) and fd (an fd "
                "this process inherited)",
            )  # fmt: skip
        return device, fd

    def check_device_or_fd(self, device: str | None, device_fd: int | None, help: str) -> None:
        """The constructor's ``device`` (a path) and ``device_fd``: exactly one."""
        what = f"{self.kind} producer {self.name!r}"
        if (device is None) == (device_fd is None):
            raise InvalidEndpointError(
                f"{what}: give exactly one of device ({help}) and device_fd "
                f"(got device={device!r}, device_fd={device_fd!r})"
            )
        if device_fd is not None and (
            isinstance(device_fd, bool)
            or not isinstance(device_fd, int)
            or not 0 <= device_fd <= MAX_FD
        ):
            raise InvalidEndpointError(
                f"{what}: device_fd {show_value(device_fd)} is not an fd (0 to {MAX_FD})"
            )
        if device is not None and (not isinstance(device, str) or not device or "\0" in device):
            raise InvalidEndpointError(
                f"{what}: device {show_value(device)} is not a path (a non-empty str without "
                "a NUL byte)"
            )


class DeviceWording:
    """How a device producer's messages name it, its device and its interrupt:
    every error starts with :meth:`describe` and says what to do."""

    kind: ClassVar[str]
    name: str
    device: str | None
    device_fd: int | None
    calls: DeviceCalls

    def interrupt_name(self) -> str:
        """Which of the device's interrupts, for messages ("virtqueue 0")."""
        return "its interrupt"

    def where(self) -> str:
        """The device and interrupt, for messages ("/dev/vhost-net, virtqueue 0")."""
        where = self.device if self.device is not None else f"fd {self.device_fd}"
        return f"{where}, {self.interrupt_name()}"

    def describe(self) -> str:
        """``KIND producer 'NAME' (WHERE)``: how messages name this producer and its device."""
        return f"{self.kind} producer {self.name!r} ({self.where()})"

    def hint(self, code: int, op: str, fd: int) -> str:
        """What to do about errno ``code`` from ``op`` on ``fd`` (-1: an open)
        when the call named no hint of its own."""
        return "see the kernel log (dmesg)"

    def refuse(self, problem: str, code: int = errno.EINVAL) -> DeviceError:
        """:meth:`DeviceCalls.refuse <irqbypass.plugin.DeviceCalls.refuse>`."""
        return self.calls.refuse(problem, code)

    def failure(self, op: str, exc: OSError, hint: str) -> DeviceError:
        """:meth:`DeviceCalls.failure <irqbypass.plugin.DeviceCalls.failure>`."""
        return self.calls.failure(op, exc, hint)
