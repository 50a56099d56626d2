"""The vfio kind: discovery, options from TOML, and their refusals."""

from __future__ import annotations

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass_vfio import VfioProducer


def spec(
    token: irqbypass.Eventfd, irq: int | None = None, **options: object
) -> irqbypass.plugin.EndpointSpec:
    return irqbypass.plugin.EndpointSpec(
        name="nic", kind="vfio", side="producer", token=token, irq=irq, options=options,
        key_path="producers[0]", file="t.toml",
    )  # fmt: skip


def test_the_kind_is_registered() -> None:
    host = irqbypass.load_plugins()
    kind = host.kinds.get("producer", "vfio")
    assert kind.plugin == "vfio" and kind.factory == VfioProducer.from_spec


def test_options() -> None:
    with irqbypass.Eventfd() as token:
        p = VfioProducer.from_spec(
            spec(token, device="0000:01:00.0", index="msi", vector=3, iommufd="/dev/iommu")
        )
        assert (p.device, p.device_name, p.index, p.vector, p.irq) == (
            "0000:01:00.0", "0000:01:00.0", 1, 3, 3,
        )  # fmt: skip
        p = VfioProducer.from_spec(spec(token, irq=9, fd=5, index=2))
        assert (p.vector, p.index, p.mode, p.fd) == (9, 2, None, None)
        p = VfioProducer.from_spec(spec(token, device="/dev/vfio/7", device_name="0000:01:00.1"))
        assert (p.index, p.vector, p.device_name) == (2, 0, "0000:01:00.1")


@pytest.mark.parametrize(
    ("options", "where", "words"),
    [
        ({}, "options.device", "exactly one of device"),
        ({"device": "/dev/vfio/7", "fd": 3}, "options.device", "exactly one of device"),
        ({"fd": True}, "options.fd", "inherited fd"),
        ({"device": "x", "index": "msy"}, "options.index", "unknown VFIO interrupt index"),
        ({"device": "x", "index": 1.5}, "options.index", "a name or an integer"),
        ({"device": "x", "index": "intx", "vector": 2}, "options.vector", "single vector"),
        ({"device": "x", "vector": -1}, "options.vector", "below the minimum"),
        ({"device": "x", "vectr": 1}, "options.vectr", "did you mean 'vector'"),
    ],
)
def test_option_errors(options: dict[str, object], where: str, words: str) -> None:
    with irqbypass.Eventfd() as token, pytest.raises(irqbypass.ConfigError) as err:
        VfioProducer.from_spec(spec(token, **options))
    assert f"t.toml: producers[0].{where}" in str(err.value) and words in str(err.value)
