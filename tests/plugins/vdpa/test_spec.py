"""The vdpa kind: discovery, options from TOML, and their refusals."""

from __future__ import annotations

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass_vdpa import VdpaProducer


def spec(
    token: irqbypass.Eventfd, irq: int | None = None, **options: object
) -> irqbypass.plugin.EndpointSpec:
    return irqbypass.plugin.EndpointSpec(
        name="net", kind="vdpa", side="producer", token=token, irq=irq, options=options,
        key_path="producers[1]", file="t.toml",
    )  # fmt: skip


def test_the_kind_is_registered() -> None:
    kind = irqbypass.load_plugins().kinds.get("producer", "vdpa")
    assert kind.plugin == "vdpa" and kind.factory == VdpaProducer.from_spec


def test_options() -> None:
    with irqbypass.Eventfd() as token:
        p = VdpaProducer.from_spec(
            spec(token, device="/dev/vhost-vdpa-0", queue=2, require_driver_ok=False, group=1)
        )
        assert (p.device, p.queue, p.irq, p.require_driver_ok, p.expected_group) == (
            "/dev/vhost-vdpa-0", 2, 2, False, 1,
        )  # fmt: skip
        p = VdpaProducer.from_spec(spec(token, irq=4, fd=7))
        assert (p.queue, p.require_driver_ok, p.expected_group, p.device) == (4, True, None, None)


@pytest.mark.parametrize(
    ("options", "where", "words"),
    [
        ({}, "options.device", "exactly one of device"),
        ({"device": "/dev/vhost-vdpa-0", "fd": 3}, "options.device", "exactly one of device"),
        ({"fd": -1}, "options.fd", "inherited fd"),
        ({"device": "d", "queue": -1}, "options.queue", "below the minimum"),
        ({"device": "d", "group": "a"}, "options.group", "group number"),
        ({"device": "d", "require_driver_ok": 1}, "options.require_driver_ok", "true or false"),
        ({"device": "d", "queu": 1}, "options.queu", "did you mean 'queue'"),
    ],
)
def test_option_errors(options: dict[str, object], where: str, words: str) -> None:
    with irqbypass.Eventfd() as token, pytest.raises(irqbypass.ConfigError) as err:
        VdpaProducer.from_spec(spec(token, **options))
    assert f"t.toml: producers[1].{where}" in str(err.value) and words in str(err.value)
