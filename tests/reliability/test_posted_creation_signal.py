"""A Ctrl-C right after the posted descriptor's backing file is created (issue 13,
item 3): before the fix it landed at the eval-breaker check after ``os.open``
returned, before the fd was stored or the file owned, and the file stayed
behind (the rerun then failed with "already exists")."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import irqbypass_posted._descriptor as descriptor_module
import pytest
from irqbypass_posted import PostedDescriptor

# SIGINT raises KeyboardInterrupt, guarded as a Manager guards it (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("guarded_sigint")


def test_a_ctrl_c_just_after_the_file_is_created_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    path = tmp_path / "pi0"

    def open_then_interrupt(target: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(target, flags, *args, **kwargs)
        if flags & os.O_CREAT:
            signal.raise_signal(signal.SIGINT)  # handled as this call returns
        return fd

    monkeypatch.setattr(descriptor_module.os, "open", open_then_interrupt)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(KeyboardInterrupt):
        PostedDescriptor(file=str(path))
    assert not path.exists(), "the descriptor file was left behind"
    assert set(os.listdir("/proc/self/fd")) == before, "an fd was left open"
    monkeypatch.undo()
    with PostedDescriptor(file=str(path)):  # the rerun works
        assert path.exists()
    assert not path.exists()
