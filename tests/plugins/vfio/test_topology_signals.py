"""vfio producers opened by a Topology (``open_group``: one batch), a Ctrl-C
landing as vfio-pci attaches their vectors: it waits for the producers' and
then the Topology's bookkeeping, and the apply is undone whole: no vector left
attached, no fd left open (before, the Ctrl-C was raised out of an
``open_group`` that had completed, which the Topology took for one that had
not, and never closed)."""

from __future__ import annotations

import _thread

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass._config import parse_config
from irqbypass._topology import Topology
from irqbypass_vfio import VfioProducer, _abi
from irqbypass_vfio.testing import FakeVfio

MSIX = _abi.VFIO_PCI_MSIX_IRQ_INDEX


class AckedVfio(FakeVfio):
    """A Ctrl-C lands as the first SET_IRQS returns: after vfio-pci did it."""

    armed = True

    def ioctl(self, fd: int, request: int, arg: bytearray | int) -> int:
        result = super().ioctl(fd, request, arg)
        if self.armed and request == _abi.VFIO_DEVICE_SET_IRQS:
            self.armed = False
            _thread.interrupt_main()  # handled at the next check, in the section
        return result


class Vectors:
    """Kind ``vfio-model``: a VfioProducer on the model, its vector the entry's irq."""

    def __init__(self) -> None:
        self.fake = AckedVfio()
        self.made: list[VfioProducer] = []

    def make(self, spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
        spec.options_reader().finish()
        producer = VfioProducer(
            token=spec.token, name=spec.name, seam=self.fake, vector=spec.irq,
            device="/dev/vfio/7", device_name="0000:01:00.0",
        )  # fmt: skip
        self.made.append(producer)
        return producer

    @irqbypass.plugin.hookimpl
    def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
        register.producer("vfio-model", self.make)


def test_a_ctrl_c_as_vectors_attach_leaves_nothing_attached(
    no_fd_leak: None, guarded_sigint: None
) -> None:
    vectors = Vectors()
    host = irqbypass.PluginHost()
    host.register(vectors, name="vectors")
    config = "".join(
        f'[[producers]]\nname = "v{n}"\nkind = "vfio-model"\ntoken = "t{n}"\nirq = {n}\n'
        for n in range(2)
    )
    topology = Topology(parse_config(config, file="t.toml"), host)
    with pytest.raises(KeyboardInterrupt):
        topology.apply()
    assert not vectors.fake.armed, "the Ctrl-C was never sent"
    assert [vectors.fake.trigger_of(MSIX, n) for n in range(2)] == [None, None]
    assert [p.fd for p in vectors.made] == [None, None]
    assert vectors.fake.open_fds == []
    topology.teardown()
