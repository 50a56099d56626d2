"""Regression tests of issue 29 (round four), items 1-7, 18 and 19: what a
plugin author and an embedder met."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import irqbypass
import pytest
from cli_support import run, topology
from irqbypass.plugins import ENV_DISABLE, ENV_LOAD

DEAF = (
    '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\noptions={rate=0.0, count=10}\n'
    '[[consumers]]\nname="d"\nkind="deaf"\ntoken="t"\n'
)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV_LOAD, raising=False)
    monkeypatch.delenv(ENV_DISABLE, raising=False)
    yield


def wait_for(condition: Callable[[], bool]) -> None:
    """Wait for ``condition``; a hang guard only (the test's own pace is the condition's)."""
    done = threading.Event()
    for _ in range(6000):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("the condition never held")


def round4_host() -> irqbypass.PluginHost:
    import round4_plugin

    host = irqbypass.load_plugins(allow=["irqbypass-mock"])
    host.register(round4_plugin, name="round4_plugin")
    return host


# -- 18: one definition of each count --------------------------------------


def test_signals_a_consumer_never_read_are_queued_not_lost_in_the_api(no_env: None) -> None:
    config = irqbypass.parse_config(DEAF, file="deaf.toml")
    with irqbypass.Topology(config, round4_host()) as top:
        wait_for(lambda: top.finished and top.status()[0].queued == 10)
        (row,) = top.status()
        assert (row.fired, row.delivered, row.queued, row.lost) == (10, 0, 10, 0)
        assert row.coalesced is None, "a consumer that merges nothing coalesces nothing"
        assert row.as_dict()["queued"] == 10


def test_the_cli_and_the_api_count_alike(tmp_path: Path) -> None:
    result = run("-p", "round4_plugin", "run", topology(tmp_path, DEAF), "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["pairs"]
    assert (row["fired"], row["delivered"], row["queued"], row["lost"]) == (10, 0, 10, 0)


def test_a_snapshot_reads_each_end_once_however_many_counts_are_asked(no_env: None) -> None:
    config = irqbypass.parse_config(DEAF, file="deaf.toml")
    with irqbypass.Topology(config, round4_host()) as top:
        (row,) = top.status()
        consumer = row.consumer
        assert consumer is not None
        reads: list[int] = []
        real = consumer.endpoint.stats

        def counted() -> object:
            reads.append(1)
            return real()

        consumer.endpoint.stats = counted  # type: ignore[method-assign]
        (row,) = top.status()
        fixed = row.snapshot()
        assert len(reads) == 1
        _ = (fixed.fired, fixed.delivered, fixed.queued, fixed.coalesced, fixed.lost)
        assert fixed.as_dict()["queued"] == fixed.queued
        assert len(reads) == 1, "every count of a snapshot comes from its one reading"
        assert row.as_dict() is not None and len(reads) == 2, "as_dict reads once too"
        assert row.delivered == 0 and len(reads) == 3, "a row's own counts read when asked"
