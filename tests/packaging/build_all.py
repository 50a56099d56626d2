"""Build sdists and wheels of several projects in one process, as
``python -m build --no-isolation`` would one by one: each project's sdist, then
its wheel from that sdist (so the sdist is proven complete). One process instead
of three per project: setuptools is imported once (the build costs a few
seconds instead of a minute on a loaded machine).

Usage: python build_all.py OUT PROJECT...  (prints each file built)
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable

from setuptools import build_meta

#: never part of an sdist, and costly to copy
_SKIP = shutil.ignore_patterns(
    ".git", ".venv*", ".cache", "_build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def _ignore(project: str) -> Callable[[str, list[str]], set[str]]:
    """What not to copy; at the top also the plugins (the core's sdist has none)
    and earlier build output."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set(_SKIP(folder, names))
        if os.path.samefile(folder, project):
            skipped |= {"plugins", "build", "dist"} & set(names)
        return skipped

    return ignore


def build(project: str, out: str) -> list[str]:
    """Built from a copy: setuptools writes NAME.egg-info beside the sources, and
    one on a test's path (docs/examples/ticker) would make its plugin installed."""
    with tempfile.TemporaryDirectory() as copy:
        src = os.path.join(copy, "src")
        os.chdir(shutil.copytree(project, src, symlinks=True, ignore=_ignore(project)))
        sdist = build_meta.build_sdist(out)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(os.path.join(out, sdist)) as archive:
            archive.extractall(tmp, filter="data")
        os.chdir(os.path.join(tmp, sdist.removesuffix(".tar.gz")))
        wheel = build_meta.build_wheel(out)
    return [sdist, wheel]


if __name__ == "__main__":
    out = os.path.abspath(sys.argv[1])
    for project in sys.argv[2:]:
        for name in build(os.path.abspath(project), out):
            print(name, file=sys.__stdout__)
