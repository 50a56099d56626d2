"""Where a command reads its topology: a file, or standard input."""

from __future__ import annotations

import sys

from .._config import MAX_CONFIG_BYTES, Config, load_config, parse_config
from .._errors import ConfigError

STDIN = "-"


def load_file(file: str) -> Config:
    """The topology of ``file``, or of standard input (``-``): read up to the
    bound of a file either way (an endless pipe, ``yes |``, is no topology)."""
    if file != STDIN:
        return load_config(file)
    if sys.stdin is None:  # its fd was closed when Python started (`<&-`)
        raise ConfigError(
            "standard input is closed; give the topology on it, or name a file", file="<stdin>"
        )
    data = sys.stdin.buffer.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"more than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB: not a configuration file; "
            "check what is piped in",
            file="<stdin>",
        )
    return parse_config(data, file="<stdin>")
