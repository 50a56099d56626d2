"""Model-based testing of a running topology reloaded with random files.

A hypothesis RuleBasedStateMachine applies a random file to a Topology, then
reloads it (``Topology.reconcile``) or changes it (``change``) towards more
random files, attaches entries on ends nothing holds, or detaches some; a
reload, change or attach now and then with one open or add failing once (a
DeviceError, or a KeyboardInterrupt: undone and let through). The files draw
from a small pool of names and tokens, with changed options, moved tokens and
entries, irq, bypass (false: opened, never registered) and optional pairs whose
kind is unavailable (left out); each reload keeps some tokens' entries as they
were. After every step the topology must be exactly what applying its entries
would make it (a failed one: exactly what it was before), and the pairs the
step did not touch (a token whose entries are the same in both files) saw no
callback, no open and no close. At teardown every endpoint ever opened is
closed.

``IRQBYPASS_MACHINE_EXAMPLES`` (default 150, a third of it here: each step
opens a topology) and ``IRQBYPASS_MACHINE_STEPS`` (default 50, a quarter here)
scale the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import hypothesis.strategies as st
import irqbypass
import irqbypass.plugin
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from irqbypass._config import Config, EndpointConfig, parse_config
from irqbypass._topology import Topology
from rel_support import COUNTERS

EXAMPLES = max(10, int(os.environ.get("IRQBYPASS_MACHINE_EXAMPLES", "150")) // 3)
STEPS = max(5, int(os.environ.get("IRQBYPASS_MACHINE_STEPS", "50")) // 4)
TOKENS = ("t0", "t1", "t2", "t3")
PRODUCERS = ("p0", "p1", "p2", "p3", "p4")
CONSUMERS = ("c0", "c1", "c2", "c3", "c4")


class Recorder:
    """Kinds ``rec-src``, ``rec-sink`` and ``rec-absent`` (never available):
    every call journaled as ``<what> <name>``; ``fail`` names the one call that
    fails, once, raising ``fail_with`` (a DeviceError, or a KeyboardInterrupt as
    a Ctrl-C inside the call raises). Every endpoint made is kept, to check it
    is closed at the end."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.fail: str | None = None
        self.fail_with: type[BaseException] = irqbypass.DeviceError
        self.made: list[_Journal] = []

    def act(self, what: str) -> None:
        self.log.append(what)
        if what == self.fail:
            self.fail = None
            if self.fail_with is KeyboardInterrupt:
                raise KeyboardInterrupt
            raise irqbypass.DeviceError(f"{what} failed", errno=5)

    def _made(self, endpoint: _Journal, spec: irqbypass.plugin.EndpointSpec) -> None:
        opts = spec.options_reader()
        endpoint.rec, endpoint.level = self, opts.get_int("level", 0)
        opts.finish()
        self.made.append(endpoint)

    def source(self, spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Producer:
        endpoint = _Source(token=spec.token, name=spec.name)
        self._made(endpoint, spec)
        return endpoint

    def sink(self, spec: irqbypass.plugin.EndpointSpec) -> irqbypass.Consumer:
        endpoint = _Sink(token=spec.token, name=spec.name)
        self._made(endpoint, spec)
        return endpoint

    @irqbypass.plugin.hookimpl
    def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
        register.producer("rec-src", self.source)
        register.consumer("rec-sink", self.sink)
        register.consumer("rec-absent", self.sink, availability=lambda: "not here")


class _Journal:
    name: str
    rec: Recorder
    level: int
    is_open = False

    def open(self) -> None:
        self.rec.act(f"open {self.name}")
        self.is_open = True

    def close(self) -> None:
        self.is_open = False
        self.rec.act(f"close {self.name}")

    def stop(self) -> None:
        self.rec.act(f"stop {self.name}")

    def start(self) -> None:
        self.rec.act(f"start {self.name}")

    def stats(self) -> dict[str, int]:
        return {"level": self.level}


class _Source(_Journal, irqbypass.Producer):  # type: ignore[misc]
    def add_consumer(self, consumer: Any) -> None:
        self.rec.act(f"add {self.name}")

    def del_consumer(self, consumer: Any) -> None:
        self.rec.act(f"del {self.name}")


class _Sink(_Journal, irqbypass.Consumer):  # type: ignore[misc]
    def add_producer(self, producer: Any) -> None:
        self.rec.act(f"add {self.name}")

    def del_producer(self, producer: Any) -> None:
        self.rec.act(f"del {self.name}")


#: token -> side -> the entry on that end (name, kind, and the keys written out)
Layout = dict[str, dict[str, dict[str, object]]]


def _end(draw: st.DrawFn, side: str, name: str) -> dict[str, object]:
    """One entry: an unavailable kind only on an optional consumer (its pair
    is left out); irq, bypass and options now and then."""
    entry: dict[str, object] = {
        "name": name,
        "kind": "rec-src" if side == "producer" else "rec-sink",
    }
    if draw(st.booleans()):
        entry["optional"] = True
        if side == "consumer" and draw(st.integers(0, 3)) == 0:
            entry["kind"] = "rec-absent"
    if draw(st.integers(0, 3)) == 0:
        entry["irq"] = draw(st.sampled_from([5, 6]))
    if draw(st.integers(0, 3)) == 0:
        entry["bypass"] = draw(st.booleans())
    if draw(st.booleans()):
        entry["options"] = {"level": draw(st.integers(0, 2))}
    return entry


@st.composite
def layouts(draw: st.DrawFn, old: Layout | None = None) -> Layout:
    """A valid file's entries by token: each of ``old``'s tokens is kept as it
    is or drawn again (its names may move to other tokens); names stay unique."""
    kept = {t: ends for t, ends in (old or {}).items() if draw(st.booleans())}
    used = {str(e["name"]) for ends in kept.values() for e in ends.values()}
    layout: Layout = dict(kept)
    for token in TOKENS:
        if token in kept:
            continue
        ends: dict[str, dict[str, object]] = {}
        for side, pool in (("producer", PRODUCERS), ("consumer", CONSUMERS)):
            free = [n for n in pool if n not in used]
            wanted: bool = draw(st.booleans())
            if free and wanted:
                name: str = draw(st.sampled_from(free))
                used.add(name)
                ends[side] = _end(draw, side, name)
        if ends:
            layout[token] = ends
    return layout


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


@st.composite
def files(draw: st.DrawFn, layout: Layout) -> str:
    """``layout`` as TOML, each side's entries in a drawn order."""
    lines: list[str] = []
    for side in ("producer", "consumer"):
        here = [(t, ends[side]) for t, ends in layout.items() if side in ends]
        for token, entry in draw(st.permutations(here)):
            lines += [f"[[{side}s]]", f'token = "{token}"']
            lines += [f"{key} = {_toml(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


def _absent(entries: Iterable[EndpointConfig]) -> set[str]:
    """The tokens of the pairs left out: an end's kind is unavailable."""
    return {e.token for e in entries if e.kind == "rec-absent"}


def _ends(entries: Iterable[EndpointConfig]) -> dict[str, set[tuple[str, str]]]:
    """token -> the (name, fingerprint) of each of its entries."""
    ends: dict[str, set[tuple[str, str]]] = {}
    for e in entries:
        ends.setdefault(e.token, set()).add((e.name, e.fingerprint))
    return ends


#: (the call, the name, what it raises): ``open X`` or ``add X`` failing once
Failing = tuple[str, str, type[BaseException]]
FAILING = st.none() | st.tuples(
    st.sampled_from(["open", "add"]),
    st.sampled_from(PRODUCERS + CONSUMERS),
    st.sampled_from([irqbypass.DeviceError, irqbypass.DeviceError, KeyboardInterrupt]),
)


class ReloadMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rec = Recorder()
        self.host = irqbypass.PluginHost()
        self.host.register(self.rec, name="rec")
        self.topology: Topology | None = None
        #: the running entries, by name, and the file they are (None after a change)
        self.entries: dict[str, EndpointConfig] = {}
        self.file: str | None = None
        self.layout: Layout = {}
        self.count = 0

    @initialize(data=st.data())
    def apply(self, data: st.DataObject) -> None:
        layout = data.draw(layouts())
        config = parse_config(data.draw(files(layout)), file="f0.toml")
        self.topology = Topology(config, self.host)
        self.topology.apply()
        self.entries, self.file, self.layout = dict(config.by_name), config.file, layout
        COUNTERS["reload machine: applies"] += 1

    def _next(self, data: st.DataObject) -> tuple[Config, Layout]:
        self.count += 1
        layout = data.draw(layouts(self.layout))
        return parse_config(data.draw(files(layout)), file=f"f{self.count}.toml"), layout

    def _attempt(self, what: str, call: Callable[[], object], failing: Failing | None) -> bool:
        """``call()`` with ``failing`` (``open X``, ``add X``) failing once:
        whether it was done (else it raised TopologyError, or the
        KeyboardInterrupt, for that fault)."""
        self.rec.fail = None if failing is None else f"{failing[0]} {failing[1]}"
        self.rec.fail_with = irqbypass.DeviceError if failing is None else failing[2]
        self.rec.log.clear()
        try:
            call()
        except (irqbypass.TopologyError, KeyboardInterrupt) as error:
            assert failing is not None and self.rec.fail is None, f"{error!r}: nothing failed"
            # an interrupt is undone and let through as itself; a failure is told
            interrupted = failing[2] is KeyboardInterrupt
            assert isinstance(error, KeyboardInterrupt) is interrupted, repr(error)
            COUNTERS[f"reload machine: {what} undone"] += 1
            return False
        finally:
            self.rec.fail = None
        COUNTERS[f"reload machine: {what} done"] += 1
        return True

    @rule(data=st.data(), failing=FAILING)
    def reload(self, data: st.DataObject, failing: Failing | None) -> None:
        assert self.topology is not None
        config, layout = self._next(data)
        before = list(self.entries.values())
        if self._attempt("reloads", lambda: self.topology.reconcile(config), failing):  # type: ignore[union-attr]
            self.entries, self.file, self.layout = dict(config.by_name), config.file, layout
        self._untouched(before, config.endpoints)

    @rule(data=st.data(), failing=FAILING, same=st.booleans())
    def change(self, data: st.DataObject, failing: Failing | None, same: bool) -> None:
        """The next file's differences as one change: added, removed and
        replaced entries (with ``same``, the unchanged ones replaced too: no
        change for them)."""
        assert self.topology is not None
        config, layout = self._next(data)
        old, new = self.entries, config.by_name
        add = [e for n, e in new.items() if n not in old]
        remove = [n for n in old if n not in new]
        differ = [e for n, e in new.items() if n in old and e.fingerprint != old[n].fingerprint]
        alike = [e for n, e in new.items() if n in old and e.fingerprint == old[n].fingerprint]
        replace = differ + (alike if same else [])
        call = partial(self.topology.change, add=add, remove=remove, replace=replace)
        before = list(old.values())
        after = {n: e for n, e in old.items() if n not in remove}
        after.update({e.name: e for e in add + differ})
        if self._attempt("changes", call, failing):
            self.entries, self.file, self.layout = after, None, layout
        self._untouched(before, after.values())

    @rule(data=st.data(), failing=FAILING)
    def attach(self, data: st.DataObject, failing: Failing | None) -> None:
        """New entries on ends nothing holds (a hot-plug), as a TOML fragment."""
        assert self.topology is not None
        drawn = data.draw(layouts(self.layout))
        used = set(self.entries)
        plugged: Layout = {}
        for token, ends in drawn.items():
            for side, entry in ends.items():
                if side not in self.layout.get(token, {}) and entry["name"] not in used:
                    plugged.setdefault(token, {})[side] = entry
                    used.add(str(entry["name"]))
        self.count += 1
        fragment = parse_config(data.draw(files(plugged)), file=f"plug{self.count}.toml")
        before = list(self.entries.values())
        after = {**self.entries, **fragment.by_name}
        if self._attempt("attaches", partial(self.topology.attach, fragment), failing):
            layout = {token: dict(ends) for token, ends in self.layout.items()}
            for token, ends in plugged.items():
                layout.setdefault(token, {}).update(ends)
            self.entries, self.file, self.layout = after, None, layout
        self._untouched(before, after.values())

    @precondition(lambda self: bool(self.entries))
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        """Some entries detached (a hot-unplug): what remains runs as if applied."""
        assert self.topology is not None
        names = data.draw(st.lists(st.sampled_from(sorted(self.entries)), min_size=1, unique=True))
        self.rec.log.clear()
        self.topology.detach(names)
        COUNTERS["reload machine: detaches"] += 1
        before = list(self.entries.values())
        self.entries = {n: e for n, e in self.entries.items() if n not in names}
        self.file = None
        self.layout = {
            token: kept
            for token, ends in self.layout.items()
            if (kept := {side: e for side, e in ends.items() if e["name"] not in names})
        }
        self._untouched(before, self.entries.values())

    def _untouched(self, old: Iterable[EndpointConfig], new: Iterable[EndpointConfig]) -> None:
        """The entries of a token whose entries are the same before and after saw nothing."""
        old_ends, new_ends = _ends(old), _ends(new)
        for token, ends in old_ends.items():
            if new_ends.get(token) != ends:
                continue
            for name, _ in ends:
                seen = [e for e in self.rec.log if e.split()[1] == name]
                assert seen == [], f"{name} on untouched token {token} saw {seen}"
            COUNTERS["reload machine: untouched tokens checked"] += 1

    @invariant()
    def as_if_applied(self) -> None:
        """The topology is what applying the running entries makes."""
        topology = self.topology
        if topology is None:
            return
        assert topology._ledger.violations() == []
        if self.file is not None:
            assert topology.config.file == self.file
        out = _absent(self.entries.values())
        assert {token for token, _ in topology.skipped} == out
        want = {n: e for n, e in self.entries.items() if e.token not in out}
        placed = {p.config.name: p for p in topology.placed}
        assert set(placed) == set(want)
        for name, p in placed.items():
            entry = want[name]
            got = (p.config.fingerprint, p.config.side, p.config.index)
            assert got == (entry.fingerprint, entry.side, entry.index), name
            endpoint = p.endpoint
            assert isinstance(endpoint, _Journal)
            # bypass = false: opened, never registered (never paired)
            assert p.opened and endpoint.is_open and p.registered is entry.bypass, name
            assert endpoint.level == entry.options.get("level", 0), name
        self._check_manager(topology.manager, {n: e for n, e in want.items() if e.bypass})

    @staticmethod
    def _check_manager(mgr: irqbypass.Manager, registered: dict[str, EndpointConfig]) -> None:
        """The manager holds the registered entries' endpoints, paired by token."""
        for side, listed in (("producer", mgr.producers()), ("consumer", mgr.consumers())):
            names = sorted(n for n, e in registered.items() if e.side == side)
            assert sorted(ep.name for ep in listed) == names, side
        ends = {(e.side, e.token): n for n, e in registered.items()}
        pairs = {
            (ends[("producer", t)], ends[("consumer", t)])
            for t in TOKENS
            if ("producer", t) in ends and ("consumer", t) in ends
        }
        assert {(p.name, c.name) for p, c in mgr.pairs()} == pairs

    def teardown(self) -> None:
        if self.topology is not None:
            self.topology.teardown()
            assert len(self.topology.manager) == 0
        still: Sequence[str] = [e.name for e in self.rec.made if e.is_open]
        assert still == [], f"left open: {still}"


TestReload = ReloadMachine.TestCase
TestReload.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
