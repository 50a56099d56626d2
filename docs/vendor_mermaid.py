"""Ship mermaid.js with the docs, so that the diagrams render offline (file:// too).

The built pages load ``_static/mermaid/mermaid.min.js`` (the self-contained
bundle of the npm package ``mermaid``, MIT-licensed) instead of a CDN. The bundle
and its licence are committed in ``docs/_vendor/mermaid/``, so the docs build
needs no network: conf.py calls ``ensure()``, which checks the committed file
against the pinned sha256 and fetches nothing.

To move to another release (a maintainer's step, with the npm registry
reachable): set VERSION and INTEGRITY (``npm view mermaid@VERSION
dist.integrity``), run ``python docs/vendor_mermaid.py --update`` (``npm pack``:
the tarball alone, no dependencies, no install scripts, checked against
INTEGRITY), set SHA256 to what it prints, and commit the folder.
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
#: sha256 of the committed package/dist/mermaid.min.js of VERSION
SHA256 = "198b19442f86f0b46a17e56d3abf744c3a28a3427e66fa8dada3b589a77babcc"
VENDOR = Path(__file__).resolve().parent / "_vendor" / "mermaid"
FILES = {"package/dist/mermaid.min.js": "mermaid.min.js", "package/LICENSE": "LICENSE"}


class VendorError(RuntimeError):
    """mermaid.js could not be fetched: the message says what to do."""


def ensure(vendor: Path = VENDOR) -> Path:
    """The directory holding the committed mermaid.min.js of VERSION, checked."""
    bundle = vendor / "mermaid.min.js"
    if not bundle.is_file() or not (vendor / "LICENSE").is_file():
        raise VendorError(
            f"{bundle} or its LICENSE is missing: it is committed with the docs; "
            "restore it (git checkout docs/_vendor) or run docs/vendor_mermaid.py --update"
        )
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    if digest != SHA256:
        raise VendorError(
            f"{bundle} has sha256 {digest}, expected {SHA256} (mermaid {VERSION}): "
            "restore it (git checkout docs/_vendor) or update VERSION, INTEGRITY and SHA256"
        )
    return vendor


def update(vendor: Path = VENDOR) -> str:
    """Fetch mermaid VERSION with npm into ``vendor``; return its bundle's sha256."""
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
    return hashlib.sha256((vendor / "mermaid.min.js").read_bytes()).hexdigest()


if __name__ == "__main__":
    try:
        print(update() if sys.argv[1:] == ["--update"] else ensure())
    except VendorError as error:
        sys.exit(f"vendor_mermaid: {error}")
