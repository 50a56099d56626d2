"""A topology: endpoints built from a configuration, applied all-or-nothing,
changed while it runs.

Building asks each kind's factory for its endpoint (validation only, no device
touched); the topology takes the :class:`~irqbypass.Eventfd` of each token name
from its :class:`~irqbypass.TokenTable` (its own, or one shared with other
topologies on the same manager) and hands the same one to both ends of a pair.
Applying opens each endpoint, then registers it with the manager (unless
``bypass = false``), consumers first, as KVM assigns its irqfd before the
device's vector is routed. If any step fails, everything this apply did is
undone in reverse (unregister, then close) and a :class:`~irqbypass.TopologyError`
names the endpoint, the step and the cause. Teardown runs in reverse the same way.

A running topology changes in place: :meth:`Topology.attach` and
:meth:`Topology.detach` plug and unplug entries, :meth:`Topology.reconcile`
turns it into a new configuration. Each is all or nothing and leaves every other
pair alone (no callback runs on it). The counters of an entry add up across
every re-open (:attr:`Placed.totals`).

The topology is a facade over parts with one job each: the plan of a change
(``_plan``: what differs and whether it may be done, pure), the ledger
(``_ledger``: the one index of what runs), the builder (``_build``: endpoints
from entries) and the transaction (``_transaction``: build, open, register,
undo, restore, all or nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from . import _plan
from ._build import Builder
from ._collector import without_collection
from ._config import Config, EndpointConfig
from ._errors import TopologyError, with_notes
from ._eventfd import Eventfd
from ._ledger import Ledger
from ._ledger import Placed as Placed
from ._ledger import Totals as Totals
from ._manager import Manager
from ._options import show_value
from ._plan import Changes as Changes
from ._plan import differences as differences
from ._plugins import PluginHost
from ._signals import deliver_deferred_signals, delivering_deferred_signals, signal_safe
from ._status import PairStatus
from ._tokens import CheckTokens, TokenTable
from ._transaction import Transaction, deliver


class Topology:
    """The endpoints of one configuration, applied to one manager.

    ``tokens``: a :class:`~irqbypass.TokenTable` shared with other topologies on
    the same ``manager`` (they then pair across files), or a mapping of token
    names to eventfds the VMM owns (an :class:`~irqbypass.Eventfd` or an fd),
    which entries naming them use; by default a table of its own.
    """

    def __init__(
        self,
        config: Config,
        plugins: PluginHost,
        manager: Manager | None = None,
        *,
        tokens: TokenTable | Mapping[str, Eventfd | int] | None = None,
    ) -> None:
        for value, cls, what in (
            (config, Config, "config (from irqbypass.load_config or parse_config)"),
            (plugins, PluginHost, "plugins (from irqbypass.load_plugins)"),
        ):
            if not isinstance(value, cls):
                raise TopologyError(
                    f"Topology: {what} must be an irqbypass.{cls.__name__}, "
                    f"not {type(value).__name__} {show_value(value)}"
                )
        if manager is not None and not isinstance(manager, Manager):
            raise TopologyError(
                f"Topology: manager must be an irqbypass.Manager or None, "
                f"not {type(manager).__name__} {show_value(manager)}"
            )
        if tokens is not None and not isinstance(tokens, TokenTable | Mapping):
            raise TopologyError(
                f"Topology: tokens must be an irqbypass.TokenTable, a mapping of token names "
                f"to eventfds, or None, not {type(tokens).__name__} {show_value(tokens)}"
            )
        table = tokens if isinstance(tokens, TokenTable) else TokenTable(dict(tokens or {}))
        self.config = config
        self.plugins = plugins
        self.manager = manager if manager is not None else Manager(plugins)
        self._ledger = Ledger(table)
        self._builder = Builder(plugins, self._ledger)
        self._checking = False

    @property
    def token_table(self) -> TokenTable:
        """Where the endpoints' token eventfds are held from (given, or the
        topology's own)."""
        return self._ledger.token_table

    @property
    def tokens(self) -> dict[str, Eventfd]:
        """Token name -> eventfd, for the tokens this topology's endpoints use."""
        return self._ledger.tokens

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(token, reason) of every optional pair left out."""
        return self._ledger.skipped

    @property
    def placed(self) -> list[Placed]:
        """Every endpoint of the topology, in the order it was placed."""
        return list(self._ledger.by_name.values())

    @property
    def vetoed(self) -> list[tuple[str, str]]:
        """(token, reason) of every pair a hook's ``Veto(reason, unpaired=True)``
        left unpaired: both ends open, the interrupts on the eventfd path."""
        return list(self._ledger.vetoed.items())

    @property
    def applied(self) -> bool:
        """Some endpoint is open: :meth:`apply` ran and :meth:`teardown` has not finished."""
        return self._ledger.applied

    # -- building ----------------------------------------------------------

    def build(self, *, check_only: bool = False) -> None:
        """Take the token eventfds and create the endpoints; open nothing.

        ``check_only`` (``irqbypass check``): every token gets one shared
        eventfd, never signalled, so a check costs one fd however large the file;
        such a topology is for looking at, not for :meth:`apply`."""
        if check_only and not self._ledger.by_name:
            self._ledger.token_table, self._checking = CheckTokens(), True
        self._builder.build_file(self.config)  # nothing if built

    # -- applying ----------------------------------------------------------

    @without_collection
    def apply(self, progress: Callable[[int, int], object] | None = None) -> None:
        """Open and register every endpoint, or undo it all and raise.

        All or nothing under Ctrl-C too: each endpoint's state is recorded
        before a signal can land (the bookkeeping is signal-safe; the plugin's
        own ``open`` and the registration stay interruptible), and the undo,
        once begun, finishes (see :meth:`teardown`). ``progress(done, total)``
        is called after each endpoint (or group) is applied, in endpoints; an
        exception it raises is ignored (the apply goes on), as in teardown.

        The cyclic garbage collector is paused meanwhile, and put back as the
        caller had it on every path: the objects made are all long-lived (a
        full collection would walk them all and free nothing)."""
        file = self.config.file
        if self._checking:
            raise TopologyError(f"{file} was built with check_only; build a new Topology to apply")
        if self._ledger.by_name and self._ledger.applied:  # nothing placed: nothing open
            raise TopologyError(f"{file} is already applied; call teardown() before applying again")
        doing = Transaction(
            self._ledger, self._builder, self.manager, f"applying {file}", repr(file)
        )
        try:
            self._builder.build_file(self.config)  # nothing if built
            doing.open(list(self._ledger.by_name.values()), progress)
            deliver_deferred_signals()  # a Ctrl-C that waited as open() returned
        except BaseException as exc:
            errors, interrupt = doing.teardown()
            undone = "nothing was applied: every endpoint opened was closed again"
            raise doing.failed(exc, errors, interrupt, undone)  # noqa: B904 (its cause is set)

    @without_collection
    def teardown(self, progress: Callable[[int], object] | None = None) -> None:
        """Unregister and close everything, in reverse. Every step is attempted
        and, once begun, teardown finishes: a Ctrl-C or SIGTERM during it waits
        (in the bookkeeping) or interrupts only the plugin call it lands in
        (which is reported by name, and the rest goes on). Then the first
        interrupt is raised, with any failure noted on it; otherwise a
        TopologyError says what failed. ``progress(left)`` is called after each
        endpoint (or group) with how many endpoints are left; an exception it
        raises is ignored (teardown finishes). The cyclic garbage collector is
        paused meanwhile, as in :meth:`apply`."""
        errors, interrupt = Transaction(self._ledger, self._builder, self.manager).teardown(
            progress
        )
        interrupt = deliver(interrupt)
        if interrupt is not None:
            raise with_notes(interrupt, errors and [self._teardown_message(errors)])
        if errors:
            raise TopologyError(self._teardown_message(errors))

    def _teardown_message(self, errors: list[str]) -> str:
        return f"tearing down {self.config.file}: " + "; ".join(errors)

    # -- changing a running topology -----------------------------------------

    def attach(self, entries: Config | Sequence[EndpointConfig]) -> None:
        """Open, register and pair new entries (a hot-plugged device), all or
        nothing: on failure every step of this attach is undone and a
        TopologyError (or the ConfigError of the build) names the entry, the
        step and why. Every other pair is left alone; an entry whose token an
        endpoint of the topology (or of one sharing its token table) holds
        pairs with it.

        ``entries``: a :class:`~irqbypass.Config` (a TOML fragment, parsed with
        ``parse_config``: its errors name the fragment), or EndpointConfig
        objects."""
        source = _plan.fragment(entries, "attach")
        action = f"attaching to {self.config.file}"
        self._carry_out(_plan.plan_attach(self._ledger, source, action))

    def detach(self, names: Iterable[str]) -> None:
        """Unregister and close the named entries (a hot-unplug), last placed
        first; every other pair is left alone (the partner of a detached end
        is unpaired and keeps running). Every step is attempted, as in
        :meth:`teardown`, and then what failed is raised. An unknown name is
        refused before anything is done. A pair left out whose unavailable
        end is detached is looked at again, as a change removing that end
        does: what remains on its token is opened (all or nothing) when none
        of it is unavailable."""
        if isinstance(names, str):
            names = [names]
        wanted = list(dict.fromkeys(names))
        action = f"detaching from {self.config.file}"
        _plan.check_detach(self._ledger, wanted, action)
        left_out = _left_out(self._ledger, wanted)
        errors, interrupt = Transaction(self._ledger, self._builder, self.manager).detach(wanted)
        interrupt = deliver(interrupt)
        if interrupt is None:
            errors += _revisit(self, left_out, action)
        message = f"{action}: " + "; ".join(errors)
        if interrupt is not None:
            raise with_notes(interrupt, [message] if errors else [])
        if errors:
            raise TopologyError(message)

    def reconcile(self, new_config: Config) -> Changes:
        """Turn the running topology into ``new_config``: entries added, removed
        or changed (kind, options, token, irq, bypass or optional differ) are
        detached and attached; every other pair is left alone (not stopped, no
        interrupt lost). All or nothing: if a step fails, what this call did
        is undone, the entries it removed are built and opened again, and the
        error names the entry, the step and why.

        The work is O(changes), and so is the comparison, nearly: the new
        configuration's group digests are compared with the running one's
        (the entries are kept in groups, each with a digest: O(log N)
        comparisons of bytes per change), then the entries of the groups that differ. After an
        :meth:`attach`, :meth:`detach` or :meth:`change` the running entries
        are no file's, and every entry is compared (O(N), one comparison of
        fingerprints each), once."""
        if not isinstance(new_config, Config):
            raise TopologyError(
                f"reconcile: new_config must be an irqbypass.Config (from load_config or "
                f"parse_config), not {type(new_config).__name__} {show_value(new_config)}"
            )
        if self._ledger.by_name and not self._ledger.applied:
            raise TopologyError(f"{self.config.file} is built but not applied; apply() it first")
        action = f"reloading {self.config.file} as {new_config.file}"
        plan = _plan.plan_reload(self._ledger, new_config, action)
        self._carry_out(plan)
        return plan.changes

    def change(
        self,
        *,
        add: Config | Sequence[EndpointConfig] = (),
        remove: Iterable[str] = (),
        replace: Config | Sequence[EndpointConfig] = (),
    ) -> Changes:
        """Add, remove and replace entries in one step, all or nothing, as
        :meth:`reconcile` applies a new file, at a cost of O(changes) whatever
        the topology's size (nothing else is looked at): the API for a VMM that
        knows what it changes.

        ``add``: new entries (a :class:`~irqbypass.Config` of a TOML fragment,
        or EndpointConfig objects); ``remove``: names of running entries;
        ``replace``: new definitions of running entries, by name (one that
        differs in nothing is no change). Every other pair is left alone; a
        failure leaves the topology as it was. Everything is checked before
        anything is done: an unknown name, a name given twice, an added name
        the topology has, a token and side another entry holds."""
        if isinstance(remove, str):
            remove = [remove]
        removing = list(remove) if isinstance(remove, Iterable) else None
        if removing is None or not all(isinstance(n, str) for n in removing):
            raise TopologyError(f"change: remove must be entry names, not {show_value(remove)}")
        adding = _plan.fragment(add, "change: add")
        replacing = _plan.fragment(replace, "change: replace")
        action = f"changing {self.config.file}"
        plan = _plan.plan_change(self._ledger, adding, removing, replacing, action)
        self._carry_out(plan)
        return plan.changes

    def _carry_out(self, plan: _plan.Plan) -> None:
        """Do ``plan``, all or nothing, in O(changes): only the pairs on the
        tokens it touches are closed and opened."""
        with delivering_deferred_signals():  # a Ctrl-C that waited for the bookkeeping
            if not plan.touched:  # nothing to close or open: the entries only
                self._adopt(plan, None)
                return
            carry_out = Transaction(
                self._ledger, self._builder, self.manager, plan.action, repr(plan.source.file)
            ).carry_out
            carry_out(plan, home=self.config, adopt=self._adopt)

    @signal_safe
    def _adopt(self, plan: _plan.Plan, skipped: list[tuple[str, str]] | None) -> None:
        """Make the entries ``plan`` changed the running ones (the ledger's),
        the pairs left out ``skipped`` (None: as they are), and the file it
        is, if any, the running file (signal-safe: all of it)."""
        self._ledger.adopt(plan.updates, skipped, plan.config)
        if plan.config is not None:
            self.config = plan.config

    # -- looking -----------------------------------------------------------

    def status(self, *, settled: bool | None = None) -> list[PairStatus]:
        """One row per token: its producer, its consumer, whether they pair, and
        its counts (read once, when first asked). ``settled`` says every
        producer is done, so a merging consumer's shortfall is coalesced, not in
        flight; None asks :attr:`finished` (once for all rows); a reading taken
        while the topology runs passes False."""
        if settled is None:
            settled = self.finished
        return self._ledger.status(settled)

    def entry(self, name: str) -> Placed | None:
        """The endpoint of the entry ``name``, or None."""
        return self._ledger.by_name.get(name)

    @property
    def finished(self) -> bool:
        """Every producer is done firing."""
        producers = [p for p in self._ledger.by_name.values() if p.config.side == "producer"]
        return bool(producers) and all(p.finished for p in producers)

    def __enter__(self) -> Topology:
        self.apply()
        return self

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        """Tear down; a Ctrl-C (or another interrupt) that ended the block stays
        what is raised, a teardown failure noted on it, as in :meth:`teardown`."""
        try:
            self.teardown()
        except TopologyError as failed:
            if isinstance(error, Exception) or not isinstance(error, BaseException):
                raise
            with_notes(error, [str(failed)])


def _left_out(ledger: Ledger, names: Iterable[str]) -> set[str]:
    """The tokens of the pairs left out that the entries ``names`` are on."""
    return {ledger.entries[name].token for name in names} & {t for t, _ in ledger.skipped}


def _revisit(topology: Topology, tokens: set[str], action: str) -> list[str]:
    """After a detach: the pairs left out on ``tokens`` that still are (some
    entry remains on them: :meth:`Ledger.forget`), looked at again as a
    change removing the detached end does, all or nothing. What failed."""
    revisit = tokens & {token for token, _ in topology._ledger.skipped}
    if not revisit:
        return []
    try:
        topology._carry_out(_plan.plan_revisit(topology._ledger, revisit, topology.config, action))
    except TopologyError as exc:
        return [str(exc).removeprefix(f"{action}: ")]
    return []
