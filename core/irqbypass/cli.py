"""The ``irqbypass`` command: plugins, check, run, demo, status, reload.

Exit status: 0 done, 1 an irqbypass error (the message says what to do),
2 bad usage, 130 interrupted by Ctrl-C and 143 by SIGTERM (both after a clean
teardown). A running ``run`` reloads its file on SIGHUP and prints its status
on SIGUSR1 (both acted on in its main loop, never in the handler).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import logging
import os
import resource
import select
import signal
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata, resources
from typing import Any, TextIO

from . import control
from .config import MAX_DURATION, Config, load_config, parse_config
from .endpoints import Consumer
from .errors import ConfigError, IrqBypassError
from .hookspecs import hookimpl
from .metrics import REFRESH_SECONDS, Metrics, PairingEvents
from .notify import notify, reloading
from .options import show_exception
from .plugins import ENV_DISABLE, ENV_LOAD, PluginHost, PluginInfo, load_plugins
from .signals import guard_signals
from .topology import PairStatus, Topology

#: the bundled demo's bound when its file had none (a file's run has none: until a signal)
DEFAULT_DURATION = 10.0
#: after every producer finished, how long stragglers may still be delivered
SETTLE_SECONDS = 1.0
TICK_SECONDS = 0.1
#: how long a coalescing consumer's counts must stand still to count as settled
STILL_SECONDS = 0.3
STDIN = "-"

_log = logging.getLogger("irqbypass.cli")


def version() -> str:
    try:
        return metadata.version("irqbypass")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree on sys.path
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _set_up_logging(args.verbose)
    try:
        result: int = args.func(args)
        return result
    except IrqBypassError as exc:
        errors = [str(error) for error in getattr(exc, "errors", (exc,))]
        for error in errors:  # every problem of a file, in file order
            _error(error)
        _json_error(args, errors[0], 1, errors)
        return 1
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        _fresh_line(signum)
        _notes(exc)
        _error(f"stopped by {signal.Signals(signum).name}")
        _json_error(args, f"stopped by {signal.Signals(signum).name}", 128 + signum)
        return 128 + signum
    except BrokenPipeError:
        # the reader went away (`irqbypass plugins --json | head`): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except OSError as exc:
        if args.verbose:
            traceback.print_exc()
        _error(_os_error(exc))
        _json_error(args, _os_error(exc), 1)
        return 1


def _json_error(
    args: argparse.Namespace, error: str, status: int, errors: Sequence[str] = ()
) -> None:
    """Under ``--json``, an error is a JSON object on standard output too, so a
    pipe into a JSON reader gets one (the lines on stderr and the exit status
    stay as they are); ``errors`` lists every problem of a file, the first is
    ``error``."""
    if not getattr(args, "json", False):
        return
    doc = {
        "ok": False,
        "command": getattr(args, "command", None),
        "file": getattr(args, "file", None),
        "exit_status": status,
        "error": error,
        "errors": list(errors) or [error],
    }
    try:
        print(json.dumps(doc, indent=2))
        sys.stdout.flush()
    except OSError:  # the reader went away: the stderr line is what is left
        pass


def _os_error(exc: OSError) -> str:
    """An OSError that escaped every layer, as a message that says what to do."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (
            f"out of file descriptors ({errno.errorcode[exc.errno]}: {exc.strerror}; "
            f"`ulimit -n` is {soft}): each token needs an eventfd and each endpoint what its "
            "device needs; raise the limit (`ulimit -n 4096`) or split the topology"
        )
    what = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{what}; run with -v for the traceback"


# -- the command line ------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    # global options may come before or after the command (`irqbypass check F -v`)
    args.block = [*args.block, *args.block_after]
    args.plugin_modules = [*args.plugin_modules, *args.plugin_modules_after]
    args.strict = args.strict or args.strict_after
    args.verbose = args.verbose + args.verbose_after
    return args


