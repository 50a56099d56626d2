"""The plan of a change, with no endpoint: entries in, a frozen plan or a refusal out.

A plan reads only entries and an index of them (``_plan.Running``); here that
index is a few dicts, so every rule of what a reload or a change touches is
checked without a plugin, a device or a manager.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
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


# -- property: a reload's plan, by groups and entry by entry, against an oracle --

#: IRQBYPASS_CONFIG_EXAMPLES (make fuzz raises it) scales this property
PLAN_EXAMPLES = int(os.environ.get("IRQBYPASS_CONFIG_EXAMPLES", "150"))
NAMES = [f"e{n}" for n in range(12)]
TOKENS = ["t0", "t1", "t2", "t3", "t4", "t5"]
#: option values TOML tells apart though Python may call them equal (1, 1.0, true)
OPTION_VALUES = st.sampled_from(
    [0, 1, 1.0, 0.0, -0.0, True, False, "1", "", [1], [1.0], [], {"a": 1}, {"a": True}, {}]
)
Entry = dict[str, object]
#: an entry's place: (whether it is a consumer's, its index on its side), in file order
Place = tuple[bool, int]
#: what an absent key is: writing it out with this value changes nothing
DEFAULTS: Entry = {"irq": None, "bypass": True, "optional": False, "options": {}}


def _typed(value: object) -> object:
    """A value with its TOML type, for the oracle (``1`` is not ``1.0`` nor
    ``true``; ``-0.0`` is written differently from ``0.0``)."""
    if isinstance(value, dict):
        return ("table", tuple(sorted((k, _typed(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("array", tuple(map(_typed, value)))
    return (type(value).__name__, repr(value))


@st.composite
def _files(draw: st.DrawFn) -> tuple[str, list[Entry]]:
    """A valid file of up to 12 entries (names unique, one end per token and
    side), as TOML and as the entries it holds (every key, defaults filled in)."""
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    entries: list[Entry] = []
    used: dict[str, set[str]] = {"producer": set(), "consumer": set()}
    for name in names:
        side = draw(st.sampled_from(["producer", "consumer"]))
        free = [t for t in TOKENS if t not in used[side]]
        if not free:
            continue
        token = draw(st.sampled_from(free))
        used[side].add(token)
        entry: Entry = {
            "side": side,
            "name": name,
            "kind": draw(st.sampled_from(["src", "sink"])),
            "token": token,
        }
        for key, values in (
            ("irq", st.sampled_from([0, 5])),
            ("bypass", st.booleans()),
            ("optional", st.booleans()),
            ("options", st.dictionaries(st.sampled_from(["a", "b"]), OPTION_VALUES, max_size=2)),
        ):
            if draw(st.booleans()):
                entry[key] = draw(values)
        entries.append(entry)
    order = {"producer": 0, "consumer": 1}
    entries.sort(key=lambda e: order[str(e["side"])])  # each side's index: its place in the file
    text = "".join(
        f"[[{e['side']}s]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in e.items() if k != "side")
        for e in entries
    )
    return text, [{**DEFAULTS, **e} for e in entries]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _placed(entries: list[Entry]) -> dict[str, tuple[Place, Entry]]:
    """name -> (its place in the file, the entry)."""
    index = {"producer": 0, "consumer": 0}
    found: dict[str, tuple[Place, Entry]] = {}
    for entry in entries:
        side = str(entry["side"])
        found[str(entry["name"])] = ((side != "producer", index[side]), entry)
        index[side] += 1
    return found


def _oracle(old: list[Entry], new: list[Entry]) -> tuple[_plan.Changes, set[str], set[object]]:
    """What a reload from ``old`` to ``new`` changes, from the written values:
    the changes, the names whose entry the ledger must adopt (changed, added,
    removed, or only moved in the file), and the touched tokens."""
    keys = ("side", "kind", "token", "irq", "bypass", "optional", "options")
    before, after = _placed(old), _placed(new)
    added = sorted((after[n][0], n) for n in after.keys() - before.keys())
    removed = sorted((before[n][0], n) for n in before.keys() - after.keys())
    changed: list[tuple[Place, str]] = []
    why: dict[str, tuple[str, ...]] = {}
    moved: set[str] = set()
    touched = {after[n][1]["token"] for _, n in added} | {before[n][1]["token"] for _, n in removed}
    for name in before.keys() & after.keys():
        (was, b), (now, a) = before[name], after[name]
        differ = tuple(k for k in keys if _typed(b[k]) != _typed(a[k]))
        if differ:
            changed.append((now, name))
            why[name] = differ
            touched |= {b["token"], a["token"]}
        elif was != now:
            moved.add(name)
    changes = _plan.Changes(
        tuple(n for _, n in added),
        tuple(n for _, n in removed),
        tuple(n for _, n in sorted(changed)),
        why,
    )
    updates = {n for _, n in added} | {n for _, n in removed} | set(why) | moved
    return changes, updates, touched


@settings(max_examples=PLAN_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old=_files(), new=_files())
def test_a_reloads_plan_is_what_the_files_differ_in(
    old: tuple[str, list[Entry]], new: tuple[str, list[Entry]]
) -> None:
    """Both ways of finding what a reload changes (group digests when the
    running entries are a file's, else entry by entry) plan exactly what the
    two files differ in: added, removed and changed names in file order, the
    keys each changed one differs in (in TOML types; a default written out is
    no change), every entry the ledger adopts (moved ones too), and the
    touched tokens."""
    old_config, new_config = parse_config(old[0], file="old.toml"), parse_config(new[0])
    changes, updates, touched = _oracle(old[1], new[1])
    for as_file in (True, False):
        plan = _plan.plan_reload(Running(old_config, as_file=as_file), new_config, "reloading")
        assert plan.changes == changes, as_file
        assert set(plan.updates) == updates, as_file
        assert all(plan.updates[n] is new_config.by_name.get(n) for n in updates), as_file
        assert plan.touched == touched, as_file
