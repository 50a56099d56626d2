"""Render benchmark results (``--json`` output, see ``benchmarks/report.py``) as SVG.

    .venv/bin/python benchmarks/plot.py [FILE.json ...] [--out DIR]

Without files it renders every ``benchmarks/results/*.json``; each figure becomes
``DIR/<benchmark>-<figure>.svg`` (DIR defaults to ``docs/_static/benchmarks``).
The SVG is deterministic (no date, fixed ids), so an unchanged result gives an
unchanged file in git. ``make plots`` runs this; ``make bench`` runs every
benchmark with ``--json`` first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "_static" / "benchmarks"


class PlotError(Exception):
    """A results file that cannot be plotted; the message names it and the key."""


def load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlotError(f"{path}: cannot read it as JSON: {exc}") from exc
    for key in ("benchmark", "figures"):
        if key not in doc:
            raise PlotError(f"{path}: missing key {key!r}; write it with benchmarks/report.py")
    return doc  # type: ignore[no-any-return]


def render(doc: dict[str, Any], out: Path, fmt: str = "svg") -> list[Path]:
    """Every figure of one report, as files in ``out``; returns their paths."""
    plt.rcParams.update({"svg.hashsalt": "irqbypass", "font.size": 9})
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fig_doc in doc["figures"]:
        fig, ax = plt.subplots(figsize=(7.0, 3.6), layout="constrained")
        try:
            _draw(ax, fig_doc)
            subtitle = f"{doc.get('command', '')}, {doc.get('date', '')}".strip(", ")
            ax.set_title(f"{fig_doc['title']}\n{subtitle}", fontsize=9)
            path = out / f"{doc['benchmark']}-{fig_doc['name']}.{fmt}"
            metadata = {"Date": None} if fmt == "svg" else {}
            fig.savefig(path, format=fmt, metadata=metadata, dpi=110)
        finally:
            plt.close(fig)
        written.append(path)
    return written


def _draw(ax: Any, fig: dict[str, Any]) -> None:
    series = fig["series"]
    if fig.get("kind", "line") == "bar":
        categories = list(dict.fromkeys(x for s in series for x in s["x"]))
        width = 0.8 / max(1, len(series))
        for i, s in enumerate(series):
            xs = [categories.index(x) + (i - (len(series) - 1) / 2) * width for x in s["x"]]
            ax.bar(xs, s["y"], width, label=s["label"], yerr=_errors(s))
        ax.set_xticks(range(len(categories)), categories)
    else:
        for s in series:
            ax.errorbar(s["x"], s["y"], yerr=_errors(s), marker="o", label=s["label"], capsize=3)
    for goal in fig.get("goals", []):
        ax.axhline(goal["y"], linestyle="--", color="grey", linewidth=1)
        ax.annotate(
            goal["label"], (0, goal["y"]), xycoords=("axes fraction", "data"),
            xytext=(2, 2), textcoords="offset points", color="grey",
        )  # fmt: skip
    if fig.get("log_x"):
        ax.set_xscale("log")
    if fig.get("log_y"):
        ax.set_yscale("log")
    ax.set_xlabel(fig["x_label"])
    ax.set_ylabel(fig["y_label"])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if fig.get("note"):
        ax.text(
            0.99, 0.02, fig["note"], transform=ax.transAxes, ha="right", va="bottom",
            fontsize=7, color="dimgrey",
        )  # fmt: skip


def _errors(s: dict[str, Any]) -> list[list[float]] | None:
    if s.get("low") is None or s.get("high") is None:
        return None
    return [
        [max(0.0, y - lo) for y, lo in zip(s["y"], s["low"], strict=True)],
        [max(0.0, hi - y) for y, hi in zip(s["y"], s["high"], strict=True)],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="results files (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    parser.add_argument("--format", choices=("svg", "png"), default="svg")
    args = parser.parse_args(argv)
    files = args.files or sorted(RESULTS.glob("*.json"))
    if not files:
        print(f"no results in {RESULTS}: run `make bench` first", file=sys.stderr)
        return 1
    try:
        for path in files:
            for svg in render(load(path), args.out, args.format):
                shown = svg.relative_to(ROOT) if svg.is_relative_to(ROOT) else svg
                print(f"{path.name} -> {shown}")
    except PlotError as exc:
        print(f"plot: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
