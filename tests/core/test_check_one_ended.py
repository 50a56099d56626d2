"""Regression tests of issue 16: ``irqbypass check`` on a token with only one end.

Only the near miss (``vec0``/``vec1``) used to work: every other one-ended token
(no near-identical token on the other side to suggest) crashed ``check`` with an
IndexError, and ``check --json`` printed nothing. Each shape the issue named is
checked here, plain and with ``--json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from irqbypass import cli
from irqbypass._plugins import ENV_LOAD


@pytest.fixture(autouse=True)
def mock_and_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(ENV_LOAD, "irqbypass-mock,irqbypass-logging")
    yield


def entry(side: str, name: str, token: str) -> str:
    kind = "mock" if side == "producers" else "logging"
    return f'[[{side}]]\nname = "{name}"\nkind = "{kind}"\ntoken = "{token}"\n'


# (file, the warnings check must print, in order)
SHAPES = {
    "lone producer": (
        entry("producers", "a", "t0"),
        ["producers[0]: token 't0' has only a producer ('a'): no consumer pairs with it"],
    ),
    "lone consumer": (
        entry("consumers", "c", "t0"),
        ["consumers[0]: token 't0' has only a consumer ('c'): no producer pairs with it"],
    ),
    "t and T": (
        entry("producers", "a", "t") + entry("consumers", "c", "T"),
        [
            "producers[0]: token 't' has only a producer ('a'): no consumer pairs with it",
            "consumers[0]: token 'T' has only a consumer ('c'): no producer pairs with it",
        ],
    ),
    "alpha and omega": (
        entry("producers", "a", "alpha") + entry("consumers", "c", "omega"),
        [
            "producers[0]: token 'alpha' has only a producer ('a'): no consumer pairs with it",
            "consumers[0]: token 'omega' has only a consumer ('c'): no producer pairs with it",
        ],
    ),
    "disk0-vq0 and net0-vq1": (
        entry("producers", "a", "disk0-vq0") + entry("consumers", "c", "net0-vq1"),
        [
            "producers[0]: token 'disk0-vq0' has only a producer ('a'): no consumer pairs with it",
            "consumers[0]: token 'net0-vq1' has only a consumer ('c'): no producer pairs with it",
        ],
    ),
    "two producers, no consumer": (
        entry("producers", "a", "t0") + entry("producers", "b", "t1"),
        [
            "producers[0]: token 't0' has only a producer ('a'): no consumer pairs with it",
            "producers[1]: token 't1' has only a producer ('b'): no consumer pairs with it",
        ],
    ),
    "the near miss": (
        entry("producers", "a", "vec0") + entry("consumers", "c", "vec1"),
        [
            "producers[0]: token 'vec0' has only a producer ('a'): no consumer pairs with it;"
            " did you mean token 'vec1' of consumer 'c'?",
            "consumers[0]: token 'vec1' has only a consumer ('c'): no producer pairs with it;"
            " did you mean token 'vec0' of producer 'a'?",
        ],
    ),
}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "one-ended.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("shape", SHAPES)
def test_check_warns_of_a_one_ended_token(
    shape: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, warnings = SHAPES[shape]
    assert cli.main(["check", write(tmp_path, text)]) == 0
    out, err = capsys.readouterr()
    assert "OK:" in out
    assert err.splitlines() == [f"irqbypass: warning: {w}" for w in warnings]


@pytest.mark.parametrize("shape", SHAPES)
def test_check_json_lists_the_warnings(
    shape: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, warnings = SHAPES[shape]
    assert cli.main(["check", "--json", write(tmp_path, text)]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["ok"] is True
    assert doc["warnings"] == warnings
    assert "Traceback" not in err


@pytest.mark.parametrize("shape", SHAPES)
def test_check_strict_fails_on_the_warnings(
    shape: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, warnings = SHAPES[shape]
    assert cli.main(["check", "--strict", "--json", write(tmp_path, text)]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"] is False
    assert f"{len(warnings)} warning" in err
