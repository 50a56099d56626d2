"""Build sdists and wheels of several projects in one process, as
``python -m build --no-isolation`` would one by one: each project's sdist, then
its wheel from that sdist (so the sdist is proven complete). One process instead
of three per project: setuptools is imported once (the build costs a few
seconds instead of a minute on a loaded machine).

Usage: python build_all.py OUT PROJECT...  (prints each file built)
"""

from __future__ import annotations

import os
import sys
import tarfile
import tempfile

from setuptools import build_meta


def build(project: str, out: str) -> list[str]:
    os.chdir(project)
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
