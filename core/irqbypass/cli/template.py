"""``irqbypass new-plugin NAME``: a publishable plugin to start from.

It writes ``irqbypass-NAME/`` from the template shipped in the core
(``irqbypass/template``): a producer kind ``NAME`` with its pyproject (licence,
entry point, the core's compatible range), README, LICENSE, ``py.typed`` and
tests that use the fixtures the core ships (:mod:`irqbypass.pytest_plugin`). It
builds, passes its tests and ``twine check --strict`` as written.

The naming rule, checked here: the plugin's name is lower-case letters and
digits in words joined by ``-`` (``ticker``, ``my-nic``); its distribution is
``irqbypass-NAME``, its module ``irqbypass_NAME`` (``-`` as ``_``), its entry
point in group ``irqbypass`` is ``NAME``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import string
import sys
from importlib import resources
from typing import TYPE_CHECKING

from .. import __version__
from .._errors import IrqBypassError
from .._paths import open_at, open_directory

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def names(name: str) -> dict[str, str]:
    """The names the rule derives from a plugin's name, or IrqBypassError."""
    if name.startswith("irqbypass-") or name.startswith("irqbypass_"):
        raise IrqBypassError(
            f"{name!r}: give the plugin's own name ({name[len('irqbypass-') :]!r}); the "
            "distribution is irqbypass-NAME and the module irqbypass_NAME"
        )
    if not NAME.fullmatch(name):
        raise IrqBypassError(
            f"{name!r} is not a plugin name: lower-case letters and digits, words joined by "
            "'-', starting with a letter (such as 'ticker' or 'my-nic'); the distribution is "
            "then irqbypass-NAME and the module irqbypass_NAME"
        )
    major, minor = (int(n) for n in __version__.split(".")[:2])
    return {
        "name": name,
        "dist": f"irqbypass-{name}",
        "module": f"irqbypass_{name.replace('-', '_')}",
        "core_minor": f"{major}.{minor}",
        # a 0.x minor may change the plugin API; from 1.0 on, a major
        "core_next": f"0.{minor + 1}" if major == 0 else f"{major + 1}",
        "year": str(datetime.date.today().year),
    }


def _files(values: dict[str, str]) -> dict[str, bytes]:
    """Each file of the plugin by its path inside the new folder."""
    out: dict[str, bytes] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name == "__pycache__":
                continue
            if entry.is_dir():
                into = values["module"] if entry.name == "module" else entry.name
                walk(entry, f"{prefix}{into}/")
            elif entry.name.endswith(".tmpl"):
                name = entry.name.removesuffix(".tmpl")
                if name == "test_plugin.py":
                    name = f"test_{values['module'].removeprefix('irqbypass_')}.py"
                text = string.Template(entry.read_text(encoding="utf-8")).substitute(values)
                out[prefix + name] = text.encode()
            else:
                out[prefix + entry.name] = entry.read_bytes()

    walk(resources.files("irqbypass").joinpath("template"), "")
    return out


def write(name: str, directory: str) -> tuple[str, list[str]]:
    """Write plugin ``name`` into ``directory``; its folder and files."""
    values = names(name)
    root = os.path.join(directory, values["dist"])
    # made if missing, but never through a link, nor in a directory another
    # user could change (who could swap the plugin's files for their own)
    dirfd = open_directory(directory, create=True)
    try:
        os.mkdir(values["dist"], dir_fd=dirfd)  # never into a folder that is already there
    except FileExistsError:
        raise IrqBypassError(
            f"{root} already exists; nothing was written (remove it or choose another "
            "directory with --directory)"
        ) from None
    finally:
        os.close(dirfd)
    written = []
    try:
        for path, data in _files(values).items():
            target = os.path.join(root, path)
            folder, leaf = os.path.split(target)
            folderfd = open_directory(folder, create=True)
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
                fd = open_at(folderfd, leaf, flags, 0o644, what="plugin file", shown=target)
            finally:
                os.close(folderfd)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            written.append(path)
    except BaseException:  # a full disk, Ctrl-C: no half-written plugin stays (ours: made above)
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root, written


def cmd_new_plugin(args: argparse.Namespace) -> int:
    root, written = write(args.name, args.directory)
    print(f"wrote {root}: the producer kind {args.name!r} to start from")
    for path in written:
        print(f"  {path}")
    print(f"next: cd {root} && pip install -e '.[test]' && pytest")
    return 0
