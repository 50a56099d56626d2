"""Hostile objects at every public entry point other than the Manager's.

Each entry point gets each hostile value in each argument: it either does what
the docs say (and whatever it made is then closed) or raises an IrqBypassError
subclass whose message prints, is bounded, and holds no raw control character.
Never another exception, never a traceback, never an fd left open.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass_logging import LoggingConsumer
from irqbypass_mock import MockProducer
from irqbypass_posted import Port, PostedDescriptor, PostedInterruptConsumer
from rel_support import COUNTERS

pytestmark = pytest.mark.usefixtures("no_fd_leak")

MESSAGE_LIMIT = 2000


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr refused")

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        raise RuntimeError("format refused")


class BadHash:
    def __hash__(self) -> int:
        raise RuntimeError("hash refused")


class BadEq:
    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq refused")


class BadBool:
    def __bool__(self) -> bool:
        raise RuntimeError("bool refused")


class BadIter:
    def __iter__(self) -> Any:
        raise RuntimeError("iter refused")


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str refused")


HOSTILE: dict[str, Callable[[], object]] = {
    "None": lambda: None,
    "True": lambda: True,
    "minus-one": lambda: -1,
    "huge-int": lambda: 2**70,
    "float": lambda: 0.25,
    "nan": lambda: math.nan,
    "inf": lambda: math.inf,
    "empty-str": lambda: "",
    "nul-str": lambda: "x\x00y",
    "control-chars": lambda: "\x1b[2J\nforged: line",
    "long-str": lambda: "x" * 100_000,
    "bytes": lambda: b"bytes",
    "list": lambda: ["a", 1],
    "dict": lambda: {},
    "object": object,
    "unprintable": Unprintable,
    "bad-hash": BadHash,
    "bad-eq": BadEq,
    "bad-bool": BadBool,
    "bad-iter": BadIter,
    "unprintable-exception": lambda: UnprintableError(),
}


def _closing(obj: object) -> None:
    close = getattr(obj, "close", None)
    if callable(close):
        close()


def _with_token(body: Callable[[irqbypass.Eventfd], object]) -> Callable[[], object]:
    def run() -> object:
        with irqbypass.Eventfd() as token:
            result = body(token)
            if isinstance(result, irqbypass.Endpoint):
                try:
                    result.open()
                finally:
                    result.close()
                return None
            return result

    return run


def _eventfd(body: Callable[[irqbypass.Eventfd], object]) -> Callable[[], object]:
    def run() -> object:
        with irqbypass.Eventfd() as efd:
            efd.write(1)  # a valid read timeout returns at once
            return body(efd)

    return run


def _wrap_dup(owned: object) -> None:
    """from_fd on a dup of a fresh eventfd, so either ownership closes cleanly."""
    with irqbypass.Eventfd() as efd:
        fd = os.dup(efd.fileno())
        try:
            wrapper = irqbypass.Eventfd.from_fd(fd, owned=owned)  # type: ignore[arg-type]
        except BaseException:
            os.close(fd)
            raise
        wrapper.close()
        if not wrapper.owned:
            os.close(fd)


def _config() -> irqbypass.Config:
    return irqbypass.parse_config(
        "[[producers]]\nname = 'p'\nkind = 'mock'\ntoken = 't'\noptions = { count = 0 }\n"
    )


def _posted_consumer(key: str) -> Callable[[Any], Callable[[], object]]:
    return lambda h: _with_token(lambda t: PostedInterruptConsumer(token=t, **{key: h}))


def _descriptor(key: str) -> Callable[[Any], Callable[[], object]]:
    return lambda h: lambda: _closing(PostedDescriptor(**{key: h}))


#: entry point (and argument) -> how to call it with a hostile value
ENTRY_POINTS: dict[str, Callable[[Any], Callable[[], object]]] = {
    "Eventfd(initval)": lambda h: lambda: irqbypass.Eventfd(h),
    "Eventfd(semaphore)": lambda h: lambda: irqbypass.Eventfd(semaphore=h),
    "Eventfd.from_fd(fd)": lambda h: lambda: irqbypass.Eventfd.from_fd(h),
    "Eventfd.from_fd(owned)": lambda h: lambda: _wrap_dup(h),
    "Eventfd.write(value)": lambda h: _eventfd(lambda e: e.write(h)),
    "Eventfd.read(timeout)": lambda h: _eventfd(lambda e: e.read(h)),
    "Eventfd.__eq__(other)": lambda h: _eventfd(lambda e: (e.__eq__(h), e.__ne__(h))),
    "HoldingEventfd.replay(token)": lambda h: lambda: irqbypass.plugin.HoldingEventfd().replay(h),
    "Topology(config)": lambda h: lambda: irqbypass.Topology(h, irqbypass.PluginHost()),
    "Topology(plugins)": lambda h: lambda: irqbypass.Topology(_config(), h),
    "Topology(manager)": lambda h: lambda: irqbypass.Topology(_config(), irqbypass.PluginHost(), h),
    "load_config(path)": lambda h: lambda: irqbypass.load_config(h),
    "parse_config(data)": lambda h: lambda: irqbypass.parse_config(h),
    "parse_config(file)": lambda h: lambda: irqbypass.parse_config("", file=h),
    "load_plugins(block)": lambda h: lambda: irqbypass.load_plugins(block=h),
    "load_plugins(allow)": lambda h: lambda: irqbypass.load_plugins(allow=h),
    "load_plugins(strict)": lambda h: lambda: irqbypass.load_plugins(strict=h),
    "PluginHost.register(plugin)": lambda h: lambda: irqbypass.PluginHost().register(h),
    "PluginHost.register(name)": lambda h: lambda: irqbypass.PluginHost().register(object(), h),
    "PluginHost.unregister(plugin)": lambda h: lambda: irqbypass.PluginHost().unregister(h),
    "PluginHost.unregister(name)": lambda h: lambda: irqbypass.PluginHost().unregister(name=h),
    "MockProducer(token)": lambda h: lambda: _closing(MockProducer(token=h, count=0)),
    "MockProducer(name)": lambda h: _with_token(lambda t: MockProducer(token=t, name=h, count=0)),
    "MockProducer(rate)": lambda h: _with_token(lambda t: MockProducer(token=t, rate=h, count=0)),
    "MockProducer(count)": lambda h: _with_token(lambda t: MockProducer(token=t, count=h, rate=0)),
    "MockProducer(burst)": lambda h: _with_token(lambda t: MockProducer(token=t, burst=h, count=0)),
    "MockProducer(delay)": lambda h: _with_token(lambda t: MockProducer(token=t, delay=h, count=0)),
    "LoggingConsumer(token)": lambda h: lambda: LoggingConsumer(token=h),
    "LoggingConsumer(name)": lambda h: _with_token(lambda t: LoggingConsumer(token=t, name=h)),
    "LoggingConsumer(level)": lambda h: _with_token(lambda t: LoggingConsumer(token=t, level=h)),
    "LoggingConsumer(json_file)": lambda h: _with_token(
        lambda t: LoggingConsumer(token=t, json_file=h)
    ),
    **{
        f"PostedInterruptConsumer({key})": (lambda key=key: _posted_consumer(key))()
        for key in ("name", "vector", "urgent", "nv", "ndst", "sn", "file", "lock", "drain")
    },
    **{
        f"PostedDescriptor({key})": (lambda key=key: _descriptor(key))()
        for key in ("nv", "ndst", "sn", "file", "lock", "notification")
    },
    "PostedDescriptor.attach(path)": lambda h: lambda: _closing(PostedDescriptor.attach(h)),
    "Port(vector)": lambda h: lambda: Port(h),
    "Port(urgent)": lambda h: lambda: Port(1, h),
}


def _check_message(exc: irqbypass.IrqBypassError) -> None:
    text = str(exc)
    assert text, "an error must say what was wrong"
    assert len(text) <= MESSAGE_LIMIT, f"{len(text)} characters"
    assert not any(c in text for c in "\x00\x1b\n\r"), f"raw control character in {text[:200]!r}"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_hostile_values_at_every_entry_point(
    entry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a path-like value creates nothing outside
    monkeypatch.setenv("IRQBYPASS_DISABLE_PLUGIN_AUTOLOAD", "1")
    outcomes: dict[str, str] = {}
    for name, make in HOSTILE.items():
        call = ENTRY_POINTS[entry](make())
        try:
            result = call()
        except irqbypass.IrqBypassError as exc:
            _check_message(exc)
            outcomes[name] = type(exc).__name__
        except Exception as exc:  # the defect this test is about
            raise AssertionError(f"{entry} given {name}: {type(exc).__name__}: {exc!r}") from exc
        else:
            _closing(result)
            outcomes[name] = "accepted"
        COUNTERS["hostile objects: cases"] += 1
        COUNTERS[
            f"hostile objects: {'accepted' if outcomes[name] == 'accepted' else 'refused'}"
        ] += 1


def test_a_factory_raising_an_unprintable_exception_is_reported_by_name() -> None:
    """A plugin's factory raising an exception whose str() raises: the
    topology's report about it raised instead (a RuntimeError from inside the
    error handler), hiding which plugin failed."""

    class Plugin:
        @irqbypass.plugin.hookimpl
        def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
            def factory(spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Producer:
                raise UnprintableError()

            register.producer("evil", factory)

    host = irqbypass.PluginHost()
    host.register(Plugin(), name="evil-plugin")
    config = irqbypass.parse_config("[[producers]]\nname = 'p'\nkind = 'evil'\ntoken = 't'\n")
    topology = irqbypass.Topology(config, host)
    with pytest.raises(irqbypass.TopologyError, match="evil-plugin") as info:
        topology.build()
    assert "UnprintableError" in str(info.value)
    assert topology.tokens == {}


def test_a_plugin_whose_import_raises_an_unprintable_exception_is_a_failed_plugin() -> None:
    from importlib import metadata

    class EntryPoint:
        name = "unprintable"
        dist = None

        def load(self) -> object:
            raise UnprintableError()

    host = irqbypass.PluginHost()
    failures = host.load_entry_points(
        environ={},
        entry_points=lambda: [EntryPoint()],  # type: ignore[list-item]
    )
    assert [f.name for f in failures] == ["unprintable"]
    assert failures[0].error is not None and "UnprintableError" in failures[0].error
    assert metadata  # the seam takes EntryPoint-like objects


def test_a_name_with_a_newline_is_not_a_valid_config_name() -> None:
    """`^...$` let a trailing newline through, so 'dev0\\n' was a valid name and
    forged a line in every message and table that printed it."""
    with pytest.raises(irqbypass.ConfigError, match="not a valid name"):
        irqbypass.parse_config('[[producers]]\nname = "dev0\\n"\nkind = "mock"\ntoken = "t"\n')


def test_load_config_refuses_what_is_not_a_configuration_file() -> None:
    """/dev/zero was read until memory ran out."""
    with pytest.raises(irqbypass.ConfigError, match="not a configuration file"):
        irqbypass.load_config("/dev/zero")
