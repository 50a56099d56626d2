"""The ``irqbypass`` command: plugins, check, run, demo, status, reload.

Exit status: 0 done, 1 an irqbypass error (the message says what to do),
2 bad usage, 130 interrupted by Ctrl-C and 143 by SIGTERM (both after a clean
teardown). A running ``run`` reloads its file on SIGHUP and prints its status
on SIGUSR1 (both acted on in its main loop, never in the handler).

The commands live in the modules of this package, one concept each
(``check``, ``run``, ``live``, ``summary``, ``hosting``, ``output``, ``files``);
:func:`main` is the entry point (``irqbypass.cli:main``). A command's module is
imported once the arguments name it (:data:`_COMMANDS`), so ``--version`` and
``--help`` import no plugin, no asyncio and no TOML reader.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, NamedTuple, NoReturn

from .. import __version__
from .._errors import IrqBypassError
from .output import (
    TABLE_ROWS,
    LogLines,
    fresh_line,
    on_screen,
    os_error,
    print_error,
    print_notes,
    reader_gone,
    say,
    stop_signal,
)

#: the project's documentation (the core's Project-URL "Documentation"; a test holds them equal)
DOCS_URL = "https://irqbypass.readthedocs.io/"

#: the longest ``--duration`` (7 days; config.MAX_DURATION, which a test holds equal)
MAX_DURATION = 7 * 24 * 3600.0

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point: the arguments, logging as ``-v`` asks, the command.
    Every error of ours is a message: a Ctrl-C at any moment, even while a
    command's modules are still being imported (the first half second), ends
    in one line and exit 130, never a traceback."""
    try:
        args = _parse(argv)
        # -v: INFO, plus everything the user's logging consumers log (their level
        # is the user's choice); -vv: DEBUG everywhere, every callback traced
        handler = LogLines()  # through the one place every line goes (a progress line is cleared)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
        logging.basicConfig(level=level, handlers=[handler], force=True)
        if args.verbose:
            logging.getLogger("irqbypass.logging").setLevel(logging.DEBUG)
        try:
            command = _COMMANDS[args.command]
            module = importlib.import_module(f".{command.module}", __name__)
            result: int = getattr(module, command.function)(args)
            return result
        except IrqBypassError as exc:
            errors = [str(error) for error in getattr(exc, "errors", (exc,))]
            for error in errors:  # every problem of a file, in file order
                print_error(error)
            _json_error(args, errors[0], 1, errors)
            return 1
        except KeyboardInterrupt as exc:
            signum = stop_signal(exc)
            fresh_line(signum)
            print_notes(exc)
            print_error(f"stopped by {signal.Signals(signum).name}")
            _json_error(args, f"stopped by {signal.Signals(signum).name}", 128 + signum)
            return 128 + signum
        except BrokenPipeError:
            # the reader went away (`irqbypass plugins --json | head`): not an error
            reader_gone(sys.stdout)
            return 0
        except OSError as exc:
            if args.verbose:
                traceback.print_exc()
            print_error(os_error(exc))
            _json_error(args, os_error(exc), 1)
            return 1
    except KeyboardInterrupt as exc:  # before the command's own handling began, or in it
        signum = stop_signal(exc)
        fresh_line(signum)
        print_error(f"stopped by {signal.Signals(signum).name}")
        return 128 + signum


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
    with suppress(OSError):  # the reader went away: the stderr line is what is left
        say(json.dumps(doc, indent=2), sys.stdout)


class _Parser(argparse.ArgumentParser):
    """argparse's parser; its error (a missing argument, say) comes after the
    wrong values noted before it (``noted``, see :class:`_Checked`), each on
    its own line, then exit status 2."""

    noted: list[str]

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        for problem in [*self.noted, message]:
            sys.stderr.write(on_screen(f"{self.prog}: error: {problem}", sys.stderr) + "\n")
        raise SystemExit(2)


class _Checked(argparse.Action):
    """An option whose value its class's ``check`` turns into the value (each
    checked option is a subclass, named as its ``"action"``); a wrong one is
    noted in the parser's ``noted`` and left None, so the parse goes on to the
    next."""

    check: Callable[[str], Any]

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        (option,) = self.option_strings
        try:
            value = self.check(str(values))
        except argparse.ArgumentTypeError as exc:
            assert isinstance(parser, _Parser)
            parser.noted.append(f"argument {option}: {exc}")
            value = None
        setattr(namespace, self.dest, value)


