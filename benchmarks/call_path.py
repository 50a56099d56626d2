"""How many of the project's functions run from ``irqbypass run FILE`` to the first interrupt.

Issue 28's measure of how far a newcomer must read: the distinct functions of the
core (``core/irqbypass``) and the plugins (``plugins/*/irqbypass_*``) that run
from the command's entry point (``irqbypass.cli.main``) until the first
interrupt is delivered, in a one-pair topology (a mock producer firing into a
logging consumer). Counted with a trace, not read off the code:

- ``sys.setprofile`` and ``threading.setprofile`` (the event loop's threads
  too) see every Python function call; a function is its code object (file,
  first line, qualified name), counted once however often it runs;
- comprehensions, generator expressions, lambdas and module bodies (``<...>``
  code objects) are not functions a reader follows: left out;
- the trace begins before ``main`` is called (the command's own modules are
  imported by then only as far as ``import irqbypass.cli`` imports them) and
  ends at the logging consumer's first ``interrupt`` event: the function that
  records the delivery is the last counted;
- the mock fires its first interrupt half a second after it opens, once the
  main thread waits for the run's end (what it does meanwhile is counted):
  without that delay the count varied from run to run (221 to 266) with how far
  the main thread got before the loop's thread delivered;
- the run goes on to its end untraced, its output thrown away;
- calls made while a module is imported (a module body on the stack) are left
  out: a reader follows calls, not imports;
- counted twice: with every installed plugin loaded (what ``irqbypass run``
  does by default) and with only the pair's two plugins
  (``IRQBYPASS_LOAD_PLUGINS=irqbypass-mock,irqbypass-logging``).

``--baseline DIR`` counts an older tree's code too (``git archive COMMIT core
plugins | tar -x -C DIR``; its core and plugins go ahead of the editable
installs on ``PYTHONPATH``, as ``benchmarks/startup.py`` does), and says whether
this tree's path is at most half of it: issue 28's proof, against 10643a7, the
commit the issue measured. Usage:

    .venv/bin/python benchmarks/call_path.py [--list] [--baseline DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from startup import baseline_path

TOPOLOGY = """\
[[producers]]
name = "mock0"
kind = "mock"
token = "vector0"
options = { rate = 100.0, count = 3, delay = 0.5 }

[[consumers]]
name = "log0"
kind = "logging"
token = "vector0"
"""

#: a function: (module file, first line, qualified name)
Function = tuple[str, int, str]


def ours(filename: str) -> bool:
    """A file of the core or of a plugin (wherever it is installed from)."""
    parts = Path(filename).parts
    return any(part == "irqbypass" or part.startswith("irqbypass_") for part in parts[-3:-1])


def importing(frame: FrameType | None, base: FrameType) -> bool:
    """The call is part of an import: a module body is on the stack, above the
    frame that started the trace (``base``)."""
    while frame is not None and frame is not base:
        if frame.f_code.co_name == "<module>":
            return True
        frame = frame.f_back
    return False


def trace(topology: str) -> list[Function]:
    """Run ``irqbypass run topology`` here, and return the functions of ours that
    ran until the first interrupt was delivered, in the order first seen."""
    from irqbypass.cli import main

    seen: dict[Function, None] = {}
    done = threading.Event()
    base = sys._getframe()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or done.is_set():
            return
        code = frame.f_code
        if code.co_name.startswith("<") or not ours(code.co_filename) or importing(frame, base):
            return
        seen.setdefault((code.co_filename, code.co_firstlineno, code.co_qualname), None)
        if code.co_name == "_event" and frame.f_locals.get("event") == "interrupt":
            done.set()  # the logging consumer records its first delivery

    with (
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
        contextlib.redirect_stderr(devnull),
    ):
        threading.setprofile(profile)
        sys.setprofile(profile)
        try:
            main(["run", topology, "--duration", "5"])
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
    if not done.is_set():
        raise SystemExit("no interrupt was delivered: nothing to count")
    return list(seen)


def module_of(filename: str) -> str:
    """``irqbypass/topology.py``, ``irqbypass_mock/__init__.py``."""
    path = Path(filename)
    return f"{path.parent.name}/{path.name}"


#: issue 28's proof: the path crosses at most half the functions it crossed where
#: the issue was measured (the baseline: ``git archive 10643a7 core plugins``)
GOAL = 0.5

#: the two ways the plugins are loaded, and the environment each takes
PLUGINS = {
    "every installed plugin": {},
    "mock and logging only": {"IRQBYPASS_LOAD_PLUGINS": "irqbypass-mock,irqbypass-logging"},
}


def count(tree: Path | None, plugins: dict[str, str]) -> dict[str, Any]:
    """Trace in a fresh interpreter (a baseline tree ahead on PYTHONPATH)."""
    env = {**os.environ, **plugins}
    env.pop("IRQBYPASS_DISABLE_PLUGIN_AUTOLOAD", None)
    if tree is not None:
        env["PYTHONPATH"] = baseline_path(tree)
    proc = subprocess.run(
        [sys.executable, __file__, "--child"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    functions: list[list[Any]] = json.loads(proc.stdout)
    modules = Counter(module_of(f) for f, _, _ in functions)
    return {
        "functions": len(functions),
        "modules": len(modules),
        "by_module": dict(modules.most_common()),
        "path": [f"{module_of(f)}:{line} {name}" for f, line, name in functions],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--list", action="store_true", help="list the functions, in order")
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="an older tree, counted too")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the counts as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            topology = Path(tmp) / "one-pair.toml"
            topology.write_text(TOPOLOGY)
            print(json.dumps(trace(str(topology))))
        return
    results = {}
    for loaded, env in PLUGINS.items():
        results[f"this tree, {loaded}"] = count(None, env)
        if args.baseline is not None:
            results[f"baseline, {loaded}"] = count(args.baseline, env)
    for label, result in results.items():
        print(f"{label}: {result['functions']} functions in {result['modules']} modules")
        for module, n in result["by_module"].items():
            print(f"  {n:4d}  {module}")
        if args.list:
            print("\n".join(f"    {line}" for line in result["path"]))
    if args.baseline is not None:
        for loaded in PLUGINS:
            now, then = results[f"this tree, {loaded}"], results[f"baseline, {loaded}"]
            ratio = now["functions"] / then["functions"]
            verdict = "met" if ratio <= GOAL else "NOT met"
            print(
                f"goal this tree <= {GOAL:.0%} of the baseline ({loaded}): "
                f"{now['functions']} / {then['functions']} = {ratio:.0%} ({verdict})"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
