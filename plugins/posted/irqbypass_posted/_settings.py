"""A ``posted-interrupt`` consumer's settings: its options as one value, checked once."""

from __future__ import annotations

from dataclasses import dataclass

import irqbypass
import irqbypass.plugin

from ._descriptor import LockMode, check_vector

__all__ = ["DEFAULT_NV", "PostedSettings"]

#: Linux's POSTED_INTR_VECTOR: the notification vector KVM programs into NV.
DEFAULT_NV = 0xF2

_show = irqbypass.plugin.show_value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class PostedSettings(irqbypass.plugin.Settings):
    """The options of a posted-interrupt consumer.

    ``vector``: the vector to post (None: the producer's ``irq``). ``urgent``:
    posts notify even while SN is set. ``nv``, ``ndst``, ``sn``: the
    descriptor's control fields. ``file``: a record at this path (mode 0600,
    removed on close) names the descriptor's sealed memory, so another process
    can map it; ``lock``: ``"file"`` (default with a file) or ``"process"``.
    ``drain``: play the vCPU, syncing on every notification.
    """

    vector: int | None = None
    urgent: bool = False
    nv: int = DEFAULT_NV
    ndst: int = 0
    sn: bool = False
    file: str | None = None
    lock: LockMode | None = None
    drain: bool = False

    def check(self) -> None:
        for key, flag in (("urgent", self.urgent), ("sn", self.sn), ("drain", self.drain)):
            if not isinstance(flag, bool):
                raise self.refuse(f"{key} must be True or False, not {type(flag).__name__}")
        file = self.file
        if file is not None and (not isinstance(file, str) or not file):
            raise self.refuse(f"file must be a path (a non-empty str) or None, not {_show(file)}")
        if self.vector is not None:
            check_vector(self.vector)
        if not _is_int(self.nv) or not 0 <= self.nv <= 255:
            raise self.refuse(f"nv={_show(self.nv)} does not fit a byte; use 0 to 255")
        if not _is_int(self.ndst) or not 0 <= self.ndst <= 0xFFFFFFFF:
            raise self.refuse(f"ndst={_show(self.ndst)} does not fit a u32; use 0 to 0xffffffff")
        lock = self.lock
        if lock is not None and (not isinstance(lock, str) or lock not in ("process", "file")):
            raise self.refuse(f"lock {_show(lock)} is unknown; use 'process' or 'file'")
        if lock == "file" and not file:
            raise self.refuse(
                "lock 'file' needs a file-backed descriptor; set file to a path",
                option="lock",
                in_config="'file' locking needs a file-backed descriptor; set file",
            )
