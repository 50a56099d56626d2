"""A plugin module for ``irqbypass -p unmarked_plugin`` (tests/core on
PYTHONPATH): its hook functions lack ``@irqbypass.plugin.hookimpl`` (issue 29 item 2)."""

from __future__ import annotations

import irqbypass
import irqbypass.plugin


def irqbypass_register_kinds(register: irqbypass.plugin.KindRegistrar) -> None:
    register.producer("unmarked", lambda spec: irqbypass.Producer(token=spec.token, name=spec.name))


def irqbypass_confgure(options: irqbypass.plugin.Options) -> None:
    """A typo as well as unmarked."""


def irqbypass_helper_version() -> str:
    return "not a hook, but named like one"
