"""The plan of a change to a running topology: what differs, and whether it may be done.

Pure: it reads entries (:class:`~irqbypass.EndpointConfig`) and the running
topology's index of them (:class:`Running`), and touches no endpoint, no
plugin and no manager. A plan is a frozen value: the topology's transaction
carries it out, all or nothing, and the ledger adopts its ``updates`` once it
is done. Every refusal is raised here, before anything is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ._config import Config, EndpointConfig, typed_differences
from ._errors import TopologyError
from ._options import show_value

#: how many entry names a refusal lists (then " ...")
LISTED = 20


@dataclass(frozen=True)
class Changes:
    """What :meth:`Topology.reconcile` changed, by entry name; ``why`` says which
    keys of each changed entry differ."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    why: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        """One line: ``added 'a'; removed 'b'; changed 'c' (options)``."""
        parts = []
        if self.added:
            parts.append("added " + ", ".join(map(repr, self.added)))
        if self.removed:
            parts.append("removed " + ", ".join(map(repr, self.removed)))
        if self.changed:
            parts.append(
                "changed "
                + ", ".join(f"{n!r} ({', '.join(self.why.get(n, ()))})" for n in self.changed)
            )
        return "; ".join(parts) or "nothing changed"


def differences(old: EndpointConfig, new: EndpointConfig) -> tuple[str, ...]:
    """The keys in which two entries of one name differ (empty: unchanged).
    Options compare with their types: ``true`` is not ``1``. Unchanged entries
    cost one comparison of their fingerprints."""
    return typed_differences(old, new)


#: how messages name an entry's endpoint: ``LABEL.format(entry)`` is
#: ``side 'name' (kind K)``
LABEL = "{0.side} {0.name!r} (kind {0.kind})"


class Running(Protocol):
    """What a plan reads of the running topology (its ledger)."""

    @property
    def entries(self) -> Mapping[str, EndpointConfig]:
        """Every running entry by name, skipped ones included, in order."""

    @property
    def skipped(self) -> Sequence[tuple[str, str]]:
        """(token, reason) of every pair left out."""

    @property
    def file(self) -> Config | None:
        """The file the entries are exactly (None: no file's, after an
        attach, a detach or a change): a reload compares its groups."""

    def ends(self, token: str) -> Sequence[EndpointConfig]:
        """The entries placed on ``token`` (none, one or both sides)."""


class Plan(NamedTuple):
    """A checked change: the entries it makes the running ones, what it says it
    changed, and the tokens whose pairs it closes and opens again. (A named
    tuple: immutable, and made at every reload with a fifth of the bytecodes
    of a frozen dataclass's ``__init__``.)"""

    #: how errors name the change (``reloading a.toml as b.toml``)
    action: str
    #: where the new entries come from (a build error names its lines)
    source: Config
    #: entry name -> its new entry (None: removed), for every entry added,
    #: removed, changed or moved in the file (moved is no change)
    updates: Mapping[str, EndpointConfig | None]
    changes: Changes
    #: the tokens an added, removed or changed entry is on, before or after
    touched: frozenset[str]
    #: the file the result is (a reload), or None (the entries are no file's)
    config: Config | None = None


class Moves(NamedTuple):
    """What a plan closes and opens, given which optional kinds are unavailable."""

    #: the entries built and opened, on the touched tokens, in file order
    coming: tuple[EndpointConfig, ...]
    #: the names of the placed entries closed
    leaving: tuple[str, ...]
    #: token -> reason, for each touched token left out (its entries are only validated)
    skipped: Mapping[str, str]
    #: the topology's left-out pairs once the plan is done
    now_skipped: tuple[tuple[str, str], ...]


def _planned(
    running: Running,
    action: str,
    source: Config,
    updates: dict[str, EndpointConfig | None],
    changes: Changes,
    config: Config | None = None,
) -> Plan:
    old = running.entries
    touched: set[str] = set()
    for name in (*changes.added, *changes.changed):
        touched.add(updates[name].token)  # type: ignore[union-attr]
    for name in (*changes.removed, *changes.changed):
        touched.add(old[name].token)
    return Plan(action, source, updates, changes, frozenset(touched), config)


def _file_order(entry: EndpointConfig) -> tuple[int, int]:
    return (0 if entry.side == "producer" else 1, entry.index)


def plan_reload(running: Running, new_config: Config, action: str) -> Plan:
    """What differs between the running entries and ``new_config``'s. Compared
    group by group when the running entries are a file's (O(changes), nearly),
    else entry by entry (one comparison of fingerprints each)."""
    old, new = running.entries, new_config.by_name
    names: Iterable[str] | None = None
    if running.file is not None:
        names = running.file.groups.differing(new_config.groups)
    if names is None:  # entry by entry; an old name is looked for only if one is gone
        gone = len(old) > len(new) - sum(1 for n in new if n not in old)
        names = [*new, *(n for n in old if n not in new)] if gone else new
    updates: dict[str, EndpointConfig | None] = {}
    added: list[EndpointConfig] = []
    removed: list[EndpointConfig] = []
    changed: list[EndpointConfig] = []
    why: dict[str, tuple[str, ...]] = {}
    for name in names:
        before, after = old.get(name), new.get(name)
        if before is after:
            continue
        if before is None:
            added.append(after)  # type: ignore[arg-type]
        elif after is None:
            removed.append(before)
        elif before.fingerprint != after.fingerprint:
            changed.append(after)
            why[name] = differences(before, after)
        elif before.index == after.index and before.side == after.side:
            continue  # the same entry, parsed again
        updates[name] = after
    changes = Changes(
        tuple(e.name for e in sorted(added, key=_file_order)),
        tuple(e.name for e in sorted(removed, key=_file_order)),
        tuple(e.name for e in sorted(changed, key=_file_order)),
        why,
    )
    return _planned(running, action, new_config, updates, changes, new_config)


def plan_change(
    running: Running, adding: Config, removing: Sequence[str], replacing: Config, action: str
) -> Plan:
    """The plan of ``Topology.change``: checked whole (:func:`check_change`),
    then nothing else is looked at (a replaced entry that differs in nothing
    is no change)."""
    source = merged(adding, replacing)
    check_change(running, adding, removing, replacing, action)
    updates: dict[str, EndpointConfig | None] = {}
    why: dict[str, tuple[str, ...]] = {}
    for entry in replacing.endpoints:
        diff = differences(running.entries[entry.name], entry)
        if diff:
            why[entry.name] = diff
            updates[entry.name] = entry
    for entry in adding.endpoints:
        updates[entry.name] = entry
    for name in removing:
        updates[name] = None
    changes = Changes(
        tuple(e.name for e in adding.endpoints),
        tuple(removing),
        tuple(n for n in (e.name for e in replacing.endpoints) if n in why),
        why,
    )
    return _planned(running, action, source, updates, changes)


def plan_attach(running: Running, source: Config, action: str) -> Plan:
    """The plan of ``Topology.attach``: every entry of ``source`` added, checked
    (:func:`check_new`); carried out as a change is, so a pair left out stays
    out with what joins it."""
    new = source.endpoints
    check_new(running, new, source)
    changes = Changes(added=tuple(e.name for e in new))
    return _planned(running, action, source, {e.name: e for e in new}, changes)


def plan_revisit(running: Running, tokens: Iterable[str], source: Config, action: str) -> Plan:
    """The plan that looks again at the pairs left out on ``tokens``, an end
    of which was detached: no entry changes, but the tokens count as touched,
    so :func:`moves` builds and opens the rest of their entries when none of
    them is unavailable now, or leaves them out with the reason that holds now
    (a change removing that end does the same). ``source``: the running file,
    which a build error names."""
    return Plan(action, source, {}, Changes(), frozenset(tokens))


def moves(
    plan: Plan,
    running: Running,
    unavailable: Callable[[Iterable[EndpointConfig]], Mapping[str, str]],
) -> Moves:
    """What ``plan`` closes and opens: every pair on a touched token whose
    entry changed, went, or is now left out; ``unavailable`` names the
    optional entries' tokens left out (the plugins' say)."""
    touched = plan.touched
    updates, entries, why = plan.updates, running.entries, plan.changes.why

    def after(name: str) -> EndpointConfig | None:
        return updates[name] if name in updates else entries.get(name)

    placed = [entry.name for token in touched for entry in running.ends(token)]
    wanted = _entries_on(
        touched, running, after, [*plan.changes.added, *plan.changes.changed, *placed]
    )
    skipped = unavailable(wanted)
    keep = set()
    leaving = []
    for name in placed:
        now = after(name)
        if now is not None and name not in why and now.token not in skipped:
            keep.add(name)
        else:
            leaving.append(name)
    coming = tuple([e for e in wanted if e.name not in keep])
    # a skipped token that nothing touched keeps all its entries, so stays skipped
    now_skipped = sorted(
        [(t, r) for t, r in running.skipped if t not in touched] + [*skipped.items()]
    )
    return Moves(coming, tuple(leaving), skipped, tuple(now_skipped))


def _entries_on(
    tokens: frozenset[str],
    running: Running,
    after: Callable[[str], EndpointConfig | None],
    names: list[str],
) -> list[EndpointConfig]:
    """The entries on ``tokens`` once changed (``after(name)``), in file
    order, of ``names`` (those placed there now, and the ones arriving) and
    of the tokens' skipped entries (found by one scan of the old ones)."""
    found = set(names)
    skipped = {t for t, _ in running.skipped} & tokens
    if skipped:
        found.update(n for n, e in running.entries.items() if e.token in skipped)
    wanted = [e for e in map(after, found) if e is not None and e.token in tokens]
    return sorted(wanted, key=lambda e: (e.side, e.index))


def fragment(entries: Config | Sequence[EndpointConfig], what: str) -> Config:
    """``entries`` as a Config (a fragment's own, or one named ``<what>``)."""
    if isinstance(entries, Config):
        return entries
    if isinstance(entries, EndpointConfig):
        entries = [entries]
    items = list(entries) if isinstance(entries, Sequence) else None
    if items is None or not all(isinstance(e, EndpointConfig) for e in items):
        raise TopologyError(
            f"{what}: pass an irqbypass.Config (parse_config of a TOML fragment) or a "
            f"list of irqbypass.EndpointConfig, not {show_value(entries)}"
        )
    return _config(f"<{what}>", items)


def _config(file: str, entries: Iterable[EndpointConfig]) -> Config:
    entries = list(entries)
    return Config(
        file=file,
        producers=tuple(e for e in entries if e.side == "producer"),
        consumers=tuple(e for e in entries if e.side == "consumer"),
    )


def merged(*fragments: Config) -> Config:
    """The one fragment with entries (its errors name its lines), or both in one."""
    full = [f for f in fragments if f.endpoints]
    if len(full) == 1:
        return full[0]
    return _config("<change>", (e for f in full for e in f.endpoints))


def _holder(running: Running, token: str, side: str) -> EndpointConfig | None:
    """The entry holding ``side`` of ``token``: placed, or of a pair left out
    (no endpoint, and an end all the same: looked for only on such a token)."""
    for entry in running.ends(token):
        if entry.side == side:
            return entry
    if any(t == token for t, _ in running.skipped):
        for entry in running.entries.values():
            if entry.token == token and entry.side == side:
                return entry
    return None


def _listing(entries: Mapping[str, object]) -> str:
    """The first entry names, for a refusal: ``'a', 'b' ...``."""
    shown = ", ".join(map(repr, list(entries)[:LISTED]))
    return shown + (" ..." if len(entries) > LISTED else "")


def check_new(running: Running, entries: Sequence[EndpointConfig], source: Config) -> None:
    """Refuse new entries whose name the topology has, or whose token and
    side an endpoint of it already holds (before anything is done)."""
    names: set[str] = set()
    for entry in entries:
        where = f"{source.file}: {entry.key_path}"
        if entry.name in names or entry.name in running.entries:
            raise TopologyError(
                f"{where}: an entry named {entry.name!r} is already in the topology; "
                "names must be unique (detach it first, or pick another name)"
            )
        names.add(entry.name)
        held = _holder(running, entry.token, entry.side)
        if held is not None:
            raise TopologyError(
                f"{where}: token {entry.token!r} is already used by {LABEL.format(held)}; "
                f"one {entry.side} per token"
            )


def check_change(
    running: Running,
    adding: Config,
    removing: Sequence[str],
    replacing: Config,
    action: str,
) -> None:
    """Refuse a change that names what is not there, or would leave two
    entries of one name, or two of one side on one token."""
    problems: list[str] = []
    seen: set[str] = set()
    entries = running.entries
    for name, what in [(e.name, "add") for e in adding.endpoints] + [
        *((n, "remove") for n in removing),
        *((e.name, "replace") for e in replacing.endpoints),
    ]:
        if name in seen:
            problems.append(f"{name!r} is named twice (once per change)")
        seen.add(name)
        if what == "add" and name in entries:
            problems.append(f"{name!r} to add is already an entry (replace it instead)")
        elif what != "add" and name not in entries:
            problems.append(f"{name!r} to {what} is not an entry")
    leaving = set(removing) | {e.name for e in replacing.endpoints}
    ends: set[tuple[str, str]] = set()
    for entry in adding.endpoints + replacing.endpoints:
        end = (entry.token, entry.side)
        held = _holder(running, entry.token, entry.side)
        if end in ends or (held is not None and held.name not in leaving):
            holder = LABEL.format(held) if held is not None else "another new entry"
            problems.append(
                f"{entry.name!r}: token {entry.token!r} is already used by {holder}; "
                f"one {entry.side} per token"
            )
        ends.add(end)
    if problems:
        raise TopologyError(
            f"{action}: nothing was changed: {'; '.join(problems)} "
            f"(the entries are {_listing(entries)})"
        )


def check_detach(running: Running, names: Sequence[str], action: str) -> None:
    """Refuse to detach a name that is no entry (before anything is done)."""
    unknown = [n for n in names if n not in running.entries]
    if unknown:
        raise TopologyError(
            f"{action}: no entry named {', '.join(map(repr, unknown))}; "
            f"the entries are {_listing(running.entries)}"
        )
