"""A device producer opened by a Topology: a Ctrl-C that waited in its open.

The Topology opens each endpoint inside its own signal-safe section through a
``callout``: an open that raises was interrupted and is not open, so the undo
does not close it. A Ctrl-C that lands in the producer's own section (as the
device acknowledged a step) waits for the producer's bookkeeping; it must then
wait for the Topology's too (as an ``uninterrupted`` method's does), not be
raised out of an open that completed: that open would never be closed.
"""

from __future__ import annotations

import signal

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass._config import parse_config
from irqbypass._topology import Topology
from test_device import Line, LineDevice


class AckedDevice(LineDevice):
    """A Ctrl-C lands as the device acknowledges pointing the line at the token."""

    armed = True

    def point(self, fd: int) -> None:
        super().point(fd)
        if self.armed and fd == self.token.fileno():
            self.armed = False
            signal.raise_signal(signal.SIGINT)  # handled as this call returns


class AckedLine(Line):
    DEVICE = AckedDevice


class Lines:
    """Kind ``line``: an :class:`AckedLine` per entry, each kept to look at."""

    def __init__(self) -> None:
        self.made: list[AckedLine] = []

    def make(self, spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Endpoint:
        spec.options_reader().finish()
        assert isinstance(spec.token, irqbypass.Eventfd)
        line = AckedLine(spec.token, spec.name)
        self.made.append(line)
        return line

    @irqbypass.plugin.hookimpl
    def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
        register.producer("line", self.make)


def test_a_ctrl_c_that_waited_in_a_device_open_leaves_nothing_open(
    no_fd_leak: None, guarded_sigint: None
) -> None:
    lines = Lines()
    host = irqbypass.PluginHost()
    host.register(lines, name="lines")
    config = '[[producers]]\nname = "p"\nkind = "line"\ntoken = "t"\n'
    topology = Topology(parse_config(config, file="t.toml"), host)
    with pytest.raises(KeyboardInterrupt):
        topology.apply()
    [line] = lines.made
    # the apply was undone: the producer it opened is closed again
    assert line.target is None, "the line still points at the token"
    assert line.device_open_fd is None, "the device is still open"
    assert line.fd is None and line.pointed_at is None
    topology.teardown()
