"""benchmarks/report.py and benchmarks/plot.py: results JSON in, SVG plots out."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


report = _module("report")
plot = _module("plot")


def _report(tmp_path: Path) -> Path:
    rep = report.Report("demo", "A demo benchmark")
    fig = rep.figure("cost", "cost per call", x_label="pairs", y_label="us", log_x=True)
    fig.series("fast path", [100, 10_000], [2.5, 2.7])
    fig.series("floor", [100, 10_000], [1.5, 1.6], low=[1.4, 1.5], high=[1.7, 1.8])
    fig.goal(2.0, "goal line")
    bars = rep.figure("bars", "two bars", x_label="", y_label="M/s", kind="bar")
    bars.series("rate", ["one", "two"], [1.0, 2.0])
    path = tmp_path / "demo.json"
    rep.write(path)
    return path


def test_a_report_renders_one_svg_per_figure_with_its_labels(tmp_path: Path) -> None:
    doc = plot.load(_report(tmp_path))
    assert doc["schema"] == report.SCHEMA
    written = plot.render(doc, tmp_path / "out")
    assert [p.name for p in written] == ["demo-cost.svg", "demo-bars.svg"]
    svg = written[0].read_text()
    for text in ("cost per call", "fast path", "floor", "goal line", "pairs"):
        assert text in svg
    assert "<dc:date>" not in svg  # deterministic: no build date


def test_rendering_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    doc = plot.load(_report(tmp_path))
    first = plot.render(doc, tmp_path / "a")[0].read_bytes()
    second = plot.render(doc, tmp_path / "b")[0].read_bytes()
    assert first == second


def test_series_of_unequal_length_are_refused() -> None:
    fig = report.Report("x", "x").figure("f", "f", x_label="x", y_label="y")
    with pytest.raises(ValueError, match="2 x values but 1 y values"):
        fig.series("s", [1, 2], [1.0])


def test_a_file_that_is_not_a_report_is_named_in_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"figures": []}))
    assert plot.main([str(bad), "--out", str(tmp_path)]) == 1
    assert "bad.json: missing key 'benchmark'" in capsys.readouterr().err


def test_the_json_option_is_left_out_of_the_recorded_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["benchmarks/x.py", "--quick", "--json", "out.json"])
    assert report.Report("x", "x").as_dict()["command"] == "benchmarks/x.py --quick"


def test_every_committed_result_is_plotted_and_shown_in_the_docs() -> None:
    """A results file updated without `make plots`, or a plot no page shows, fails."""
    docs = "\n".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    for path in sorted((BENCH / "results").glob("*.json")):
        doc = plot.load(path)
        for fig in doc["figures"]:
            svg = ROOT / "docs" / "_static" / "benchmarks" / f"{doc['benchmark']}-{fig['name']}.svg"
            assert svg.exists(), f"{svg.name} missing: run `make plots`"
            assert doc["date"] in svg.read_text(), f"{svg.name} is stale: run `make plots`"
            assert re.search(rf"_static/benchmarks/{re.escape(svg.name)}", docs), (
                f"no page shows {svg.name}"
            )


def _figures() -> list[tuple[str, dict[str, object], dict[str, object]]]:
    found = []
    for path in sorted((BENCH / "results").glob("*.json")):
        doc = plot.load(path)
        found += [(f"{doc['benchmark']}-{fig['name']}", doc, fig) for fig in doc["figures"]]
    return found


@pytest.mark.parametrize(("name", "doc", "fig_doc"), _figures(), ids=[f[0] for f in _figures()])
def test_no_label_of_a_committed_plot_lies_over_its_data(
    name: str, doc: dict[str, object], fig_doc: dict[str, object]
) -> None:
    """Issue 29 item 20: a legend over the lines, a note crossed by one, a bar
    too small to draw, two series drawn alike on the same points."""
    fig = plot.figure(doc, fig_doc)
    try:
        assert plot.overlaps(fig) == [], f"{name}.svg"
    finally:
        plot.plt.close(fig)


def test_the_overlap_check_sees_what_a_reader_cannot() -> None:
    fig, (ax, bars) = plot.plt.subplots(1, 2, figsize=(6, 3))
    try:
        ax.plot([0, 1], [0, 1], marker="o", label="rising")
        ax.plot([0, 1], [0, 1], marker="o", label="same")
        bars.bar([2, 3], [1000.0, 0.01], label="bars")
        bars.set_xticks([2, 3], ["a rather long category name", "and its long neighbour"])
        ax.legend(loc="center")
        ax.text(0.5, 0.5, "a note", transform=ax.transAxes)
        problems = plot.overlaps(fig)
    finally:
        plot.plt.close(fig)
    assert "legend lies over line 'rising'" in problems
    assert "line 'same' hides line 'rising'" in problems
    assert "bar 'bars' is 0.0 px tall" in problems
    assert "text 'a note' lies over line 'rising'" in problems
    assert "legend lies over text 'a note'" in problems
    crowded = "tick label 'a rather long category name' touches 'and its long neighbour'"
    assert crowded in problems
