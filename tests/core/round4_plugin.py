"""A plugin module for ``irqbypass -p round4_plugin`` (tests/core on PYTHONPATH):
the kinds issue 29's plugin authors and embedders tripped over."""

from __future__ import annotations

from collections.abc import Mapping

import irqbypass
import irqbypass.plugin


class Deaf(irqbypass.Consumer):
    """Takes its producer and never reads the eventfd: every signal stays queued."""

    def add_producer(self, producer: irqbypass.Producer) -> None:
        pass

    def del_producer(self, producer: irqbypass.Producer) -> None:
        pass

    def stats(self) -> Mapping[str, int]:
        return {"delivered": 0}


class OpenBug(irqbypass.Producer):
    """Its open() has a bug (a KeyError), as a plugin's first draft does."""

    def open(self) -> None:
        settings: dict[str, str] = {}
        self.path = settings["missing"]  # the line a traceback must point at


def _factory_bug(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Producer:
    settings: dict[str, str] = {}
    return irqbypass.Producer(token=spec.token, name=settings["missing"])


@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.consumer("deaf", lambda spec: Deaf(token=spec.token, name=spec.name))
    register.producer("factory-bug", _factory_bug)
    register.producer("open-bug", lambda spec: OpenBug(token=spec.token, name=spec.name))
