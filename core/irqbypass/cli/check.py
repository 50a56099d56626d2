"""``irqbypass check``: validate a file and its pairs, opening no device; the
warnings ``run`` prints too."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from typing import Any, NoReturn

from .._config import Config
from .._errors import ConfigError, IrqBypassError
from .._plugins import PluginHost
from .._status import PairStatus
from .._topology import Topology
from .files import load_file
from .hosting import plugin_host, table_errors
from .output import counted, print_error, print_table, print_warning, reader_gone, say


def cmd_check(args: argparse.Namespace) -> int:
    config = load_file(args.file)
    host = plugin_host(args, config, collect=True)
    if getattr(args, "table_errors", None):
        raise_every_error(config, host, table_errors(args))
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
    warnings = pairing_problems(config, host)
    failing = bool(warnings and args.strict)
    try:
        _print_result(args, config, pairs, warnings)
    except BrokenPipeError:
        if not failing:
            raise  # the reader went away: not an error (main)
        reader_gone(sys.stdout)  # the warnings and the exit status still say it failed
    if not args.json:
        for warning in warnings:
            print_warning(warning)
    if failing:
        print_error(f"{config.file}: {counted(len(warnings), 'warning')} (--strict)")
        return 1
    return 0


def _print_result(
    args: argparse.Namespace, config: Config, pairs: list[dict[str, Any]], warnings: list[str]
) -> None:
    """What check prints on standard output: the JSON document, or the table."""
    if args.json:
        doc = {
            "file": config.file,
            "ok": not (warnings and args.strict),
            "producers": len(config.producers),
            "consumers": len(config.consumers),
            "pairs": pairs,
            "warnings": warnings,
        }
        say(json.dumps(doc, indent=2), sys.stdout)
    else:
        counts = ", ".join(
            [
                counted(len(config.producers), "producer"),
                counted(len(config.consumers), "consumer"),
                counted(len(pairs), "token"),
            ]
        )
        say(f"{config.file}: OK: {counts}", sys.stdout)
        listed: list[tuple[tuple[str, ...], bool]] = [
            (
                (p["token"], _end(p, "producer"), _end(p, "consumer"), p["state"]),
                # not as a pair would run: one end only, or skipped where it cannot work
                p["producer"] is None or p["consumer"] is None or p["state"].startswith("would"),
            )
            for p in pairs
        ]
        header = ("TOKEN", "PRODUCER", "CONSUMER", "STATE")
        print_table(header, listed, sys.stdout, args.every)


def raise_every_error(config: Config, host: PluginHost, found: list[IrqBypassError]) -> NoReturn:
    """Raise ``found`` (a plugin table's errors) with every error of the
    endpoints' own options, found by a build that opens nothing, in file order:
    a file is reported whole in one go, whatever else is wrong in it."""
    topology = Topology(config, host)
    try:
        topology.build(check_only=True)
    except IrqBypassError as exc:
        found = [*found, *getattr(exc, "errors", (exc,))]
    else:
        topology.teardown()
    found.sort(key=lambda e: (getattr(e, "line", None) is None, getattr(e, "line", None) or 0))
    raise ConfigError.combine(found)


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


def pairing_problems(config: Config, host: PluginHost) -> list[str]:
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
