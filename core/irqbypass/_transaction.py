"""Carrying out a topology's apply, attach, change or teardown, all or nothing.

A :class:`Transaction` is one such operation on a topology's ledger: it builds
endpoints (through the :class:`~irqbypass._build.Builder`), opens and
registers them (consumers first; a class's group at once), and on failure
undoes in reverse what it did; a change that closed endpoints it then cannot
replace restores them, through a transaction of its own. The step under way
(``build``, ``open``, ``register``) and what it acts on are the transaction's
own state, read when a failure is told.

Signal safety: the bookkeeping of each step is a signal-safe section
(:func:`~irqbypass.signalsafe.signal_safe`); only the calls into plugins and the
manager (each a :func:`~irqbypass.signalsafe.callout`) let a signal through, so
a Ctrl-C interrupts a hanging ``open`` and is otherwise raised between steps,
where the undo starts from a state that is recorded whole.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

from . import _plan
from ._build import Builder, log_traceback
from ._config import Config, EndpointConfig
from ._errors import CallbackError, ConnectError, IrqBypassError, TopologyError, Veto, with_notes
from ._ledger import Ledger, Placed
from ._manager import Manager
from ._options import show_error, show_exception
from ._plan import Plan
from ._signals import callout, deliver_deferred_signals, signal_safe

#: the steps of a transaction, as its failure names them
Step = Literal["build", "open", "register"]

#: what makes a plan's entries the running ones once it is done: adopt(plan,
#: the left-out pairs then (None: as they are))
Adopt = Callable[[Plan, list[tuple[str, str]] | None], None]

#: the order endpoints were placed in (undone in reverse)
_SERIAL = operator.attrgetter("serial")


def _closes(unit: list[Placed]) -> list[tuple[list[Placed], Callable[[], object]]]:
    """The calls that close a unit (last opened first), each with what it
    closes: its class's ``close_group`` once, or else each endpoint's own
    ``close``, each a call of its own, so that one that raises (or a Ctrl-C
    inside it) leaves none of the others open."""
    close_group = type(unit[0].endpoint).close_group
    if close_group is None:
        return [([placed], placed.endpoint.close) for placed in unit]
    return [(unit, partial(close_group, [placed.endpoint for placed in unit]))]


def _final_stats(placed: Placed) -> Mapping[str, object]:
    """What a just-closed endpoint counted, as a dict; a stats() that raises
    or returns no mapping counts nothing (the undo goes on)."""
    try:
        stats = placed.endpoint.stats()
        return stats if type(stats) is dict else dict(stats.items())
    except Exception:
        return {}


def _interrupt(exc: BaseException) -> BaseException | None:
    """``exc`` if it is an interrupt (KeyboardInterrupt, SIGTERM's, SystemExit)."""
    return None if isinstance(exc, Exception) else exc


def _failure(exc: BaseException, plugin: str = "") -> str:
    if isinstance(exc, (CallbackError, ConnectError)):  # the topology tells the state itself
        return exc.details
    if isinstance(exc, Exception):
        return _plugin_error(exc, plugin)
    return f"interrupted by {type(exc).__name__} (the rest was still torn down)"


def _plugin_error(exc: BaseException, plugin: str) -> str:
    """What a plugin's ``open``/``close`` raised: an irqbypass error or an
    OSError as it says, anything else as the bug in that plugin it is."""
    if plugin and isinstance(exc, Exception):
        log_traceback(exc, f"plugin {plugin}")
    if not plugin or isinstance(exc, (IrqBypassError, OSError)) or not isinstance(exc, Exception):
        return show_error(exc)
    return (
        f"{show_exception(exc)}; this is a bug in plugin {plugin} "
        "(it should raise an irqbypass.IrqBypassError)"
    )


def deliver(interrupt: BaseException | None) -> BaseException | None:
    """Run the handlers of signals deferred by a safe section; the first
    interrupt, the one already caught or the one a handler raises now."""
    try:
        deliver_deferred_signals()
    except BaseException as exc:
        return interrupt or exc
    return interrupt


def _tell(progress: Callable[[int], object], left: int) -> None:
    """Report teardown progress; a failing callback never stops a teardown."""
    with contextlib.suppress(Exception):  # advisory output only
        progress(left)


def _group_label(unit: list[Placed]) -> str:
    first = unit[0].config
    names = ", ".join(repr(placed.config.name) for placed in unit)
    return f"the group of {len(unit)} {first.side}s of kind {first.kind} ({names})"


def _units(placed: Iterable[Placed]) -> list[list[Placed]]:
    """What is opened together: one endpoint, or every endpoint of one side
    whose class defines ``open_group``, at the place of the first of them."""
    units: list[list[Placed]] = []
    groups: dict[tuple[str, type], list[Placed]] = {}
    for one in placed:
        cls = type(one.endpoint)
        if cls.open_group is None:
            units.append([one])
            continue
        key = (one.config.side, cls)
        if key not in groups:
            groups[key] = []
            units.append(groups[key])
        groups[key].append(one)
    return units


def _failed(
    action: str,
    doing: tuple[Step, str, str],
    exc: BaseException,
    undo_errors: list[str],
    interrupt: BaseException | None,
    undone: str,
) -> BaseException:
    """The exception to raise for a failed apply, attach or change, once
    its undo is done: the error as a build raised it, an interrupt (noted
    with the failure), or a TopologyError naming the step. ``undone``: the
    state a complete undo left, said when nothing failed in it."""
    interrupt = deliver(interrupt)
    step, what, plugin = doing
    reason = _failure(exc, plugin) if isinstance(exc, Exception) else show_error(exc)
    message = f"{action}: {step} of {what} failed: {reason}"
    if undone and not undo_errors:
        message += f"; {undone}"
    if undo_errors:
        # an undo that failed the same way (a stop() that raises at every
        # disconnect too) is told as such, not in the same words again
        undo = [e.replace(f": {reason}", ": the same error again") for e in undo_errors]
        message += "; while undoing: " + "; ".join(undo)
    if not isinstance(exc, Exception):
        return with_notes(exc, undo_errors)
    if step == "build":  # nothing was opened: the error as the build raised it
        return exc
    if interrupt is not None:  # Ctrl-C while undoing: it wins, the failure is told
        error = with_notes(interrupt, [message])
    else:
        error = TopologyError(message, errno=getattr(exc, "errno", None))
    error.__cause__ = exc
    return error


@dataclass(slots=True, eq=False)
class Transaction:
    """One apply, attach, change or teardown of a topology (``action`` names
    it in errors), on its ``ledger``, with its ``builder`` and ``manager``.

    ``step`` is the step under way and ``subject`` what it acts on: the file
    being built (its repr), the unit being opened, the endpoint being
    registered; :meth:`doing` tells them, and :meth:`failed` the failure.
    """

    ledger: Ledger
    builder: Builder
    manager: Manager
    action: str = ""
    #: what the step under way acts on: first what is built (a file's repr)
    subject: str | Placed | list[Placed] = ""
    step: Step = "build"
    #: every endpoint this transaction built (what its undo releases)
    built: list[Placed] = field(default_factory=list)

    def doing(self) -> tuple[Step, str, str]:
        """The step under way, on what, and the plugin whose code runs it ("": the core's)."""
        subject = self.subject
        if isinstance(subject, str):
            return self.step, subject, ""
        if isinstance(subject, Placed):
            return self.step, subject.label, ""
        what = subject[0].label if len(subject) == 1 else _group_label(subject)
        return self.step, what, subject[0].plugin

    def teardown(
        self, progress: Callable[[int], object] | None = None
    ) -> tuple[list[str], BaseException | None]:
        """Undo every endpoint and release the tokens; (what failed, the first
        interrupt)."""
        result = self.undo(list(self.ledger.by_name.values()), progress)
        self.ledger.clear()
        return result

    @signal_safe
    def open(
        self, placed: Sequence[Placed], progress: Callable[[int, int], object] | None = None
    ) -> None:
        """Open and register ``placed``, unit by unit, recording each step the
        moment it is done; ``progress(done, total)`` after each unit (in
        endpoints). Signal-safe: the calls into plugins, the manager and
        ``progress`` are each a ``callout`` (a signal there interrupts them, as
        it should); anywhere else it waits for the end of the unit, where it
        is delivered (the caller delivers one that lands after the last)."""
        done, total = 0, len(placed)
        for unit in _units(placed):
            self.step, self.subject = "open", unit
            # the plugin's own method is the callout's: a signal raised out of it
            # interrupted the open, so the unit is not open and the undo does not
            # close it (one landing once open() returned waits, in callout's frame)
            first = unit[0].endpoint
            open_group = type(first).open_group
            if open_group is None:
                callout(first.open)
            else:
                callout(open_group, [one.endpoint for one in unit])
            for one in unit:
                one.opened = True
            for one in unit:
                if one.config.bypass:
                    self.step, self.subject = "register", one
                    self._register(one)
            deliver_deferred_signals()  # a Ctrl-C that waited for the bookkeeping
            done += len(unit)
            if progress is not None:
                with contextlib.suppress(Exception):  # advisory, as in teardown: never fails it
                    callout(progress, done, total)

    def _register(self, one: Placed) -> None:
        """Register ``one`` (open) with the manager, recording it the moment it
        is; a plugin's Veto(unpaired=True) leaves its pair unpaired (recorded)."""
        register = getattr(self.manager, f"register_{one.config.side}")
        registered = False
        try:
            callout(register, one.endpoint)
            registered = True  # it returned: registered (no lookup needed)
        except ConnectError as exc:
            veto = exc.__cause__
            if not (isinstance(veto, Veto) and veto.unpaired):
                raise
            # the plugin leaves this pair unpaired: open, on the eventfd path
            self.ledger.veto(one.config.token, show_error(veto))
        finally:
            # a CallbackError means "registered, but a start raised": undo must see it
            one.registered = registered or self.manager.is_registered(one.endpoint)  # type: ignore[arg-type]

    def failed(
        self,
        exc: BaseException,
        undo_errors: list[str],
        interrupt: BaseException | None,
        undone: str = "",
    ) -> BaseException:
        """The exception to raise for this failed apply, attach or change, once
        its undo is done (see :func:`_failed`)."""
        return _failed(self.action, self.doing(), exc, undo_errors, interrupt, undone)

    @signal_safe
    def undo(
        self, placed: Sequence[Placed], progress: Callable[[int], object] | None = None
    ) -> tuple[list[str], BaseException | None]:
        """Unregister and close ``placed`` (last first), then release them; (what
        failed, the first interrupt). Signal-safe: nothing here is left half
        done, and every step is attempted."""
        errors: list[str] = []
        interrupt: BaseException | None = None
        placed = sorted(placed, key=_SERIAL)
        left = len(placed)
        unregister: dict[str, Callable[..., object]] = {
            "producer": self.manager.unregister_producer,
            "consumer": self.manager.unregister_consumer,
        }
        for unit in reversed(_units(placed)):
            opened: list[Placed] = []  # to close, once the unit is unregistered
            for one in reversed(unit):
                if one.registered:
                    off = unregister[one.config.side]
                    try:
                        callout(off, one.endpoint)  # it returned: no longer registered
                    except BaseException as exc:  # Ctrl-C included: recorded, and on
                        interrupt = self._unregister_again(one, off, exc, errors, interrupt)
                    one.registered = False
                if one.opened:
                    opened.append(one)
            if opened:
                for one in opened:
                    one.opened = False
                    one.history.opens += 1
                for closed, close in _closes(opened):
                    try:
                        callout(close)
                    except BaseException as exc:  # Ctrl-C included: recorded, and on
                        interrupt = interrupt or _interrupt(exc)
                        what = closed[0].label if len(closed) == 1 else _group_label(closed)
                        errors.append(f"close of {what}: {_failure(exc, closed[0].plugin)}")
                for one in opened:
                    one.history.retire(_final_stats(one))
            left -= len(unit)
            if progress is not None:
                _tell(progress, left)
        waiting = self.ledger.waiting(placed)
        self.ledger.release(placed)
        for one in waiting:  # the pair asked again: alone, or with the end that comes next
            try:
                self._register(one)
            except BaseException as exc:  # Ctrl-C included: recorded, and on
                interrupt = interrupt or _interrupt(exc)
                errors.append(f"register of {one.label}: {_failure(exc)}")
        return errors, interrupt

    @signal_safe
    def _unregister_again(
        self,
        one: Placed,
        off: Callable[..., object],
        exc: BaseException,
        errors: list[str],
        interrupt: BaseException | None,
    ) -> BaseException | None:
        """After ``off(one.endpoint)`` raised ``exc``: record it, and try again
        (twice at most) while the endpoint is still registered (a Ctrl-C cut the
        unregister before the manager took it): an undo, once begun,
        finishes. Returns the first interrupt."""
        for attempt in range(3):
            if attempt:
                try:
                    callout(off, one.endpoint)
                except BaseException as again:
                    exc = again
                else:
                    return interrupt  # it returned: no longer registered
            interrupt = interrupt or _interrupt(exc)
            if isinstance(exc, Exception):
                errors.append(f"unregister of {one.label}: {_failure(exc)}")
            if not self.manager.is_registered(one.endpoint):  # type: ignore[arg-type]
                return interrupt
        errors.append(f"unregister of {one.label}: interrupted three times")
        return interrupt

    @signal_safe
    def detach(self, names: list[str]) -> tuple[list[str], BaseException | None]:
        """Undo the named entries and forget them (signal-safe: both or neither)."""
        ledger = self.ledger
        errors, interrupt = self.undo([p for p in map(ledger.by_name.get, names) if p is not None])
        ledger.forget(names)
        return errors, interrupt

    def carry_out(
        self,
        plan: Plan,
        *,
        home: Config,
        adopt: Adopt,
    ) -> None:
        """Do ``plan``, all or nothing, in O(changes): only the pairs on the
        tokens it touches are closed and opened; then ``adopt(plan,
        skipped)`` makes its entries the running ones."""
        moves = _plan.moves(plan, self.ledger, self.builder.unavailable)
        self.change(
            plan.source,
            list(moves.coming),
            [self.ledger.by_name[name] for name in moves.leaving],
            commit=partial(adopt, plan, list(moves.now_skipped)),
            home=home,
            skipped=moves.skipped,
        )

    @signal_safe
    def change(
        self,
        source: Config,
        added: list[EndpointConfig],
        removed: list[Placed],
        *,
        commit: Callable[[], None],
        home: Config,
        skipped: Mapping[str, str] | None = None,
    ) -> None:
        """Remove ``removed`` and add ``added``, all or nothing, then ``commit()``
        the bookkeeping. Signal-safe: a signal waits for the delivery points
        between steps (after each build, after each unit opened), where it
        is raised and rolls the change back; the plugins' code stays
        interruptible, as in an apply.

        Added entries that free nothing (a new name on a token nothing leaves)
        are opened first, so their failure touches nothing else; then the
        removed ones are closed and the rest opened (:meth:`_swap`). ``home``:
        the running file, which a restore of the removed entries names."""
        if skipped is None:
            skipped = self.builder.unavailable(added)
        leaving_names = {p.config.name for p in removed}
        leaving_tokens = {p.config.token for p in removed}
        try:
            self.builder.build(added, source, skipped, self.built)
            first = [
                p
                for p in self.built
                if p.config.name not in leaving_names and p.config.token not in leaving_tokens
            ]
            self.ledger.insert(first)
            self.open(first)
        except BaseException as exc:
            errors, interrupt = self.undo(self.built)
            raise self.failed(exc, errors, interrupt)  # noqa: B904
        if not removed and len(first) == len(self.built):
            commit()
            return
        self._swap(removed, first, commit, home)

    @signal_safe
    def _swap(
        self, removed: list[Placed], first: list[Placed], commit: Callable[[], None], home: Config
    ) -> None:
        """Close ``removed``, then open what was built and not opened ``first``.
        On a failure the new ones are closed and the removed ones built again
        from their entries (their counts carry on)."""
        old = [p.config for p in removed]
        errors, interrupt = self.undo(removed)
        try:
            if interrupt is not None:
                raise interrupt
            opened = {id(p) for p in first}  # by identity: `in first` was O(N^2) in __eq__
            second = [p for p in self.built if id(p) not in opened]
            self.ledger.insert(second)
            self.open(second)
        except BaseException as exc:
            errors += self._restore(old, home)
            raise self.failed(exc, errors, None)  # noqa: B904
        commit()
        if errors:
            raise TopologyError(
                f"{self.action}: the change is done, but removing the old endpoints reported: "
                + "; ".join(errors)
            )

    def _restore(self, old: list[EndpointConfig], home: Config) -> list[str]:
        """After a failed change: close what it opened, open what it closed
        (a transaction of its own). What could not be restored is returned
        (and is then missing)."""
        errors, _ = self.undo(self.built)
        again = replace(self, subject="the removed entries", step="build", built=[])
        try:
            again.builder.build(old, home, {}, again.built)
            again.ledger.insert(again.built)
            again.open(again.built)
        except BaseException as exc:
            more, _ = again.undo(again.built)
            lost = ", ".join(repr(e.name) for e in old)
            step, what, _plugin = again.doing()
            errors += [f"restoring {lost} failed at {step} of {what}: {show_error(exc)}"]
            errors += more
            self.ledger.lose(old)  # they are gone: the file no longer says what runs
        return errors
