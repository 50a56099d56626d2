"""Start-up of the ``irqbypass`` command against ``python -c pass`` and ``pytest --version``.

Side by side, in one run, round by round (each command once per round, so a load
that comes and goes on a shared host falls on all of them alike), the wall time of:

- ``python -c pass``: the interpreter alone, the floor;
- ``pytest --version``: the yardstick (a command-line tool of the same stack);
- ``irqbypass --version`` and ``irqbypass --help``: nothing but the parser;
- ``irqbypass plugins``: every installed plugin loaded and listed;
- ``irqbypass check FILE`` of a small file (2 mock -> logging pairs).

Bytecode is cached: the environment's ``PYTHONDONTWRITEBYTECODE`` is dropped and
each command runs once before the rounds (so its ``.pyc`` files are written).
Each command's modules are counted too (``sys.modules`` at exit, from
``python -X importtime``), with the heavy ones it should not need named.
Goals (docs/benchmarks.md): ``--version`` and ``--help`` within 0.1 s, ``plugins``
and ``check`` within 0.2 s (the median). ``--baseline DIR`` runs the irqbypass
commands on an older tree's code too, in the same rounds. Usage:

    .venv/bin/python benchmarks/startup.py [--quick] [--baseline DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import Report, add_json_option

BIN = Path(sys.executable).parent
GOALS = {"--version": 0.1, "--help": 0.1, "plugins": 0.2, "check": 0.2}
#: modules a command that runs no topology should not import
HEAVY = ("asyncio", "importlib.metadata", "difflib", "pluggy", "tomllib", "hashlib")
SMALL = "".join(
    f'[[producers]]\nname = "m{i}"\nkind = "mock"\ntoken = "t{i}"\n'
    f"options = {{ rate = 0, count = 20 }}\n"
    f'[[consumers]]\nname = "l{i}"\nkind = "logging"\ntoken = "t{i}"\n'
    for i in range(2)
)


def commands(small: Path) -> dict[str, list[str]]:
    irqbypass = str(BIN / "irqbypass")
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "pytest --version": [str(BIN / "pytest"), "--version"],
        "--version": [irqbypass, "--version"],
        "--help": [irqbypass, "--help"],
        "plugins": [irqbypass, "plugins"],
        "check": [irqbypass, "check", str(small)],
    }


def environment(baseline: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as on a user's machine
    if baseline is not None:
        env["PYTHONPATH"] = baseline_path(baseline)
    return env


def baseline_path(tree: Path) -> str:
    """PYTHONPATH that puts another source tree's core and plugins (an older
    commit, ``git archive COMMIT core plugins | tar -x -C DIR``) ahead of the
    editable installs: the same entry points, that tree's code."""
    plugins = sorted(p for p in (tree / "plugins").iterdir() if p.is_dir())
    return os.pathsep.join(str(p) for p in [tree / "core", *plugins])


def run_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def imported(argv: list[str], env: dict[str, str]) -> list[str]:
    """The modules a command imports, from ``-X importtime`` (stderr)."""
    script = argv[0]
    if script == sys.executable:
        full = [sys.executable, "-X", "importtime", *argv[1:]]
    else:  # a console script: run it by its interpreter
        full = [sys.executable, "-X", "importtime", script, *argv[1:]]
    proc = subprocess.run(full, env=env, capture_output=True, text=True, check=True)
    names = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.append(name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run the irqbypass commands on the code of this source tree (an older "
        "commit's core/ and plugins/), interleaved: before and after in one run",
    )
    add_json_option(parser)
    args = parser.parse_args()
    rounds = 5 if args.quick else 21
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.toml"
        small.write_text(SMALL)
        cmds = commands(small)
        envs = {name: env for name in cmds}
        if args.baseline is not None:
            for name in GOALS:
                cmds[f"{name} (baseline)"] = cmds[name]
                envs[f"{name} (baseline)"] = environment(args.baseline)
        for name, argv in cmds.items():  # writes the bytecode
            run_once(argv, envs[name])
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(rounds):
            for name, argv in cmds.items():
                times[name].append(run_once(argv, envs[name]))
        modules = {name: imported(argv, envs[name]) for name, argv in cmds.items()}
    load = os.getloadavg()
    print(f"wall seconds, bytecode cached, {rounds} rounds; load {load[0]:.1f}")
    print(f"{'command':29} {'median':>7} {'min':>7} {'goal':>6} {'modules':>8}  heavy imports")
    median = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    for name in cmds:
        goal = GOALS.get(name)
        heavy = [m for m in HEAVY if m in modules[name]]
        print(
            f"{name:29} {median[name]:>7.3f} {best[name]:>7.3f} "
            f"{f'{goal:.1f}' if goal else '':>6} {len(modules[name]):>8}  "
            f"{', '.join(heavy) or '-'}"
        )
    floor, pytest = median["python -c pass"], median["pytest --version"]
    for name, goal in GOALS.items():
        verdict = "met" if median[name] <= goal else "NOT met"
        print(
            f"goal irqbypass {name} within {goal} s: {median[name]:.3f} s ({verdict}); "
            f"{median[name] / pytest:.2f}x pytest --version, "
            f"{median[name] - floor:.3f} s above python -c pass"
            + (
                f"; baseline {median[f'{name} (baseline)']:.3f} s"
                if f"{name} (baseline)" in median
                else ""
            )
        )

    report = Report("startup", "Start-up of the irqbypass command")
    fig = report.figure(
        "wall",
        "Wall time of a command, bytecode cached (median)",
        x_label="command",
        y_label="s",
        kind="bar",
        note=f"{rounds} interleaved rounds; load {load[0]:.1f}",
    )
    names = list(cmds)
    fig.series(
        "median",
        names,
        [median[n] for n in names],
        low=[min(times[n]) for n in names],
        high=[max(times[n]) for n in names],
    )
    fig.goal(0.1, "goal --version, --help: 0.1 s")
    fig.goal(0.2, "goal plugins, check: 0.2 s")
    mods = report.figure(
        "modules", "Modules imported", x_label="command", y_label="modules", kind="bar"
    )
    mods.series("modules", names, [float(len(modules[n])) for n in names])
    report.write(args.json)


if __name__ == "__main__":
    main()
