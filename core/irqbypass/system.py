"""System helpers: ioctl numbers and the seam to the OS, and paths others may share.

A device producer's OS calls go through a :class:`Seam` (a test hands in a
model instead, :class:`irqbypass.testing.FakeDevice`); its requests are
numbered as ``asm-generic/ioctl.h`` numbers them (:func:`ioctl_number`). A
path a topology names may sit in a directory another local user can write:
:func:`open_file` and :func:`open_directory` open it without following a
planted link and refuse what someone else owns or can change
(:class:`UnsafePathError`).

Every name is imported on first use, as :mod:`irqbypass`'s are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _exports

if TYPE_CHECKING:  # the names of _MODULES, as type checkers read them
    from ._paths import UnsafePathError as UnsafePathError
    from ._paths import check_owner as check_owner
    from ._paths import open_directory as open_directory
    from ._paths import open_file as open_file
    from ._paths import split_path as split_path
    from ._paths import trusted_uids as trusted_uids
    from ._seam import IOC_NONE as IOC_NONE
    from ._seam import IOC_READ as IOC_READ
    from ._seam import IOC_WRITE as IOC_WRITE
    from ._seam import RealSeam as RealSeam
    from ._seam import Seam as Seam
    from ._seam import ioctl_number as ioctl_number

#: each implementation module and the names this tier takes from it
_MODULES: dict[str, tuple[str, ...]] = {
    "_paths": (
        "UnsafePathError",
        "check_owner",
        "open_directory",
        "open_file",
        "split_path",
        "trusted_uids",
    ),
    "_seam": ("IOC_NONE", "IOC_READ", "IOC_WRITE", "RealSeam", "Seam", "ioctl_number"),
}
__all__ = [name for names in _MODULES.values() for name in names]
__getattr__, __dir__ = _exports(__name__, _MODULES, globals())