class _Seconds(_Checked):
    """``--duration S``: more than 0, at most MAX_DURATION."""

    @staticmethod
    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not 0 < value <= MAX_DURATION:
            raise argparse.ArgumentTypeError(
                f"the duration must be more than 0 and at most {MAX_DURATION:.0f} seconds"
            )
        return value


class _ControlPath(_Checked):
    """``--control PATH``: a name for the socket."""

    @staticmethod
    def check(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError("the path is empty; name the socket to create")
        if "\0" in text:
            raise argparse.ArgumentTypeError("the path holds a NUL byte")
        return text


class _PortNumber(_Checked):
    """``--metrics-port PORT``: 0 to 65535 (0: any free port)."""

    @staticmethod
    def check(text: str) -> int:
        try:
            port = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
        if not 0 <= port <= 65535:
            raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to 65535)")
        return port


#: an option (or a positional argument): its flags, then argparse's settings
_Option = tuple[tuple[str, ...], dict[str, Any]]

#: the global options ("dest" is the main parser's; each command's hidden copy
#: adds "_after", merged by _parse)
_GLOBAL_OPTIONS: tuple[_Option, ...] = (
    (("--block",), {
        "action": "append", "default": [], "dest": "block", "metavar": "NAME",
        "help": "do not load this plugin or distribution (repeatable)",
    }),
    (("-p",), {
        "action": "append", "default": [], "dest": "plugin_modules", "metavar": "MODULE",
        "help": "also load this module as a plugin, without packaging it (repeatable)",
    }),
    (("--strict",), {
        "action": "store_true", "dest": "strict",
        "help": "a plugin that fails to load, or a warning of `check`, is an error",
    }),
    (("-v", "--verbose"), {
        "action": "count", "default": 0, "dest": "verbose",
        "help": "log every step (plugins, apply, teardown) and what logging consumers log; "
        "-vv: also every callback and DEBUG messages",
    }),
)  # fmt: skip
_HIDDEN_GLOBAL_OPTIONS: tuple[_Option, ...] = tuple(
    (flags, {**settings, "dest": settings["dest"] + "_after", "help": argparse.SUPPRESS})
    for flags, settings in _GLOBAL_OPTIONS
)

_FILE: _Option = (("file",), {"help": "the TOML file, or - for standard input"})
_SOCKET: _Option = (("path",), {"help": "the run's control socket"})
_JSON: _Option = (("--json",), {"action": "store_true", "help": "print JSON"})
#: -q and --all, which exclude each other (checked in :func:`_parse`, not by an
#: argparse group, which stops at the clash before the other values)
_LISTING: tuple[_Option, ...] = (
    (("-q", "--quiet"), {
        "action": "store_true",
        "help": "no header; each table as its totals and only the pairs with a problem",
    }),
    (("--all",), {
        "action": "store_true",
        "help": f"list every pair, however many (by default a table of more than {TABLE_ROWS} "
        "pairs is its totals and the pairs with a problem; -v lists every pair too)",
    }),
)  # fmt: skip
#: how long a run runs, and how it lists (run and demo)
_RUN: tuple[_Option, ...] = (
    (("--duration",), {
        "action": _Seconds, "metavar": "S",
        "help": "stop after S seconds at most (default: the file's [run] duration, or until "
        f"SIGINT/SIGTERM; at most {MAX_DURATION:.0f} s, 7 days)",
    }),
    (("--json",), {"action": "store_true", "help": "print the summary as JSON"}),
    *_LISTING,
)  # fmt: skip
#: what a run serves while it runs: its control socket and its metrics
_SERVING: tuple[_Option, ...] = (
    (("--control",), {
        "action": _ControlPath, "metavar": "PATH",
        "help": "answer `irqbypass status PATH` and `irqbypass reload PATH` on this UNIX socket "
        "(created 0600, for your user only)",
    }),
    (("--metrics-port",), {
        "action": _PortNumber, "metavar": "PORT",
        "help": "serve Prometheus metrics over HTTP on PORT (needs irqbypass[metrics])",
    }),
    (("--metrics-address",), {
        "default": "127.0.0.1", "metavar": "ADDR",
        "help": "the address --metrics-port listens on (default: 127.0.0.1)",
    }),
    (("--metrics-textfile",), {
        "metavar": "PATH",
        "help": "write Prometheus metrics to PATH every second, for node_exporter's textfile "
        "collector (needs irqbypass[metrics])",
    }),
)  # fmt: skip


class _Command(NamedTuple):
    """A command: its help line, where its function is (``module``, imported
    only when the command runs, so ``--version`` and ``--help`` import no
    plugin) and its arguments, in the order ``--help`` lists them."""

    help: str
    module: str
    function: str
    arguments: tuple[_Option, ...]


