"""What the tests of tests/core share as fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from irqbypass._plugins import ENV_DISABLE, ENV_LOAD


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The user's plugin-loading environment left out: the test says what loads."""
    monkeypatch.delenv(ENV_LOAD, raising=False)
    monkeypatch.delenv(ENV_DISABLE, raising=False)
    yield
