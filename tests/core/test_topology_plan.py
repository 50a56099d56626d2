"""The plan of a change, with no endpoint: entries in, a frozen plan or a refusal out.

A plan reads only entries and an index of them (``_plan.Running``); here that
index is a few dicts, so every rule of what a reload or a change touches is
checked without a plugin, a device or a manager.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pytest
from irqbypass import _plan
from irqbypass._config import Config, EndpointConfig, parse_config
from irqbypass._errors import TopologyError


def pair(n: int, *, token: str | None = None, level: int = 0, optional: bool = False) -> str:
    token = token or f"t{n}"
    options = f"options = {{ level = {level} }}\n" if level else ""
    more = "optional = true\n" if optional else ""
    return (
        f'[[producers]]\nname = "p{n}"\nkind = "src"\ntoken = "{token}"\n{options}'
        f'[[consumers]]\nname = "c{n}"\nkind = "sink"\ntoken = "{token}"\n{more}'
    )


def config(*ns: int, file: str = "t.toml", **kwargs: object) -> Config:
    return parse_config("".join(pair(n, **kwargs) for n in ns), file=file)  # type: ignore[arg-type]


class Running:
    """A running topology as a plan sees it: its entries, which are placed, and
    the tokens left out. No endpoint anywhere."""

    def __init__(
        self,
        source: Config,
        *,
        as_file: bool = True,
        skipped: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.entries: dict[str, EndpointConfig] = dict(source.by_name)
        out = {t for t, _ in skipped}
        self.placed = {n for n, e in self.entries.items() if e.token not in out}
        self.skipped = list(skipped)
        self.file = source if as_file else None

    def ends(self, token: str) -> Sequence[EndpointConfig]:
        return [e for n, e in self.entries.items() if n in self.placed and e.token == token]


def none_unavailable(entries: Iterable[EndpointConfig]) -> Mapping[str, str]:
    return {}


@pytest.mark.parametrize("as_file", [True, False], ids=["by groups", "entry by entry"])
def test_a_reload_changing_one_entry_touches_its_token_alone(as_file: bool) -> None:
    running = Running(config(0, 1, 2), as_file=as_file)
    new = parse_config(pair(0) + pair(1, level=3) + pair(2), file="new.toml")
    plan = _plan.plan_reload(running, new, "reloading")
    assert plan.changes == _plan.Changes(changed=("p1",), why={"p1": ("options",)})
    assert plan.updates == {"p1": new.by_name["p1"]}
    assert plan.touched == {"t1"} and plan.config is new and plan.source is new
    moves = _plan.moves(plan, running, none_unavailable)
    # the changed producer is closed and opened again; its partner is re-paired
    assert moves.leaving == ("p1",)
    assert [e.name for e in moves.coming] == ["p1"]
    assert moves.skipped == {} and moves.now_skipped == ()


@pytest.mark.parametrize("as_file", [True, False], ids=["by groups", "entry by entry"])
def test_a_reload_adding_and_removing_names_them_in_file_order(as_file: bool) -> None:
    running = Running(config(0, 1, 2), as_file=as_file)
    new = config(0, 3, 4)
    plan = _plan.plan_reload(running, new, "reloading")
    assert plan.changes.added == ("p3", "p4", "c3", "c4")
    assert plan.changes.removed == ("p1", "p2", "c1", "c2")
    assert plan.changes.changed == () and plan.touched == {"t1", "t2", "t3", "t4"}
    assert plan.changes.describe() == (
        "added 'p3', 'p4', 'c3', 'c4'; removed 'p1', 'p2', 'c1', 'c2'"
    )
    moves = _plan.moves(plan, running, none_unavailable)
    assert sorted(moves.leaving) == ["c1", "c2", "p1", "p2"]
    assert [e.name for e in moves.coming] == ["c3", "c4", "p3", "p4"]


def test_an_entry_moved_in_the_file_is_no_change_but_is_adopted() -> None:
    running = Running(config(0, 1))
    new = config(1, 0)  # the same pairs, the other way round
    plan = _plan.plan_reload(running, new, "reloading")
    assert not plan.changes and plan.touched == frozenset()
    assert set(plan.updates) == {"p0", "c0", "p1", "c1"}
    assert plan.changes.describe() == "nothing changed"


def test_the_same_file_parsed_again_plans_nothing() -> None:
    running = Running(config(0, 1))
    plan = _plan.plan_reload(running, config(0, 1), "reloading")
    assert not plan.changes and plan.updates == {} and plan.touched == frozenset()


def test_a_plan_is_frozen() -> None:
    plan = _plan.plan_reload(Running(config(0)), config(0, level=1), "reloading")
    with pytest.raises(AttributeError):
        plan.action = "something else"  # type: ignore[misc]


def test_a_token_left_out_closes_its_partner_and_is_recorded() -> None:
    running = Running(config(0, 1))
    new = parse_config(pair(0) + pair(1, optional=True), file="new.toml")
    plan = _plan.plan_reload(running, new, "reloading")
    assert plan.changes.changed == ("c1",) and plan.changes.why == {"c1": ("optional",)}

    def unavailable(entries: Iterable[EndpointConfig]) -> Mapping[str, str]:
        return {e.token: "no device" for e in entries if e.optional}

    moves = _plan.moves(plan, running, unavailable)
    # both ends of t1 go: the pair is left out, the producer alone does not run
    assert sorted(moves.leaving) == ["c1", "p1"]
    assert [e.name for e in moves.coming] == ["c1", "p1"]
    assert moves.skipped == {"t1": "no device"}
    assert moves.now_skipped == (("t1", "no device"),)


def test_a_token_left_out_and_untouched_stays_left_out() -> None:
    running = Running(config(0, 1), skipped=[("t1", "no device")])
    new = parse_config(pair(0, level=2) + pair(1), file="new.toml")
    plan = _plan.plan_reload(running, new, "reloading")
    assert plan.touched == {"t0"}
    moves = _plan.moves(plan, running, none_unavailable)
    assert moves.now_skipped == (("t1", "no device"),)


def test_a_change_replacing_with_the_same_entry_is_no_change() -> None:
    running = Running(config(0, 1))
    same = [running.entries["p1"]]
    plan = _plan.plan_change(running, _plan.fragment((), "add"), [], _plan.fragment(same, "r"), "x")
    assert not plan.changes and plan.touched == frozenset() and plan.config is None


def test_a_change_adds_removes_and_replaces_in_one_plan() -> None:
    running = Running(config(0, 1, 2), as_file=False)
    adding = parse_config(pair(3), file="add.toml")
    replacing = parse_config(pair(1, level=5).split("[[consumers]]")[0], file="p1.toml")
    plan = _plan.plan_change(running, adding, ["c2", "p2"], replacing, "changing")
    assert plan.changes == _plan.Changes(
        added=("p3", "c3"), removed=("c2", "p2"), changed=("p1",), why={"p1": ("options",)}
    )
    assert plan.updates == {
        "p1": replacing.by_name["p1"],
        "p3": adding.by_name["p3"],
        "c3": adding.by_name["c3"],
        "c2": None,
        "p2": None,
    }
    assert plan.touched == {"t1", "t2", "t3"}
    assert plan.source.file == "<change>" and len(plan.source.endpoints) == 3


def test_a_change_is_checked_whole_and_every_problem_is_told() -> None:
    running = Running(config(0, 1))
    adding = parse_config(pair(1) + pair(5, token="t0"), file="add.toml")
    with pytest.raises(TopologyError) as caught:
        _plan.plan_change(running, adding, ["zz", "p0", "p0"], _plan.fragment((), "r"), "changing")
    message = str(caught.value)
    assert message.startswith("changing: nothing was changed: ")
    for problem in (
        "'p1' to add is already an entry (replace it instead)",
        "'zz' to remove is not an entry",
        "'p0' is named twice (once per change)",
        # t0's producer leaves, so p5 may take its place; its consumer stays
        "'c5': token 't0' is already used by consumer 'c0' (kind sink); one consumer per token",
        "'p1': token 't1' is already used by producer 'p1' (kind src); one producer per token",
    ):
        assert problem in message
    assert "'p5': token" not in message
    assert message.endswith("(the entries are 'p0', 'p1', 'c0', 'c1')")


def test_two_new_entries_on_one_end_are_refused() -> None:
    running = Running(config(0))
    one = parse_config(pair(1, token="new"), file="one.toml").endpoints
    two = parse_config(pair(2, token="new"), file="two.toml").endpoints
    adding = _plan.fragment([*one, *two], "change: add")
    with pytest.raises(TopologyError, match="'p2': token 'new' is already used by another new"):
        _plan.plan_change(running, adding, [], _plan.fragment((), "r"), "changing")


def test_an_attach_of_a_known_name_or_a_held_end_is_refused() -> None:
    running = Running(config(0, 1))
    again = parse_config(pair(1), file="plug.toml")
    with pytest.raises(TopologyError) as caught:
        _plan.check_new(running, list(again.endpoints), again)
    assert str(caught.value) == (
        "plug.toml: producers[0]: an entry named 'p1' is already in the topology; "
        "names must be unique (detach it first, or pick another name)"
    )
    held = parse_config(pair(7, token="t0"), file="plug.toml")
    with pytest.raises(TopologyError) as caught:
        _plan.check_new(running, list(held.endpoints), held)
    assert str(caught.value) == (
        "plug.toml: producers[0]: token 't0' is already used by producer 'p0' (kind src); "
        "one producer per token"
    )
    fresh = parse_config(pair(8), file="plug.toml")
    _plan.check_new(running, list(fresh.endpoints), fresh)  # nothing to refuse


def test_an_end_held_by_an_entry_left_out_is_held_all_the_same() -> None:
    """A pair left out (an optional kind unavailable here) still holds its
    token's ends: a second consumer on that token is refused, by an attach and
    by a change, as one on a running pair is. Both let it in: the running
    entries then had two consumers on one token, which no file may have."""
    running = Running(config(0, 2), skipped=[("t2", "consumer 'c2' (kind sink): absent")])
    extra = parse_config(
        '[[consumers]]\nname = "c9"\nkind = "sink"\ntoken = "t2"\n', file="plug.toml"
    )
    with pytest.raises(TopologyError) as caught:
        _plan.check_new(running, list(extra.endpoints), extra)
    assert str(caught.value) == (
        "plug.toml: consumers[0]: token 't2' is already used by consumer 'c2' (kind sink); "
        "one consumer per token"
    )
    with pytest.raises(TopologyError, match="'c9': token 't2' is already used by consumer 'c2'"):
        _plan.plan_change(running, extra, [], _plan.fragment((), "r"), "changing")
    # the entry left out may be replaced, or removed for another to take its end
    _plan.plan_change(running, _plan.fragment((), "a"), [], config(2, file="r.toml"), "changing")
    _plan.plan_change(running, extra, ["c2"], _plan.fragment((), "r"), "changing")


def test_a_detach_of_unknown_names_lists_the_first_twenty_entries() -> None:
    running = Running(config(*range(11)))
    _plan.check_detach(running, ["p3", "c10"], "detaching")  # known: nothing raised
    with pytest.raises(TopologyError) as caught:
        _plan.check_detach(running, ["p3", "x", "y"], "detaching")
    listed = (
        ", ".join(repr(f"p{n}") for n in range(11))
        + ", "
        + ", ".join(repr(f"c{n}") for n in range(9))
    )
    assert str(caught.value) == f"detaching: no entry named 'x', 'y'; the entries are {listed} ..."


def test_a_fragment_is_a_config_or_entries_and_nothing_else() -> None:
    entries = config(0)
    assert _plan.fragment(entries, "attach") is entries
    made = _plan.fragment(entries.producers[0], "attach")
    assert made.file == "<attach>" and made.endpoints == entries.producers
    with pytest.raises(TopologyError, match=r"^attach: pass an irqbypass.Config .* not 5"):
        _plan.fragment(5, "attach")  # type: ignore[arg-type]
    with pytest.raises(TopologyError, match=r"list of irqbypass\.EndpointConfig"):
        _plan.fragment(["p0"], "attach")  # type: ignore[list-item]