_COMMANDS: dict[str, _Command] = {
    "plugins": _Command(
        "list the plugins, their kinds, hooks, and what was left out",
        "hosting", "cmd_plugins", (_JSON,),
    ),
    "check": _Command(
        "validate a topology file and its pairs, opening no device",
        "check", "cmd_check",
        (_FILE, (("--json",), {"action": "store_true", "help": "print the result as JSON"}),
         *_LISTING),
    ),
    "run": _Command(
        "apply a topology, run it, tear it down", "run", "cmd_run", (_FILE, *_RUN, *_SERVING)
    ),
    "status": _Command(
        "show the pairs of a running `irqbypass run --control PATH`",
        "live", "cmd_status", (_SOCKET, _JSON, *_LISTING),
    ),
    "reload": _Command(
        "make a running `irqbypass run --control PATH` reload its file",
        "live", "cmd_reload", (_SOCKET, _JSON),
    ),
    "demo": _Command("run the bundled demo topology", "run", "cmd_demo", _RUN),
    "examples": _Command(
        "list the bundled example topologies and systemd unit", "bundled", "cmd_examples",
        ((("--write",), {
            "metavar": "DIR", "help": "write them into DIR (made if missing; never overwrites)",
        }),),
    ),
    "new-plugin": _Command(
        "write a plugin to start from: irqbypass-NAME, module irqbypass_NAME",
        "template", "cmd_new_plugin",
        ((("name",), {"help": "the plugin's name: lower-case words joined by '-'"}),
         (("--directory",), {
             "default": ".", "metavar": "DIR", "help": "where to write irqbypass-NAME/",
         })),
    ),
}  # fmt: skip


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments, parsed by the parser the tables above describe (the main
    parser's global options, then each command's hidden copy of them and its
    own arguments). Every wrong value and unknown option of the command line
    is reported in one go (as a file's errors are), then exit status 2."""
    given = sys.argv[1:] if argv is None else list(argv)
    if given.count("--version") >= 2:  # as pytest's: the plugins too, none imported
        from .versions import print_versions

        try:
            print_versions(sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away (`| head`), as in main: not an error
            reader_gone(sys.stdout)
        raise SystemExit(0)
    parser = _Parser(
        prog="irqbypass",
        description="The IRQ bypass manager for userspace VMMs.",
        epilog=f"Global options may also follow the command. Docs: {DOCS_URL}",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"irqbypass {__version__}",
        help="show the version and exit; twice: also Python and the installed plugins",
    )
    building: list[tuple[_Parser, tuple[_Option, ...]]] = [(parser, _GLOBAL_OPTIONS)]
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in _COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        sub.set_defaults(parser=sub)  # whose usage a wrong argument prints
        building.append((sub, (*_HIDDEN_GLOBAL_OPTIONS, *command.arguments)))
    problems: list[str] = []  # the wrong values, noted as the parse goes on (_Checked)
    for built, options in building:
        built.noted = problems
        for flags, settings in options:
            if isinstance(settings.get("default"), list):  # a list of its own for each parser
                settings = {**settings, "default": []}
            built.add_argument(*flags, **settings)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        problems.append(_unrecognized(args.command, unknown))
    if getattr(args, "quiet", False) and getattr(args, "all", False):
        problems.append("argument --all: not allowed with argument -q/--quiet")
    if problems:
        getattr(args, "parser", parser).error(problems.pop())
    # global options may come before or after the command (`irqbypass check F -v`)
    args.block = [*args.block, *args.block_after]
    args.plugin_modules = [*args.plugin_modules, *args.plugin_modules_after]
    args.strict = args.strict or args.strict_after
    args.verbose = args.verbose + args.verbose_after
    # whether a table lists every pair: asked (--all, -v); never under -q (its
    # totals and the pairs with a problem); None: if it is short enough
    listing = getattr(args, "all", False) or args.verbose
    args.every = False if getattr(args, "quiet", False) else True if listing else None
    return args


def _unrecognized(command: str, unknown: Sequence[str]) -> str:
    """argparse's message for arguments left over, and, where a word that is no
    option is left after the command's one positional argument (``irqbypass
    check examples/*.toml``), that it takes one: run it once for each."""
    message = f"unrecognized arguments: {' '.join(unknown)}"
    takes = [flags[0] for flags, _ in _COMMANDS[command].arguments if flags[0][0] != "-"]
    if takes and any(not word.startswith("-") for word in unknown):
        message += f" (`irqbypass {command}` takes one {takes[0]}: run it once for each)"
    return message


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