def _global_options(parser: argparse.ArgumentParser, suffix: str, shown: bool) -> None:
    def help_(text: str) -> str:
        return text if shown else argparse.SUPPRESS

    parser.add_argument(
        "--block",
        action="append",
        default=[],
        dest=f"block{suffix}",
        metavar="NAME",
        help=help_("do not load this plugin or distribution (repeatable)"),
    )
    parser.add_argument(
        "-p",
        action="append",
        default=[],
        dest=f"plugin_modules{suffix}",
        metavar="MODULE",
        help=help_("also load this module as a plugin, without packaging it (repeatable)"),
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        dest=f"strict{suffix}",
        help=help_("a plugin that fails to load, or a warning of `check`, is an error"),
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest=f"verbose{suffix}",
        help=help_(
            "log every step (plugins, apply, teardown) and what logging consumers log; "
            "-vv: also every callback and DEBUG messages"
        ),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="irqbypass",
        description="The IRQ bypass manager for userspace VMMs.",
        epilog="Global options may also follow the command. Docs: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"irqbypass {version()}")
    _global_options(parser, "", shown=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _global_options(sub, "_after", shown=False)
        return sub

    plugins = command("plugins", "list the plugins, their kinds, hooks, and what was left out")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(func=_cmd_plugins)

    check_cmd = command("check", "validate a topology file and its pairs, opening no device")
    check_cmd.add_argument("file", help="the TOML file, or - for standard input")
    check_cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    check_cmd.set_defaults(func=_cmd_check)

    run = command("run", "apply a topology, run it, tear it down")
    run.add_argument("file", help="the TOML file, or - for standard input")
    _run_options(run)
    run.add_argument(
        "--control",
        metavar="PATH",
        help="answer `irqbypass status PATH` and `irqbypass reload PATH` on this UNIX socket "
        "(created 0600, for your user only)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics over HTTP on PORT (needs irqbypass[metrics])",
    )
    run.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDR",
        help="the address --metrics-port listens on (default: 127.0.0.1)",
    )
    run.add_argument(
        "--metrics-textfile",
        metavar="PATH",
        help="write Prometheus metrics to PATH every second, for node_exporter's textfile "
        "collector (needs irqbypass[metrics])",
    )
    run.set_defaults(func=_cmd_run)

    status = command("status", "show the pairs of a running `irqbypass run --control PATH`")
    status.add_argument("path", help="the run's control socket")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_cmd_status)

    reload = command("reload", "make a running `irqbypass run --control PATH` reload its file")
    reload.add_argument("path", help="the run's control socket")
    reload.add_argument("--json", action="store_true", help="print JSON")
    reload.set_defaults(func=_cmd_reload)

    demo = command("demo", "run the bundled demo topology")
    _run_options(demo)
    demo.set_defaults(func=_cmd_demo)
    return parser


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=_seconds,
        metavar="S",
        help="stop after S seconds at most (default: the file's [run] duration, or until "
        f"SIGINT/SIGTERM; at most {MAX_DURATION:.0f} s, 7 days)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(
            f"the duration must be more than 0 and at most {MAX_DURATION:.0f} seconds"
        )
    return value


def _set_up_logging(verbose: int) -> None:
    """-v: INFO, plus everything the user's logging consumers log (their level is
    the user's choice); -vv: DEBUG everywhere, every callback traced."""
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    if verbose:
        logging.getLogger("irqbypass.logging").setLevel(logging.DEBUG)


def _load(file: str) -> Config:
    if file == STDIN:
        return parse_config(sys.stdin.buffer.read(), file="<stdin>")
    return load_config(file)


# -- plugins ---------------------------------------------------------------


#: plugins the CLI itself registers (tracing, metrics): not listed as the user's
_CORE_PLUGINS = ("irqbypass.trace", "irqbypass.metrics")


