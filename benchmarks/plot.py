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
import itertools
import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.transforms import Bbox

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


#: each series its own marker and dash, so that two series drawn on the same
#: points (a total and the part of it that dominates) both stay visible
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p")
DASHES = ("-", "--", "-.", ":")
#: a bar chart whose heights span more than this ratio gets a log axis: on a
#: linear one the smallest bars (0.02 beside 35) are not drawn at all
BAR_SPAN = 100.0


def render(doc: dict[str, Any], out: Path, fmt: str = "svg") -> list[Path]:
    """Every figure of one report, as files in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fig_doc in doc["figures"]:
        fig = figure(doc, fig_doc)
        try:
            path = out / f"{doc['benchmark']}-{fig_doc['name']}.{fmt}"
            metadata = {"Date": None} if fmt == "svg" else {}
            fig.savefig(path, format=fmt, metadata=metadata, dpi=110)
        finally:
            plt.close(fig)
        written.append(path)
    return written


#: characters of the subtitle (the command and date) a line, for a 7-inch figure at 9 pt
SUBTITLE_WIDTH = 80


def figure(doc: dict[str, Any], fig_doc: dict[str, Any]) -> Any:
    """One figure of a report, drawn: the plot, then around it (never over
    it) the legend below, goal labels at the right and the note under the
    x label. The caller closes it (``plt.close``)."""
    plt.rcParams.update({"svg.hashsalt": "irqbypass", "font.size": 9})
    series = fig_doc["series"]
    columns = min(3, max(1, len(series)))
    rows = -(-len(series) // columns)
    fig, ax = plt.subplots(figsize=(7.0, 3.4 + 0.2 * rows), layout="constrained")
    try:
        _draw(ax, fig_doc)
        ax.set_title(f"{fig_doc['title']}\n{_subtitle(doc)}", fontsize=9)
        if series:
            fig.legend(loc="outside lower center", ncols=columns, fontsize=8, frameon=False)
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _subtitle(doc: dict[str, Any]) -> str:
    """The command and its date: a long command wraps at spaces (one line of it
    would run off the figure), the date whole on the last line."""
    words = [w for w in (doc.get("command", ""), doc.get("date", "")) if w]
    lines = textwrap.wrap(words[0], SUBTITLE_WIDTH, break_on_hyphens=False) if words else []
    if len(words) == 2:
        last = f"{lines[-1]}, {words[1]}"
        lines[-1:] = [last] if len(last) <= SUBTITLE_WIDTH else [f"{lines[-1]},", words[1]]
    return "\n".join(lines)


def _draw(ax: Any, fig: dict[str, Any]) -> None:
    series = fig["series"]
    if fig.get("kind", "line") == "bar":
        categories = list(dict.fromkeys(x for s in series for x in s["x"]))
        width = 0.8 / max(1, len(series))
        for i, s in enumerate(series):
            xs = [categories.index(x) + (i - (len(series) - 1) / 2) * width for x in s["x"]]
            ax.bar(xs, s["y"], width, label=s["label"], yerr=_errors(s))
        # a category's name wrapped at spaces to its share of the width (about 80
        # characters of 8 pt fit under the axes), so that neighbours never touch;
        # a word longer than that share: the names are slanted instead
        room = max(6, 80 // max(1, len(categories)))
        words = [w for c in categories for w in c.split()]
        if max(map(len, words), default=0) <= room:
            names = [textwrap.fill(c, room) for c in categories]
            ax.set_xticks(range(len(categories)), names, fontsize=8)
        else:
            ax.set_xticks(range(len(categories)), categories, fontsize=8, rotation=30,
                          ha="right", rotation_mode="anchor")  # fmt: skip
        heights = [y for s in series for y in s["y"] if y > 0]
        if heights and max(heights) > BAR_SPAN * min(heights) and not fig.get("log_y"):
            ax.set_yscale("log")
            fig = {**fig, "y_label": f"{fig['y_label']} (log scale)"}
    else:
        for i, s in enumerate(series):
            ax.errorbar(
                s["x"], s["y"], yerr=_errors(s), label=s["label"], capsize=3,
                marker=MARKERS[i % len(MARKERS)], linestyle=DASHES[i % len(DASHES)],
                markerfacecolor="none" if i % 2 else None,
            )  # fmt: skip
    for goal in fig.get("goals", []):
        ax.axhline(goal["y"], linestyle="--", color="grey", linewidth=1, gid="goal")
        ax.annotate(
            textwrap.fill(goal["label"], 18), (1, goal["y"]),
            xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points",
            color="dimgrey", fontsize=7, va="center", ha="left", annotation_clip=False,
        )  # fmt: skip
    if fig.get("log_x"):
        ax.set_xscale("log")
    if fig.get("log_y"):
        ax.set_yscale("log")
    ax.set_xlabel(fig["x_label"])
    ax.set_ylabel(fig["y_label"])
    ax.grid(True, alpha=0.3)
    if fig.get("note"):
        ax.annotate(
            fig["note"], (0.5, 0), xycoords=ax.xaxis.label, xytext=(0, -2),
            textcoords="offset points", ha="center", va="top", fontsize=7, color="dimgrey",
        )  # fmt: skip


def overlaps(fig: Any) -> list[str]:
    """What a reader cannot see in a drawn figure: a legend or a text over a
    data mark (a line, a marker, a bar, an error bar) or over another label, a
    bar too small to be drawn, two series drawn alike on the same points.
    Empty when the figure is clean; ``tests/benchmarks`` checks every plot."""
    fig.canvas.draw()  # the constrained layout places everything at draw time
    renderer = fig.canvas.get_renderer()
    labels = [(f"legend of {fig.legends.index(lg)}", lg.get_window_extent(renderer))
              for lg in fig.legends]  # fmt: skip
    problems = []
    for ax in fig.axes:
        if ax.get_legend() is not None:
            labels.append(("legend", ax.get_legend().get_window_extent(renderer)))
        labels += [(f"text {t.get_text()!r}", t.get_window_extent(renderer))
                   for t in [*ax.texts, ax.title] if t.get_text()]  # fmt: skip
        marks = _marks(ax, renderer)
        area = ax.get_window_extent(renderer)  # marks are clipped to it
        for name, box in labels:
            inside = Bbox.intersection(box, area)
            if inside is not None:
                problems += [f"{name} lies over {mark}" for mark, hit in marks if hit(inside)]
        for patch in ax.patches:
            extent = Bbox.intersection(patch.get_window_extent(renderer), area)
            if extent is None or extent.height < 1.5 or extent.width < 1.5:
                tall = 0.0 if extent is None else extent.height
                problems.append(f"bar {_bar_label(ax, patch)!r} is {tall:.1f} px tall")
        problems += _alike(ax)
        problems += _crowded_ticks(ax, renderer)
    for i, (name, box) in enumerate(labels):
        problems += [f"{name} lies over {other}" for other, box2 in labels[i + 1 :]
                     if box.overlaps(box2)]  # fmt: skip
    edge = fig.bbox.padded(0.5)
    problems += [f"{name} is cut off at the figure's edge" for name, box in labels
                 if Bbox.union([box, edge]).bounds != edge.bounds]  # fmt: skip
    return problems


def _marks(ax: Any, renderer: Any) -> list[tuple[str, Any]]:
    """(what, does it meet this box?) for every data mark of ``ax``, in pixels."""
    from matplotlib.path import Path as Shape

    marks: list[tuple[str, Any]] = []
    scale = ax.figure.dpi / 72.0
    for line in ax.lines:
        if line.get_gid() == "goal" or not line.get_visible():
            continue
        points = line.get_transform().transform(line.get_xydata())
        radius = (
            line.get_markersize() * scale / 2 if line.get_marker() not in (None, "None", "") else 0
        )
        name = f"line {line.get_label()!r}"
        if line.get_linestyle() not in ("None", "", " ") and len(points) > 1:
            shape = Shape(points)
            marks.append((name, lambda box, shape=shape: shape.intersects_bbox(box, filled=False)))
        if radius:
            marks.append(
                (
                    f"a marker of {name}",
                    lambda box, pts=points, r=radius: any(
                        box.x0 - r < x < box.x1 + r and box.y0 - r < y < box.y1 + r for x, y in pts
                    ),
                )
            )
    for patch in ax.patches:
        extent = patch.get_window_extent(renderer)
        marks.append((f"bar {_bar_label(ax, patch)!r}", lambda box, e=extent: box.overlaps(e)))
    for collection in ax.collections:
        transform = collection.get_transform()
        for segment in getattr(collection, "get_segments", list)():
            shape = Shape(transform.transform(segment))
            marks.append(
                ("an error bar", lambda box, shape=shape: shape.intersects_bbox(box, filled=False))
            )
    return marks


def _crowded_ticks(ax: Any, renderer: Any) -> list[str]:
    """Neighbouring x tick labels that touch. Level ones touch when their boxes
    do; slanted ones (parallel strips) when the distance between their lines,
    ``spacing * sin(angle)``, is less than a label's height."""
    ticks = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    found = []
    for one, other in itertools.pairwise(ticks):
        a, b = one.get_window_extent(renderer), other.get_window_extent(renderer)
        angle = math.radians(one.get_rotation())
        if angle == 0:
            touch = a.x1 > b.x0
        else:
            lines = one.get_text().count("\n") + 1
            height = one.get_fontsize() * ax.figure.dpi / 72 * 1.2 * lines
            touch = (b.x1 - a.x1) * math.sin(angle) < height
        if touch:
            found.append(f"tick label {one.get_text()!r} touches {other.get_text()!r}")
    return found


def _bar_label(ax: Any, patch: Any) -> str:
    """The series a bar belongs to (its container's label)."""
    for container in ax.containers:
        if patch in getattr(container, "patches", ()):
            return str(container.get_label())
    return str(patch.get_label())


def _alike(ax: Any) -> list[str]:
    """Two series drawn with the same marker and dash on the same points
    (within 2 px): the one below cannot be seen."""
    import numpy as np

    lines = [ln for ln in ax.lines if ln.get_gid() != "goal" and len(ln.get_xydata()) > 1
             and not ln.get_label().startswith("_")]  # fmt: skip
    found = []
    for i, one in enumerate(lines):
        for other in lines[i + 1 :]:
            a = one.get_transform().transform(one.get_xydata())
            b = other.get_transform().transform(other.get_xydata())
            same_style = (one.get_marker(), one.get_linestyle()) == (
                other.get_marker(), other.get_linestyle())  # fmt: skip
            if same_style and a.shape == b.shape and np.all(np.abs(a - b) < 2.0):
                found.append(f"line {other.get_label()!r} hides line {one.get_label()!r}")
    return found


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
