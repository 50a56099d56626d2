"""Regression tests of issue 22 (item 9, item 10's check warning, item 12's
doubled prefix, item 13's maximum): what an operator ran into. Plugins under test
are modules of tests/core loaded with ``-p`` (``faulty_plugin``)."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import pair, run, topology


def test_json_errors_are_a_json_object_on_stdout(tmp_path: Path) -> None:
    bad = topology(tmp_path, "x = [\n", name="bad.toml")
    failing = topology(tmp_path, pair("mock", "open-raises"), name="failing.toml")
    for args, status in (
        (["check", bad, "--json"], 1),
        (["run", bad, "--json"], 1),
        (["run", failing, "--json", "--duration", "5"], 1),
        (["check", str(tmp_path / "missing.toml"), "--json"], 1),
    ):
        result = run("-p", "faulty_plugin", *args)
        assert result.returncode == status, result.stderr
        doc = json.loads(result.stdout)
        assert doc["ok"] is False and doc["exit_status"] == status
        assert (
            doc["error"] and result.stderr.splitlines()[-1] == f"irqbypass: error: {doc['error']}"
        )
    assert "open is broken" in doc["error"] or "missing.toml" in doc["error"]


NEVER_HERE = pair("mock", "never-here").replace(
    'kind="mock"', 'kind="mock"\noptions={count=3, rate=0.0}'
)


def test_check_warns_of_a_non_optional_entry_whose_kind_cannot_work_here(tmp_path: Path) -> None:
    path = topology(tmp_path, NEVER_HERE)
    result = run("-p", "faulty_plugin", "check", path)
    assert result.returncode == 0
    assert (
        "irqbypass: warning: consumers[0]: consumer 'c0' (kind never-here) cannot work here, "
        "so `run` will fail to open it: no such device here" in result.stderr
    )
    assert run("-p", "faulty_plugin", "check", "--strict", path).returncode == 1
    optional = NEVER_HERE.replace('kind="never-here"', 'kind="never-here"\noptional=true')
    quiet = run("-p", "faulty_plugin", "check", topology(tmp_path, optional, name="o.toml"))
    assert "cannot work here" not in quiet.stderr, "an optional entry is skipped, not warned of"


def test_a_note_of_an_interrupted_callback_has_one_prefix(tmp_path: Path) -> None:
    result = run("-p", "faulty_plugin", "run", topology(tmp_path, pair("interrupted-stop", "sink")))
    assert result.returncode == 130, result.stderr
    assert "irqbypass: error: interrupted in producer 'p0'.stop()" in result.stderr
    assert "error: irqbypass:" not in result.stderr
    assert "summary:" in result.stdout


def test_run_help_says_the_duration_s_maximum() -> None:
    result = run("run", "--help", env={"COLUMNS": "80"})
    assert "at most 604800 s, 7 days" in " ".join(result.stdout.split())
