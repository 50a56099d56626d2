"""The ``irqbypass`` command: plugins, check, run, demo.

Exit status: 0 done, 1 an irqbypass error (the message says what to do),
2 bad usage, 130 interrupted by Ctrl-C and 143 by SIGTERM (both after a clean
teardown).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from .config import MAX_DURATION, Config, load_config, parse_config
from .errors import IrqBypassError
from .plugins import PluginHost, PluginInfo, load_plugins
from .topology import PairStatus, Topology

DEFAULT_DURATION = 10.0
#: after every producer finished, how long stragglers may still be delivered
SETTLE_SECONDS = 1.0
TICK_SECONDS = 0.1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.func(args)
        return result
    except IrqBypassError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        _error(f"stopped by {signal.Signals(signum).name}")
        return 128 + signum
    except BrokenPipeError:
        # the reader went away (`irqbypass plugins --json | head`): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="irqbypass", description="The IRQ bypass manager for userspace VMMs."
    )
    parser.add_argument(
        "--block",
        action="append",
        default=[],
        metavar="NAME",
        help="do not load this plugin or distribution (repeatable)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="a plugin that fails to load is fatal"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list the plugins, their kinds and hooks")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(func=_cmd_plugins)

    check_cmd = commands.add_parser("check", help="validate a topology file, opening nothing")
    check_cmd.add_argument("file", type=Path)
    check_cmd.set_defaults(func=_cmd_check)

    run = commands.add_parser("run", help="apply a topology, run it, tear it down")
    run.add_argument("file", type=Path)
    _run_options(run)
    run.set_defaults(func=_cmd_run)

    demo = commands.add_parser("demo", help="run the bundled demo topology")
    _run_options(demo)
    demo.set_defaults(func=_cmd_demo)
    return parser


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration", type=_seconds, metavar="S", help="stop after S seconds at most"
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


# -- plugins ---------------------------------------------------------------


def _host(args: argparse.Namespace, config: Config | None = None) -> PluginHost:
    settings = config.plugins if config is not None else None
    strict = args.strict or (settings.strict if settings else False)
    host = load_plugins(
        block=[*args.block, *(settings.block if settings else ())],
        allow=settings.load if settings else None,
        strict=strict,
    )
    for failure in host.failures:
        _warn(_describe_failure(failure) + "; the other plugins are loaded")
    for problem in host.check_kinds():
        _warn(problem)
    return host


def _describe_failure(info: PluginInfo) -> str:
    dist = " ".join(filter(None, [info.distribution, info.version])) or "unknown distribution"
    return f"plugin {info.name!r} ({dist}) failed to load: {info.error}"


def _cmd_plugins(args: argparse.Namespace) -> int:
    infos = _host(args).info()
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    if not infos:
        print("no plugins installed (see `irqbypass plugins --json` and IRQBYPASS_LOAD_PLUGINS)")
    for info in infos:
        version = f" {info.version}" if info.version else ""
        print(f"{info.name} ({info.distribution or 'in-process'}{version})")
        for side, names in info.kinds.items():
            print(f"  {side} kinds: {', '.join(names)}")
        print(f"  hooks: {', '.join(info.hooks) or '-'}")
        if info.error:
            print(f"  error: {info.error}")
    return 0


# -- check -----------------------------------------------------------------


def _cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    host = _host(args, config)
    topology = Topology(config, host)
    topology.build()
    placed = list(topology.placed)
    topology.teardown()
    print(
        f"{config.file}: OK: {len(config.producers)} producers, {len(config.consumers)} consumers"
    )
    for entry in (p.config for p in placed):
        bypass = "" if entry.bypass else " (bypass off)"
        print(f"  {entry.side} {entry.name} kind={entry.kind} token={entry.token}{bypass}")
    for token, reason in topology.skipped:
        print(f"  token {token}: would be skipped: {reason}")
    return 0


# -- run and demo ----------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    return _run(args, load_config(args.file))


def _cmd_demo(args: argparse.Namespace) -> int:
    text = resources.files("irqbypass").joinpath("demo.toml").read_bytes()
    return _run(args, parse_config(text, file="examples/demo.toml"))


def _run(args: argparse.Namespace, config: Config) -> int:
    host = _host(args, config)
    duration = args.duration or config.duration or DEFAULT_DURATION
    out = sys.stdout
    topology = Topology(config, host)
    stopped_by: int | None = None
    with _terminate_as_interrupt():
        try:
            topology.apply()
            try:
                if not args.json:
                    _print_pairs(topology, out)
                _wait(topology, duration, sys.stderr)
            except KeyboardInterrupt as exc:
                stopped_by = getattr(exc, "signum", signal.SIGINT)
            summary = [_row_dict(row) for row in topology.status()]
        except BaseException:
            _report_teardown(topology)
            raise
        # a teardown error is reported after the summary, never instead of it
        teardown_error = _teardown(topology)
    if args.json:
        doc = {
            "file": config.file,
            "interrupted": stopped_by is not None,
            "pairs": summary,
            "skipped": [{"token": t, "reason": r} for t, r in topology.skipped],
        }
        print(json.dumps(doc, indent=2))
    else:
        _print_summary(summary, out)
    if teardown_error is not None:
        _error(str(teardown_error))
    if stopped_by is not None:
        _error(f"stopped by {signal.Signals(stopped_by).name}; everything was torn down")
        return 128 + stopped_by
    return 0 if teardown_error is None else 1


def _teardown(topology: Topology) -> IrqBypassError | None:
    """Tear down; the error, if a step failed (every step is still attempted)."""
    try:
        topology.teardown()
    except IrqBypassError as exc:
        return exc
    return None


def _report_teardown(topology: Topology) -> None:
    """Tear down while another error is on its way out: say what failed."""
    error = _teardown(topology)
    if error is not None:
        _error(str(error))


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
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait(topology: Topology, duration: float, progress: TextIO) -> None:
    """Run until ``duration`` passes, or every producer finished and its
    interrupts arrived (or had SETTLE_SECONDS to)."""
    live = progress.isatty()
    start = time.monotonic()
    finished_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            rows = topology.status()
            if live:
                progress.write(f"\r{_progress_line(rows, now - start)}\x1b[K")
                progress.flush()
            if now - start >= duration:
                break
            if topology.finished:
                finished_at = finished_at if finished_at is not None else now
                caught_up = all(r.lost in (None, 0) for r in rows)
                if caught_up or now - finished_at >= SETTLE_SECONDS:
                    break
            time.sleep(TICK_SECONDS)
    finally:
        if live:
            progress.write("\n")


def _progress_line(rows: list[PairStatus], elapsed: float) -> str:
    parts = [f"{r.token}: {_num(r.fired)} fired {_num(r.delivered)} delivered" for r in rows]
    return f"[{elapsed:5.1f}s] " + " | ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _print_pairs(topology: Topology, out: TextIO) -> None:
    print(f"{topology.config.file}: applied", file=out)
    table = [("TOKEN", "PRODUCER", "CONSUMER", "STATE")]
    for row in topology.status():
        state = "paired (bypass)" if row.paired else "unpaired (eventfd only)"
        table.append((row.token, _ends(row.producer), _ends(row.consumer), state))
    for token, reason in topology.skipped:
        table.append((token, "-", "-", f"skipped: {reason}"))
    _print_table(table, out)


def _ends(placed: Any) -> str:
    return "-" if placed is None else f"{placed.config.name} ({placed.config.kind})"


def _row_dict(row: PairStatus) -> dict[str, Any]:
    return {
        "token": row.token,
        "producer": None if row.producer is None else row.producer.config.name,
        "producer_kind": None if row.producer is None else row.producer.config.kind,
        "consumer": None if row.consumer is None else row.consumer.config.name,
        "consumer_kind": None if row.consumer is None else row.consumer.config.kind,
        "paired": row.paired,
        "fired": row.fired,
        "delivered": row.delivered,
        "lost": row.lost,
        "producer_stats": {} if row.producer is None else dict(row.producer.endpoint.stats()),
        "consumer_stats": {} if row.consumer is None else dict(row.consumer.endpoint.stats()),
    }


def _print_summary(summary: list[dict[str, Any]], out: TextIO) -> None:
    print("summary:", file=out)
    table = [("TOKEN", "PRODUCER", "CONSUMER", "FIRED", "DELIVERED", "LOST", "DETAILS")]
    for row in summary:
        details = {
            k: v
            for k, v in {**row["producer_stats"], **row["consumer_stats"]}.items()
            if k not in ("fired", "delivered")
        }
        table.append(
            (
                row["token"],
                row["producer"] or "-",
                row["consumer"] or "-",
                _num(row["fired"]),
                _num(row["delivered"]),
                _num(row["lost"]),
                " ".join(f"{k}={v}" for k, v in details.items()),
            )
        )
    _print_table(table, out)


def _print_table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(
            "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out
        )


def _warn(message: str) -> None:
    print(f"irqbypass: warning: {message}", file=sys.stderr)


def _error(message: str) -> None:
    print(f"irqbypass: error: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
