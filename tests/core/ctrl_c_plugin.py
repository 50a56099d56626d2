"""A plugin module for ``irqbypass -p ctrl_c_plugin``: kind ``ctrl-c-on-close``,
a consumer whose close() raises KeyboardInterrupt, as a second Ctrl-C landing
in a plugin's close during teardown does."""

from __future__ import annotations

import irqbypass
import irqbypass.plugin


class InterruptedOnClose(irqbypass.Consumer):
    def add_producer(self, producer: irqbypass.Producer) -> None:
        pass

    def del_producer(self, producer: irqbypass.Producer) -> None:
        pass

    def close(self) -> None:
        raise KeyboardInterrupt


def _make(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
    spec.options_reader().finish()
    return InterruptedOnClose(token=spec.token, name=spec.name)


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.consumer("ctrl-c-on-close", _make)
