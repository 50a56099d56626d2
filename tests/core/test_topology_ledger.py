"""The ledger: the one index of what a topology runs, and the invariants it keeps.

``Ledger.violations()`` is what the topology's tests ask after every change
(the Ctrl-C sweeps of tests/reliability/test_live_signals.py included); here it
is shown to name each broken invariant, so that an empty answer means something.
"""

from __future__ import annotations

from collections.abc import Iterator

import irqbypass
import pytest
from irqbypass import _ledger
from irqbypass._config import Config, parse_config
from irqbypass._ledger import Ledger, Placed

pytestmark = pytest.mark.usefixtures("no_fd_leak")


def pairs(*ns: int) -> Config:
    return parse_config(
        "".join(
            f'[[producers]]\nname = "p{n}"\nkind = "src"\ntoken = "t{n}"\n'
            f'[[consumers]]\nname = "c{n}"\nkind = "sink"\ntoken = "t{n}"\n'
            for n in ns
        ),
        file="t.toml",
    )


class Sink(irqbypass.Consumer):
    def add_producer(self, producer: object) -> None:
        pass

    def del_producer(self, producer: object) -> None:
        pass


def place(ledger: Ledger, config: Config) -> list[Placed]:
    """Build and insert every entry as a topology's build does (no plugin)."""
    ledger.seed(config, {})
    built = []
    for entry in config.endpoints:
        token = ledger.token_table.acquire(entry.token)
        cls = irqbypass.Producer if entry.side == "producer" else Sink
        endpoint: irqbypass.Endpoint = cls(token=token, name=entry.name)
        built.append(Placed(entry, endpoint, token=token))
    ledger.insert(built)
    return built


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    ledger = Ledger(irqbypass.TokenTable())
    place(ledger, pairs(0, 1))
    yield ledger
    ledger.release(list(ledger.by_name.values()))
    ledger.clear()
    assert len(ledger.token_table) == 0


def test_a_ledger_built_from_a_file_keeps_its_invariants(ledger: Ledger) -> None:
    assert ledger.violations() == []
    assert [p.config.name for p in ledger.by_name.values()] == ["p0", "p1", "c0", "c1"]
    assert [row.token for row in ledger.status(settled=False)] == ["t0", "t1"]
    assert ledger.ends("t1") == [ledger.by_name["p1"].config, ledger.by_name["c1"].config]
    assert ledger.tokens == {"t0": ledger.by_name["p0"].token, "t1": ledger.by_name["p1"].token}


def test_a_released_pair_is_out_of_every_index(ledger: Ledger) -> None:
    ledger.veto("t1", "vetoed")
    ledger.release([ledger.by_name["p1"], ledger.by_name["c1"]])
    ledger.forget(["p1", "c1"])
    assert ledger.violations() == []
    assert ledger.by_name.get("p1") is None and ledger.ends("t1") == [] and ledger.vetoed == {}
    assert set(ledger.tokens) == {"t0"} and "t1" not in ledger.token_table
    assert ledger.file is None


def test_a_name_placed_again_carries_its_counts_on(ledger: Ledger) -> None:
    old = ledger.by_name["p1"]
    old.history.opens, old.history.counters["fired"] = 2, 7
    ledger.release([old])
    assert ledger.violations() == []  # retired, and no longer placed
    token = ledger.token_table.acquire("t1")
    again = Placed(old.config, irqbypass.Producer(token=token, name="p1"), token=token)
    ledger.insert([again])
    assert again.history.opens == 2 and again.history.counters == {"fired": 7}
    assert ledger.violations() == []


def test_the_retired_totals_are_bounded(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ledger, "RETIRED_KEPT", 1)
    for name in ("p0", "p1"):
        ledger.by_name[name].history.opens = 1
        ledger.release([ledger.by_name[name]])
    assert list(ledger._retired) == [("producer", "p1")]


@pytest.mark.parametrize(
    ("corrupt", "named"),
    [
        (lambda lg: lg._ends["t1"].pop("consumer"), "4 endpoints placed, 3 listed by token"),
        (lambda lg: lg.by_name.pop("c1"), "consumer 'c1' (kind sink) is on token 't1' but not"),
        (lambda lg: setattr(lg.by_name["p0"], "released", True), "'p0' (kind src) holds no token"),
        (lambda lg: setattr(lg.by_name["p0"], "registered", True), "is registered but not open"),
        (lambda lg: lg.entries.pop("p0"), "producer 'p0' (kind src) is not the running entry"),
        (lambda lg: lg._ends.setdefault("t9", {}), "token 't9' is listed with no endpoint"),
        (lambda lg: lg.veto("t9", "no"), "token 't9' is vetoed with no endpoint"),
        (lambda lg: lg.skipped.append(("t0", "gone")), "token 't0' is skipped but has endpoints"),
        (lambda lg: lg.skipped.append(("t9", "gone")), "token 't9' is skipped but no entry"),
        (lambda lg: setattr(lg, "file", pairs(0)), "the entries are said to be t.toml's"),
        (
            lambda lg: lg._retired.__setitem__(("producer", "p0"), _ledger.Totals(1)),
            "producer 'p0' (kind src) is placed and retired at once",
        ),
        (
            lambda lg: setattr(lg.by_name["c1"], "serial", 1),
            "consumer 'c1' (kind sink) is out of the",
        ),
        (
            lambda lg: setattr(lg.by_name["c1"], "token", lg.by_name["p0"].token),
            "the ends of token 't1' hold different eventfds",
        ),
        (lambda lg: lg.token_table.release("t1"), "token 't1' has fewer users than ends"),
    ],
)
def test_each_broken_invariant_is_named(ledger: Ledger, corrupt: object, named: str) -> None:
    undo = {
        "placed": dict(ledger.by_name),
        "ends": {t: dict(e) for t, e in ledger._ends.items()},
        "entries": dict(ledger.entries),
        "serial": {p.config.name: p.serial for p in ledger.by_name.values()},
        "token": {p.config.name: p.token for p in ledger.by_name.values()},
        "users": ledger.token_table.users("t1"),
    }
    corrupt(ledger)  # type: ignore[operator]
    found = ledger.violations()
    assert any(named in problem for problem in found), found
    # put it back, so the fixture releases what it placed
    ledger.by_name, ledger._ends, ledger.entries = undo["placed"], undo["ends"], undo["entries"]  # type: ignore[assignment]
    ledger.skipped.clear()
    ledger.vetoed.clear()
    ledger._retired.clear()
    for placed in ledger.by_name.values():
        placed.released = placed.registered = False
        placed.serial = undo["serial"][placed.config.name]  # type: ignore[index]
        placed.token = undo["token"][placed.config.name]  # type: ignore[index]
    while ledger.token_table.users("t1") < undo["users"]:  # type: ignore[operator]
        ledger.token_table.acquire("t1")
    ledger.file = None
    assert ledger.violations() == []
