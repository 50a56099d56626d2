"""Where a command reads its topology: a file, or standard input."""

from __future__ import annotations

import sys

from .._config import Config, load_config, parse_config

STDIN = "-"


def load_file(file: str) -> Config:
    if file == STDIN:
        return parse_config(sys.stdin.buffer.read(), file="<stdin>")
    return load_config(file)