class _Trace:
    """-vv: logs every callback the manager makes, through the lifecycle hooks."""

    log = logging.getLogger("irqbypass.trace")

    @hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        self.log.debug("%s %r: add %r", side, endpoint.name, partner.name)
        return (yield)

    @hookimpl(wrapper=True)
    def irqbypass_del(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        self.log.debug("%s %r: del %r", side, endpoint.name, partner.name)
        return (yield)

    @hookimpl(wrapper=True)
    def irqbypass_stop(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self.log.debug("%s %r: stop", side, endpoint.name)
        return (yield)

    @hookimpl(wrapper=True)
    def irqbypass_start(self, endpoint: Any, side: str) -> Generator[None, None, None]:
        self.log.debug("%s %r: start", side, endpoint.name)
        return (yield)


def _host(args: argparse.Namespace, config: Config | None = None) -> PluginHost:
    settings = config.plugins if config is not None else None
    strict = args.strict or (settings.strict if settings else False)
    # the user's environment wins over the file's [plugins] load (docs/configuration.md):
    # an allow list passed to load_plugins would win over the environment
    from_env = ENV_LOAD in os.environ or bool(os.environ.get(ENV_DISABLE))
    host = load_plugins(
        block=[*args.block, *(settings.block if settings else ())],
        allow=settings.load if settings and not from_env else None,
        strict=strict,
        modules=args.plugin_modules,
    )
    for failure in host.failures:
        _warn(_describe_failure(failure) + "; the other plugins are loaded")
        if args.verbose and failure.traceback:
            sys.stderr.write(failure.traceback)
    for problem in [*host.check_kinds(), *host.unmatched]:
        _warn(problem)
    if config is not None:  # each plugin's own [plugins.NAME] table
        try:
            for problem in host.configure(config.plugins.tables, file=config.file):
                _warn(problem)
        except ConfigError as exc:
            if exc.line is not None or not exc.key or exc.file != config.file:
                raise
            raise config.error(exc.key, exc.problem) from exc  # with the line of its key
    if args.verbose >= 2:
        host.register(_Trace(), name="irqbypass.trace")
    return host


def _describe_failure(info: PluginInfo) -> str:
    dist = " ".join(filter(None, [info.distribution, info.version])) or "no distribution"
    return f"plugin {info.name!r} ({dist}) failed to load: {info.error}"


def _kind_table(host: PluginHost) -> list[dict[str, Any]]:
    """Every kind with its plugin and whether it can work on this machine."""
    rows = []
    for side in ("producer", "consumer"):
        for name in host.kinds.names(side):
            try:
                kind = host.kinds.get(side, name)
            except IrqBypassError as exc:  # claimed twice
                rows.append({"side": side, "name": name, "plugin": None, "unavailable": str(exc)})
                continue
            rows.append(
                {
                    "side": side,
                    "name": name,
                    "plugin": kind.plugin,
                    "unavailable": kind.unavailable_reason(),
                }
            )
    return rows


def _cmd_plugins(args: argparse.Namespace) -> int:
    host = _host(args)
    infos = [i for i in host.info() if i.name not in _CORE_PLUGINS]
    kinds = _kind_table(host)
    if args.json:
        doc = {
            "irqbypass": version(),
            "python": sys.version.split()[0],
            "plugins": [i.as_dict() for i in infos],
            "kinds": kinds,
            "filtered": [f.as_dict() for f in host.filtered],
            "unmatched": host.unmatched,
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"irqbypass {version()} (Python {sys.version.split()[0]})")
    if not infos:
        why = "all of them were left out (below)" if host.filtered else "none is installed"
        print(f"no plugins loaded: {why}")
    for info in infos:
        version_ = f" {info.version}" if info.version else ""
        print(f"{info.name} ({info.distribution or 'no distribution'}{version_})")
        if info.module:
            print(f"  module: {info.module}")
        for side, names in info.kinds.items():
            print(f"  {side} kinds: {', '.join(names)}")
        print(f"  hooks: {', '.join(info.hooks) or '-'}")
        if info.error:
            print(f"  error: {info.error}")
            if args.verbose and info.traceback:
                print("  " + info.traceback.rstrip().replace("\n", "\n  "))
    if kinds:
        print("kinds here:")
        table = [("SIDE", "KIND", "PLUGIN", "AVAILABLE")]
        for k in kinds:
            state = "yes" if k["unavailable"] is None else f"no: {k['unavailable']}"
            table.append((k["side"], k["name"], k["plugin"] or "-", state))
        _print_table(table, sys.stdout)
    if host.filtered:
        print("not loaded:")
        for f in host.filtered:
            dist = " ".join(filter(None, [f.distribution, f.version])) or "no distribution"
            print(f"  {f.name} ({dist}): {f.reason}")
    return 0


def _header(host: PluginHost, out: TextIO) -> None:
    """One line, as pytest's ``plugins:`` line: what this run is made of."""
    loaded = [
        f"{i.name} {i.version}" if i.version else i.name
        for i in host.info()
        if i.error is None and i.name not in _CORE_PLUGINS
    ]
    line = f"irqbypass {version()}; plugins: {', '.join(loaded) or 'none'}"
    if _isatty(out):  # wrapped at a plugin name, not in the middle of one
        line = textwrap.fill(line, max(40, _width(out) - 1), subsequent_indent="  ")
    _say(line, out)


# -- check -----------------------------------------------------------------


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.file)
    host = _host(args, config)
    topology = Topology(config, host)
    topology.build(check_only=True)
    try:
        rows = topology.status()
        pairs = [_pair_dict(row) for row in rows]
    finally:
        topology.teardown()
    pairs += [_skipped_dict(config, token, reason) for token, reason in topology.skipped]
    order = {name: i for i, name in enumerate(config.token_names())}
    pairs.sort(key=lambda p: order[p["token"]])
    warnings = _pairing_problems(config, host)
    if args.json:
        doc = {
            "file": config.file,
            "ok": not (warnings and args.strict),
            "producers": len(config.producers),
            "consumers": len(config.consumers),
            "pairs": pairs,
            "warnings": warnings,
        }
        print(json.dumps(doc, indent=2))
    else:
        counts = ", ".join(
            [
                _count(len(config.producers), "producer"),
                _count(len(config.consumers), "consumer"),
                _count(len(pairs), "token"),
            ]
        )
        print(f"{config.file}: OK: {counts}")
        table = [("TOKEN", "PRODUCER", "CONSUMER", "STATE")]
        for p in pairs:
            table.append((p["token"], _end(p, "producer"), _end(p, "consumer"), p["state"]))
        _print_table(table, sys.stdout)
        for warning in warnings:
            _warn(warning)
    if warnings and args.strict:
        _error(f"{config.file}: {_count(len(warnings), 'warning')} (--strict)")
        return 1
    return 0


def _end(pair: dict[str, Any], side: str) -> str:
    name = pair[side]
    return "-" if name is None else f"{name} ({pair[f'{side}_kind']})"


def _pair_dict(row: PairStatus) -> dict[str, Any]:
    producer = row.producer.config if row.producer else None
    consumer = row.consumer.config if row.consumer else None
    if producer is None or consumer is None:
        state = f"{'producer' if consumer is None else 'consumer'} only: nothing pairs with it"
    elif producer.bypass and consumer.bypass:
        state = "pairs (bypass)"
    else:
        off = " and ".join(e.name for e in (producer, consumer) if not e.bypass)
        state = f"eventfd only (bypass = false on {off})"
    return {
        "token": row.token,
        "producer": producer.name if producer else None,
        "producer_kind": producer.kind if producer else None,
        "consumer": consumer.name if consumer else None,
        "consumer_kind": consumer.kind if consumer else None,
        "state": state,
    }


def _skipped_dict(config: Config, token: str, reason: str) -> dict[str, Any]:
    ends = {e.side: e for e in config.endpoints if e.token == token}
    producer, consumer = ends.get("producer"), ends.get("consumer")
    return {
        "token": token,
        "producer": producer.name if producer else None,
        "producer_kind": producer.kind if producer else None,
        "consumer": consumer.name if consumer else None,
        "consumer_kind": consumer.kind if consumer else None,
        "state": f"would be skipped: {reason}",
    }


def _pairing_problems(config: Config, host: PluginHost) -> list[str]:
    """Likely mistakes a valid file can still hold: a token with one end (with the
    near-identical token it probably meant), and a kind typo that ``optional``
    would silently skip."""
    problems = []
    ends: dict[str, dict[str, Any]] = {}
    for entry in config.endpoints:
        ends.setdefault(entry.token, {})[entry.side] = entry
    lonely = {token: sides for token, sides in ends.items() if len(sides) == 1}
    for token, sides in lonely.items():
        ((side, entry),) = sides.items()
        other = "consumer" if side == "producer" else "producer"
        candidates = [t for t, s in lonely.items() if other in s]
        problem = (
            f"{entry.key_path}: token {token!r} has only a {side} ({entry.name!r}): "
            f"no {other} pairs with it"
        )
        for near in difflib.get_close_matches(token, candidates, n=1, cutoff=0.6):
            problem += f"; did you mean token {near!r} of {other} {lonely[near][other].name!r}?"
        problems.append(problem)
    for entry in config.endpoints:
        if not entry.optional:
            continue
        known = host.kinds.names(entry.side)
        if entry.kind in known:
            continue
        close = difflib.get_close_matches(entry.kind, known, n=1)
        if close:
            problems.append(
                f"{entry.key_path}.kind: {entry.kind!r} is no loaded kind; did you mean "
                f"{close[0]!r}? (optional = true would skip its pair)"
            )
    for entry in config.endpoints:
        if entry.optional:
            continue  # its pair is skipped where it cannot work, and the table says so
        try:
            reason = host.kinds.get(entry.side, entry.kind).unavailable_reason(entry.options)
        except IrqBypassError:
            continue  # an unknown kind is an error of its own
        if reason is not None:
            problems.append(
                f"{entry.key_path}: {entry.side} {entry.name!r} (kind {entry.kind}) cannot "
                f"work here, so `run` will fail to open it: {reason} (optional = true skips "
                "its pair where it cannot work)"
            )
    return problems


# -- run and demo ----------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    return _run(args, _load(args.file))


def _cmd_demo(args: argparse.Namespace) -> int:
    text = resources.files("irqbypass").joinpath("demo.toml").read_bytes()
    args.control = args.metrics_port = args.metrics_textfile = None
    return _run(args, parse_config(text, file="examples/demo.toml"), DEFAULT_DURATION)


def _run(args: argparse.Namespace, config: Config, default: float | None = None) -> int:
    host = _host(args, config)
    warnings = _pairing_problems(config, host)  # what `check` warns of, before opening anything
    for warning in warnings:
        _warn(warning)
    if warnings and args.strict:
        raise IrqBypassError(
            f"{config.file}: {_count(len(warnings), 'warning')} (--strict); nothing was opened"
        )
    duration = args.duration or config.duration or default
    out = sys.stdout
    metrics = _metrics(args, host)
    try:
        topology = Topology(config, host)
    except BaseException:
        if metrics is not None:
            metrics.close()
        raise
    file = getattr(args, "file", None)
    live = _Live(topology, file if file not in (None, STDIN) else None, metrics)
    stopped_by: int | None = None
    if not args.json:
        _header(host, out)
    with _terminate_as_interrupt(), live.signals():
        try:
            if args.control:
                live.listen(args.control)
            applying = _StepProgress(sys.stderr, "applying")
            try:
                with applying:
                    topology.apply(progress=applying.applying)
            except KeyboardInterrupt as exc:  # apply undid what it had done: nothing ran
                stopped_by = getattr(exc, "signum", signal.SIGINT)
                if not applying.shown:  # a progress line is cleared, ^C echo and all
                    _fresh_line(stopped_by)
                _notes(exc)
            if stopped_by is None:
                _log_applied(topology)
                try:
                    if not args.json:
                        _print_pairs(topology, out)
                    live.ready()
                    _wait(topology, duration, sys.stderr, live)
                except KeyboardInterrupt as exc:
                    stopped_by = getattr(exc, "signum", signal.SIGINT)
                    # the wait's progress line ends its line itself, after the ^C echo
                    if not (_isatty(sys.stderr) and _waits(topology, live)):
                        _fresh_line(stopped_by)
            summary = [row.as_dict() for row in _snapshot(topology)]
            placed = topology.placed  # teardown forgets them, and their faults
            vetoed = topology.vetoed
        except BaseException:
            live.close()
            _report_teardown(topology)
            raise
        # a teardown error is reported after the summary, never instead of it
        notify("STOPPING=1")
        live.close()
        _log.info("tearing down %s", topology.config.file)
        teardown_error, teardown_signal = _teardown(topology)
        if stopped_by is None:
            stopped_by = teardown_signal
    faults = [
        fault + ("; its figures are shown as -" if call == "stats()" else "")
        for one in placed
        for call, fault in one.faults.items()
    ]
    if args.json:
        doc = {
            "file": topology.config.file,
            "interrupted": stopped_by is not None,
            "pairs": summary,
            "skipped": [{"token": t, "reason": r} for t, r in topology.skipped],
            "vetoed": [{"token": t, "reason": r} for t, r in vetoed],
            "warnings": [*warnings, *faults],
        }
        print(json.dumps(doc, indent=2))
    else:
        _print_summary(summary, out)
    for fault in faults:
        _warn(fault)
    if teardown_error is not None:
        _error(str(teardown_error))
    if stopped_by is not None:
        _error(f"stopped by {signal.Signals(stopped_by).name}; everything was torn down")
        return 128 + stopped_by
    return 0 if teardown_error is None else 1


def _teardown(
    topology: Topology, *, progress: bool = True
) -> tuple[IrqBypassError | None, int | None]:
    """Tear down; (the error if a step failed, the signal if one interrupted a
    step). The topology finishes its teardown either way, so a second Ctrl-C
    loses neither the summary nor the "torn down" message. ``progress``: show
    ``tearing down: N left`` on a terminal."""
    try:
        with _StepProgress(sys.stderr if progress else None, "tearing down") as shown:
            topology.teardown(progress=shown.tearing_down)
    except IrqBypassError as exc:
        return exc, None
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        _fresh_line(signum)
        _notes(exc)
        return None, signum
    return None, None


def _notes(exc: BaseException) -> None:
    """What an interrupt let through says it interrupted, as error lines (a note
    starts with "irqbypass: " for a traceback; the line has that prefix already)."""
    for note in getattr(exc, "__notes__", ()):
        _error(str(note).removeprefix("irqbypass: "))


def _fresh_line(signum: int) -> None:
    """After Ctrl-C on a terminal, which echoed ``^C`` where the cursor was:
    start the message on a line of its own."""
    if signum == signal.SIGINT and _isatty(sys.stderr):
        sys.stderr.write("\n")
        sys.stderr.flush()


def _report_teardown(topology: Topology) -> None:
    """Tear down while another error is on its way out: say what failed."""
    error, _ = _teardown(topology)
    if error is not None:
        _error(str(error))


def _log_applied(topology: Topology) -> None:
    for placed in topology.placed:
        state = "opened, registered" if placed.registered else "opened, not registered"
        _log.info("%s: %s", placed.label, state)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: a clean teardown, then exit 128 + 15."""

    signum = signal.SIGTERM


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM tears down like Ctrl-C instead of killing us
    with devices still attached (only the main thread can install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    guard_signals()  # both wait while the manager's and the topology's bookkeeping runs
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- a long run: SIGHUP, SIGUSR1 and the control socket -------------------


class _Live:
    """What a running ``run`` answers: SIGHUP (reload the file), SIGUSR1 (a
    status snapshot on stderr) and the ``--control`` socket. The handlers only
    note the signal; the main loop acts on it at its next tick (:meth:`idle`)."""

    def __init__(
        self, topology: Topology, file: str | None, metrics: Metrics | None = None
    ) -> None:
        self.topology = topology
        self.metrics = metrics
        self._metrics_at = 0.0
        #: the file a reload reads again (None: standard input or the demo)
        self.file = file
        self.server: control.ControlServer | None = None
        self.started = time.monotonic()
        self.reloads = 0
        self.failed_reloads = 0
        #: signals noted by the handlers, not yet acted on (at most one each)
        self.pending: set[int] = set()

    @contextmanager
    def signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(signum: int, frame: object) -> None:
            self.pending.add(signum)  # nothing else: the main loop acts on it

        previous = {signum: signal.signal(signum, note) for signum in _LIVE_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def listen(self, path: str) -> None:
        self.server = control.ControlServer(path, self.answer)
        _log.info("control socket: %s", path)

    def ready(self) -> None:
        self._refresh_metrics(force=True)
        notify("READY=1", f"STATUS={self._status_line()}")

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.metrics is not None:
            self._refresh_metrics(force=True)  # the last figures, before the teardown
            self.metrics.close()
            self.metrics = None

    def _refresh_metrics(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.metrics is None or (not force and now - self._metrics_at < REFRESH_SECONDS):
            return
        self._metrics_at = now
        pairs = [row.as_dict() for row in _snapshot(self.topology, settled=False)]
        self.metrics.update(pairs, self.reloads, self.failed_reloads)

    def idle(self, seconds: float) -> None:
        """Wait up to ``seconds`` for a client, then act on what arrived."""
        self._act()
        if self.server is None:
            time.sleep(seconds)
        else:
            ready, _, _ = select.select([self.server], [], [], seconds)
            if ready:
                self.server.serve()
        self._act()
        self._refresh_metrics()

    def _act(self) -> None:
        while self.pending:
            signum = min(self.pending)
            self.pending.discard(signum)
            if signum == signal.SIGHUP:
                self.reload()
            elif signum == signal.SIGUSR1:
                self.print_status(sys.stderr)

    def answer(self, request: str) -> dict[str, Any]:
        if request == "reload":
            return self.reload()
        return self.status()

    def status(self) -> dict[str, Any]:
        topology = self.topology
        return {
            "ok": True,
            "file": topology.config.file,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started, 3),
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
            "pairs": [row.as_dict() for row in _snapshot(topology, settled=False)],
            "skipped": [{"token": t, "reason": r} for t, r in topology.skipped],
        }

    def print_status(self, out: TextIO) -> None:
        _print_status(self.status(), out)
        out.flush()

    def _status_line(self) -> str:
        rows = self.topology.status()
        paired = sum(1 for row in rows if row.paired)
        return f"{_count(len(rows), 'token')}, {paired} paired; {_count(self.reloads, 'reload')}"

    def reload(self) -> dict[str, Any]:
        """Read the file again and reconcile; a broken file changes nothing."""
        if self.file is None:
            message = "cannot reload: the topology was not read from a file (standard input, demo)"
            _error(message)
            return {"ok": False, "error": message, "unchanged": True}
        reloading()
        before = {p.config.name: p.config for p in self.topology.placed}
        try:
            old = self.topology.config
            new = _load(self.file)
            changes = self.topology.reconcile(new)
            self.reloads += 1
        except IrqBypassError as exc:
            self.failed_reloads += 1
            unchanged = before == {p.config.name: p.config for p in self.topology.placed}
            state = "the running topology is unchanged" if unchanged else "see above"
            message = f"reload of {self.file} failed; {state}: {exc}"
            _error(message)
            return {"ok": False, "error": message, "unchanged": unchanged}
        finally:
            notify("READY=1", f"STATUS={self._status_line()}")
        if new.plugins != old.plugins:
            _warn(f"{self.file}: [plugins] changed; the plugins are loaded at start: restart")
        _say(f"irqbypass: reloaded {self.file}: {changes.describe()}", sys.stderr)
        self._refresh_metrics(force=True)
        return {
            "ok": True,
            "added": list(changes.added),
            "removed": list(changes.removed),
            "changed": {name: list(changes.why.get(name, ())) for name in changes.changed},
        }


_LIVE_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)


def _metrics(args: argparse.Namespace, host: PluginHost) -> Metrics | None:
    """The Prometheus exporter the options ask for, counting pairings through
    a plugin on ``host`` (so only a run with metrics takes the hooked path)."""
    port, textfile = getattr(args, "metrics_port", None), getattr(args, "metrics_textfile", None)
    if port is None and textfile is None:
        return None
    events = PairingEvents()
    metrics = Metrics(events)
    host.register(events, name="irqbypass.metrics")
    try:
        if port is not None:
            metrics.serve(port, args.metrics_address)
        if textfile is not None:
            metrics.write_to(textfile)
    except BaseException:
        metrics.close()
        raise
    return metrics


def _print_status(doc: dict[str, Any], out: TextIO) -> None:
    """A status document (the control socket's, or SIGUSR1's) as text."""
    pairs = doc.get("pairs", [])
    paired = sum(1 for p in pairs if p.get("paired"))
    _say(
        f"{doc.get('file')}: running {doc.get('uptime', 0):.1f} s (pid {doc.get('pid')}), "
        f"{_count(len(pairs), 'token')}, {paired} paired, "
        f"{_count(doc.get('reloads', 0), 'reload')} ({doc.get('failed_reloads', 0)} failed)",
        out,
    )
    if pairs:
        _print_summary(pairs, out, title="")
    for skipped in doc.get("skipped", []):
        _say(f"  {skipped['token']}: skipped: {skipped['reason']}", out)


def _cmd_status(args: argparse.Namespace) -> int:
    doc = control.request(args.path, "status")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_status(doc, sys.stdout)
    return 0 if doc.get("ok") else 1


def _cmd_reload(args: argparse.Namespace) -> int:
    doc = control.request(args.path, "reload")
    if args.json:
        print(json.dumps(doc, indent=2))
    elif doc.get("ok"):
        what = [
            *(f"added {n!r}" for n in doc.get("added", [])),
            *(f"removed {n!r}" for n in doc.get("removed", [])),
            *(f"changed {n!r} ({', '.join(why)})" for n, why in doc.get("changed", {}).items()),
        ]
        print(f"reloaded: {'; '.join(what) or 'nothing changed'}")
    else:
        _error(str(doc.get("error")))
    return 0 if doc.get("ok") else 1


# -- the wait and its progress line ---------------------------------------


class _StepProgress:
    """``applying 4120/10000`` / ``tearing down: 3100 left`` on a terminal,
    redrawn at most every TICK_SECONDS and cleared at the end (nothing at all
    when the stream is not a terminal)."""

    def __init__(self, stream: TextIO | None, what: str) -> None:
        self.stream = stream if stream is not None and _isatty(stream) else None
        self.what = what
        self.shown = False
        #: nothing is drawn in the first TICK_SECONDS: a small topology shows none
        self.last = time.monotonic()

    def __enter__(self) -> _StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.shown and self.stream is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def applying(self, done: int, total: int) -> None:
        self._show(f"{self.what} {done}/{total}", done == total)

    def tearing_down(self, left: int) -> None:
        self._show(f"{self.what}: {left} left", left == 0)

    def _show(self, line: str, last: bool) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if now - self.last < TICK_SECONDS and not (last and self.shown):
            return
        self.last, self.shown = now, True
        self.stream.write(f"\r{_fit(line, _width(self.stream))}\x1b[K")
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass(frozen=True)
class _Row:
    """One token's figures, all from one read of each end's ``stats()`` (the
    consumer's first: a counter read later is never smaller, so ``delivered``
    never exceeds ``fired``), so a row never contradicts itself."""

    status: PairStatus
    producer_stats: dict[str, int] = field(default_factory=dict)
    consumer_stats: dict[str, int] = field(default_factory=dict)
    #: what the token's eventfd still holds: signalled, not yet taken by anyone
    queued: int | None = None
    #: the consumer merges signals (an interrupt controller's edge or pending bit)
    coalesces: bool = False
    #: every producer finished and the row stopped changing
    settled: bool = False
    #: this row's producer still fires: its shortfall is in flight, not lost
    live: bool = False
    #: what each end gave up on (``Endpoint.problem``: a loop callback raised, ...)
    problems: tuple[str, ...] = ()

    @property
    def fired(self) -> int | None:
        return _int(self.producer_stats.get("fired"))

    @property
    def delivered(self) -> int | None:
        return _int(self.consumer_stats.get("delivered"))

    @property
    def shortfall(self) -> int | None:
        if self.fired is None or self.delivered is None:
            return None
        return max(0, self.fired - self.delivered)

    @property
    def coalesced(self) -> int | None:
        """Signals the consumer took but merged: its own ``coalesced`` count, or,
        for a consumer that merges, the settled shortfall the eventfd no longer
        holds (the kernel took each signal; the guest saw fewer edges)."""
        reported = _int(self.consumer_stats.get("coalesced"))
        if reported is not None:
            return reported
        if self.shortfall is None or not self.coalesces:
            return None
        return self.shortfall - (self.queued or 0) if self.settled else 0

    @property
    def lost(self) -> int | None:
        """What no one can account for: neither delivered, merged, nor queued.
        Unknown (None) while the producer still fires: the consumer's count is
        read before the producer's, so what fired in between is in flight."""
        if self.shortfall is None or self.live:
            return None
        return max(0, self.shortfall - (self.coalesced or 0) - (self.queued or 0))

    def as_dict(self) -> dict[str, Any]:
        row = self.status
        return {
            "token": row.token,
            "producer": None if row.producer is None else row.producer.config.name,
            "producer_kind": None if row.producer is None else row.producer.config.kind,
            "consumer": None if row.consumer is None else row.consumer.config.name,
            "consumer_kind": None if row.consumer is None else row.consumer.config.kind,
            "paired": row.paired,
            "fired": self.fired,
            "delivered": self.delivered,
            "coalesced": self.coalesced,
            "queued": self.queued,
            "lost": self.lost,
            "producer_stats": self.producer_stats,
            "consumer_stats": self.consumer_stats,
            "problems": list(self.problems),
        }


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _snapshot(topology: Topology, settled: bool = True) -> list[_Row]:
    rows = []
    # once, not per row: it asks every producer (per row it was O(N^2))
    settled = settled and topology.finished
    for status in topology.status():
        consumer = status.consumer.endpoint if status.consumer else None
        # counted over every open of the entry (a reload that changed it re-opens it)
        consumer_stats = status.consumer.stats() if status.consumer is not None else {}
        producer_stats = status.producer.stats() if status.producer is not None else {}
        token = topology.tokens.get(status.token)
        rows.append(
            _Row(
                status,
                producer_stats,
                consumer_stats,
                queued=_eventfd_count(token),
                coalesces=isinstance(consumer, Consumer) and _coalesces(consumer),
                settled=settled,
                live=status.producer is not None and not status.producer.finished,
                problems=_problems(status),
            )
        )
    return rows


def _coalesces(consumer: Consumer) -> bool:
    """The consumer's ``coalesces``; a broken one counts as not merging."""
    try:
        return bool(getattr(consumer, "coalesces", False))
    except Exception:
        return False


def _problems(status: PairStatus) -> tuple[str, ...]:
    """Each end's ``problem``, by name; a broken property is a problem itself."""
    found = []
    for placed in (status.producer, status.consumer):
        if placed is None:
            continue
        try:
            problem = placed.endpoint.problem
        except Exception as exc:
            problem = (
                f"its problem property raised {show_exception(exc)}; "
                f"this is a bug in plugin {placed.plugin or '?'}"
            )
        if isinstance(problem, str) and problem:
            found.append(f"{placed.config.side} {placed.config.name}: {problem}")
    return tuple(found)


def _eventfd_count(token: object) -> int | None:
    """The counter of the token's eventfd (fdinfo ``eventfd-count``, hex), read
    without taking it; None where the kernel does not show it."""
    try:
        fd = token.fileno()  # type: ignore[attr-defined]
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key == "eventfd-count":
                    return int(value.strip(), 16)
    except (AttributeError, OSError, ValueError):
        return None
    return None


def _wait(
    topology: Topology, duration: float | None, progress: TextIO, service: _Live | None = None
) -> None:
    """Run until ``duration`` passes (None: until a signal), or every producer
    finished and every interrupt is accounted for (or had SETTLE_SECONDS to be).
    A topology with no producer has nothing to wait for, unless it has a
    control socket (a reload may bring producers). Each tick, ``service`` acts on
    the signals and the control requests that arrived."""
    if not _waits(topology, service):
        _log.info("no producer: nothing to wait for")
        return
    live = _isatty(progress)
    producers = [p for p in topology.placed if p.config.side == "producer"]
    start = time.monotonic()
    finished_at: float | None = None
    previous: list[tuple[int | None, int | None, int | None]] | None = None
    still_since = 0.0
    reloads = 0
    try:
        while True:
            now = time.monotonic()
            if service is not None and service.reloads != reloads:  # other producers now
                reloads = service.reloads
                producers = [p for p in topology.placed if p.config.side == "producer"]
            finished = topology.finished
            # the rows cost O(pairs): read only for the progress line or once finished
            rows = _snapshot(topology, settled=False) if live or finished else []
            if live:
                done = sum(1 for p in producers if p.finished)
                line = _progress_line(rows, now - start, done, len(producers))
                progress.write(f"\r{_fit(line, _width(progress))}\x1b[K")
                progress.flush()
            if duration is not None and now - start >= duration:
                break
            if finished:
                finished_at = finished_at if finished_at is not None else now
                figures = [(r.fired, r.delivered, r.queued) for r in rows]
                if figures != previous:
                    previous, still_since = figures, now
                # a guest's vCPU may lag behind the kernel's injections: settled is
                # nothing moving for STILL_SECONDS, well under SETTLE_SECONDS
                still = now - still_since >= STILL_SECONDS
                accounted = all(
                    r.shortfall in (None, 0) or (r.coalesces and still and not r.queued)
                    for r in rows
                )
                if accounted or now - finished_at >= SETTLE_SECONDS:
                    break
            else:
                finished_at = None  # a reload brought work again
            # a tick's reading may take at most a fifth of the time (10,000 pairs)
            pause = max(TICK_SECONDS, 4 * (time.monotonic() - now))
            if service is not None:
                service.idle(pause)
            else:
                time.sleep(pause)
    finally:
        if live:
            progress.write("\n")
            progress.flush()


def _waits(topology: Topology, service: _Live | None) -> bool:
    """Whether :func:`_wait` waits (and, on a terminal, draws its progress line):
    some producer fires, or a control socket may bring some."""
    return any(p.config.side == "producer" for p in topology.placed) or (
        service is not None and service.server is not None
    )


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


def _fit(line: str, width: int) -> str:
    """Cut to one line of the terminal: a full last column would wrap it."""
    room = max(10, width - 1)
    return line if len(line) <= room else line[: room - 3] + "..."


def _progress_line(rows: list[_Row], elapsed: float, finished: int, producers: int) -> str:
    """Totals over every pair (however many), then the first pairs' own figures."""
    fired = sum(r.fired or 0 for r in rows)
    delivered = sum(r.delivered or 0 for r in rows)
    lost = sum(r.lost or 0 for r in rows)
    parts = [f"{r.status.token} {_num(r.delivered)}/{_num(r.fired)}" for r in rows[:8]]
    return (
        f"[{elapsed:5.1f}s] fired {fired} delivered {delivered} lost {lost}, "
        f"{finished}/{producers} pairs finished; delivered/fired: " + " | ".join(parts)
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _print_pairs(topology: Topology, out: TextIO) -> None:
    _say(f"{topology.config.file}: applied", out)
    table = [("TOKEN", "PRODUCER", "CONSUMER", "STATE")]
    vetoed = dict(topology.vetoed)
    for row in topology.status():
        state = "paired (bypass)" if row.paired else "unpaired (eventfd only)"
        if row.token in vetoed:
            state = f"unpaired (eventfd only): vetoed: {vetoed[row.token]}"
        table.append((row.token, _ends(row.producer), _ends(row.consumer), state))
    for token, reason in topology.skipped:
        table.append((token, "-", "-", f"skipped: {reason}"))
    _print_table(table, out)


def _ends(placed: Any) -> str:
    return "-" if placed is None else f"{placed.config.name} ({placed.config.kind})"


_SUMMARY_COLUMNS = (
    *("TOKEN", "PRODUCER", "CONSUMER", "FIRED", "DELIVERED"),
    *("COALESCED", "QUEUED", "LOST", "DETAILS"),
)


def _print_summary(summary: list[dict[str, Any]], out: TextIO, title: str = "summary:") -> None:
    if not summary:
        _say("summary: nothing ran (no pair was applied)", out)
        return
    if title:
        _say(title, out)
    table = [_SUMMARY_COLUMNS]
    for row in summary:
        details = {
            k: v
            for k, v in {**row["producer_stats"], **row["consumer_stats"]}.items()
            if k not in ("fired", "delivered", "coalesced")
        }
        table.append(
            (
                row["token"],
                row["producer"] or "-",
                row["consumer"] or "-",
                _num(row["fired"]),
                _num(row["delivered"]),
                _num(row["coalesced"]),
                _num(row["queued"]),
                _num(row["lost"]),
                " ".join(f"{k}={v}" for k, v in details.items()),
            )
        )
    _print_table(table, out)
    problems = [p for row in summary for p in row["problems"]]
    if problems:
        _say("problems:", out)
        for problem in problems:
            _say(f"  {problem}", out)


def _print_table(rows: Sequence[Sequence[str]], out: TextIO, width: int | None = None) -> None:
    """Columns padded to their widest cell. On a terminal (or given ``width``),
    a last column too long for it (a skip reason of 250 characters) wraps at
    word boundaries under itself, instead of the terminal breaking it anywhere;
    piped output keeps one line per row, for scripts and diffs."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if width is None and _isatty(out):
        width = _width(out)
    indent = 2 + sum(w + 2 for w in widths[:-1])
    room = (width - 1 - indent) if width is not None else 0
    for r in rows:
        head = "  " + "".join(c.ljust(w + 2) for c, w in zip(r[:-1], widths, strict=False))
        last = r[-1]
        if width is None or len(last) <= room:
            _say((head + last).rstrip(), out)
        elif room >= 20:  # wrapped under its column
            lines = textwrap.wrap(last, room, break_on_hyphens=False) or [last]
            _say("\n".join([head + lines[0], *(" " * indent + ln for ln in lines[1:])]), out)
        else:  # no room left at the right: on lines of its own, indented
            lines = textwrap.wrap(last, max(20, width - 7), break_on_hyphens=False) or [last]
            _say("\n".join([head.rstrip(), *("      " + ln for ln in lines)]), out)


def _say(text: str, out: TextIO) -> None:
    """Print one line in one write: print() writes the text and its newline apart,
    and unbuffered (PYTHONUNBUFFERED) a log line of the loop thread could land
    between them, on the same stream or, with 2>&1, the other."""
    out.write(text + "\n")


def _warn(message: str) -> None:
    _say(f"irqbypass: warning: {message}", sys.stderr)


def _error(message: str) -> None:
    _say(f"irqbypass: error: {message}", sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
