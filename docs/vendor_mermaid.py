"""Ship mermaid.js with the docs, so that the diagrams render offline (file:// too).

The built pages load ``_static/mermaid/mermaid.min.js`` (the self-contained
bundle of the npm package ``mermaid``) instead of a CDN. It is not committed:
``ensure()`` takes the pinned release from the npm registry (``npm pack``, no
dependencies, no install scripts), checks it against the pinned integrity, and
keeps the bundle and its licence in ``docs/_vendor/mermaid/`` (git-ignored).
conf.py calls it, so ``make docs`` and a plain ``sphinx-build`` both do this.

Run alone: ``python docs/vendor_mermaid.py``.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "11.12.1"
#: the registry's dist.integrity of the tarball (npm view mermaid@VERSION dist.integrity)
INTEGRITY = (
    "sha512-UlIZrRariB11TY1RtTgUWp65tphtBv4CSq7vyS2ZZ2TgoMjs2nloq+wFqxiwcxlhHUvs7DPGg"
    "Mjs2aeQxz5h9g=="
)
VENDOR = Path(__file__).resolve().parent / "_vendor" / "mermaid"
FILES = {"package/dist/mermaid.min.js": "mermaid.min.js", "package/LICENSE": "LICENSE"}


class VendorError(RuntimeError):
    """mermaid.js could not be fetched: the message says what to do."""


def ensure(vendor: Path = VENDOR) -> Path:
    """The directory holding mermaid.min.js of VERSION, fetched once."""
    stamp = vendor / "VERSION"
    if (
        stamp.is_file()
        and stamp.read_text().strip() == VERSION
        and (vendor / "mermaid.min.js").is_file()
    ):
        return vendor
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError(
            "the docs ship mermaid.js from the npm package mermaid, and npm is not installed: "
            "install Node.js and npm (apt-get install npm), then build again"
        )
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [
                npm,
                "pack",
                f"mermaid@{VERSION}",
                "--silent",
                "--ignore-scripts",
                "--pack-destination",
                tmp,
            ],
            capture_output=True,
            text=True,
            timeout=600,  # a hang guard: the tarball is 14 MB
            check=False,
        )
        tarballs = list(Path(tmp).glob("mermaid-*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            raise VendorError(
                f"npm pack mermaid@{VERSION} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:] or 'no tarball'}; check the npm registry is reachable"
            )
        data = tarballs[0].read_bytes()
        digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        if digest != INTEGRITY:
            raise VendorError(f"mermaid-{VERSION}.tgz has integrity {digest}, expected {INTEGRITY}")
        staging = vendor.with_name(vendor.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(tarballs[0]) as archive:
            for member, name in FILES.items():
                source = archive.extractfile(member)
                if source is None:
                    raise VendorError(f"mermaid-{VERSION}.tgz has no {member}")
                (staging / name).write_bytes(source.read())
        (staging / "VERSION").write_text(VERSION + "\n")
        shutil.rmtree(vendor, ignore_errors=True)
        staging.rename(vendor)
    return vendor


if __name__ == "__main__":
    try:
        print(ensure())
    except VendorError as error:
        sys.exit(f"vendor_mermaid: {error}")
