"""A hook plugin for ``irqbypass -p audit_plugin``, configured by its own table::

[plugins.audit_plugin]
deny = ["p1"]        # endpoints it refuses to pair
unpaired = true      # leave a refused pair unpaired instead of failing
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import irqbypass
import irqbypass.plugin

deny: list[str] = []
unpaired = False


@irqbypass.plugin.hookimpl
def irqbypass_configure(options: irqbypass.plugin.Options) -> None:
    global deny, unpaired
    names = options.get_raw("deny")
    if names is None:
        names = []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise options.error("deny", "expected a list of endpoint names")
    deny = names
    unpaired = options.get_bool("unpaired", False)
    options.finish()


@irqbypass.plugin.hookimpl(wrapper=True)
def irqbypass_add(endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
    for name in (endpoint.name, partner.name):
        if name in deny:
            raise irqbypass.Veto(f"{name} is on the deny list", unpaired=unpaired)
    return (yield)
