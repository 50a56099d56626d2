"""The vhost kind: discovery, options from TOML, and their refusals."""

from __future__ import annotations

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass_vhost import VhostProducer


def spec(
    token: irqbypass.Eventfd, irq: int | None = None, **options: object
) -> irqbypass.plugin.EndpointSpec:
    return irqbypass.plugin.EndpointSpec(
        name="rx", kind="vhost", side="producer", token=token, irq=irq, options=options,
        key_path="producers[0]", file="t.toml",
    )  # fmt: skip


def test_the_kind_is_registered() -> None:
    kind = irqbypass.load_plugins().kinds.get("producer", "vhost")
    assert kind.plugin == "vhost" and kind.factory == VhostProducer.from_spec


def test_options() -> None:
    with irqbypass.Eventfd() as token:
        p = VhostProducer.from_spec(spec(token, device="/dev/vhost-net", queue=1))
        assert (p.device, p.queue, p.irq, p.name, p.quiesce) == (
            "/dev/vhost-net",
            1,
            1,
            "rx",
            "swap",
        )
        p = VhostProducer.from_spec(spec(token, irq=1, fd=7))
        assert (p.device, p.queue, p.irq) == (None, 1, 1)


@pytest.mark.parametrize(
    ("options", "where", "words"),
    [
        ({}, "options.device", "exactly one of device (/dev/vhost-net or /dev/vhost-vsock)"),
        ({"device": "/dev/vhost-net", "fd": 3}, "options.device", "exactly one of device"),
        ({"fd": True}, "options.fd", "inherited fd"),
        ({"device": "d", "queue": -1}, "options.queue", "below the minimum"),
        ({"device": "d", "queu": 1}, "options.queu", "did you mean 'queue'"),
    ],
)
def test_option_errors(options: dict[str, object], where: str, words: str) -> None:
    with irqbypass.Eventfd() as token, pytest.raises(irqbypass.ConfigError) as err:
        VhostProducer.from_spec(spec(token, **options))
    assert f"t.toml: producers[0].{where}" in str(err.value) and words in str(err.value)
