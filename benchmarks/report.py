"""Benchmark results as JSON, the one input of ``benchmarks/plot.py``.

Every benchmark prints its figures and, given ``--json FILE``, also writes them
as a :class:`Report`: a list of figures, each a set of named series, plus where
and when it was measured. ``benchmarks/plot.py`` renders every figure of every
report into ``docs/_static/benchmarks/<benchmark>-<figure>.svg``, so the plots in
the docs come from a run's own output, never from numbers typed by hand.

    report = Report("registration", "Cost of a pair's life")
    fig = report.figure("life", "us per pair life", x_label="registered pairs",
                        y_label="us", log_x=True)
    fig.series("irqbypass", [100, 10_000], [2.9, 3.1])
    fig.goal(2.0, "goal")             # a horizontal reference line
    report.write(args.json)           # if the user asked for it
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA = 1


@dataclass
class Series:
    label: str
    x: list[float | str]
    y: list[float]
    #: optional error bars: (low, high) per point, as absolute values
    low: list[float] | None = None
    high: list[float] | None = None


@dataclass
class Figure:
    """One plot: ``kind`` "line" (numeric x) or "bar" (x are category names,
    one bar per series in each category)."""

    name: str
    title: str
    x_label: str
    y_label: str
    kind: Literal["line", "bar"] = "line"
    log_x: bool = False
    log_y: bool = False
    series_list: list[Series] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def series(
        self,
        label: str,
        x: list[float | str] | list[float] | list[str],
        y: list[float],
        *,
        low: list[float] | None = None,
        high: list[float] | None = None,
    ) -> Series:
        if len(x) != len(y):
            raise ValueError(f"series {label!r}: {len(x)} x values but {len(y)} y values")
        s = Series(label, list(x), [float(v) for v in y], low, high)
        self.series_list.append(s)
        return s

    def goal(self, y: float, label: str) -> None:
        """A horizontal reference line (a goal, a floor)."""
        self.goals.append({"y": float(y), "label": label})

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["series"] = doc.pop("series_list")
        return doc


class Report:
    """Every figure of one benchmark run, with the host it ran on."""

    def __init__(self, benchmark: str, title: str) -> None:
        self.benchmark = benchmark
        self.title = title
        self.figures: list[Figure] = []

    def figure(self, name: str, title: str, **kwargs: Any) -> Figure:
        fig = Figure(name, title, **kwargs)
        self.figures.append(fig)
        return fig

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "benchmark": self.benchmark,
            "title": self.title,
            "command": _command(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "load": [round(v, 2) for v in os.getloadavg()],
            },
            "figures": [f.as_dict() for f in self.figures],
        }

    def write(self, path: str | Path | None) -> None:
        """Write the JSON to ``path`` (nothing when None: no ``--json`` given)."""
        if path is None:
            return
        text = json.dumps(self.as_dict(), indent=1) + "\n"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        print(f"wrote {path}")


def _command() -> str:
    """How this run was started, without ``--json FILE`` (where it wrote to)."""
    args, shown = sys.argv[1:], []
    while args:
        arg = args.pop(0)
        if arg == "--json":
            args = args[1:]
        elif not arg.startswith("--json="):
            shown.append(arg)
    return " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *shown])


def kernel_series() -> str:
    """The running kernel's series ("6.12" of "6.12.118+deb12-amd64"): what
    names the results of a run in a test guest, one file per guest kernel."""
    return ".".join(os.uname().release.split(".")[:2])


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """The ``--json FILE`` option every benchmark takes."""
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="also write the figures as JSON (input of benchmarks/plot.py)",
    )
