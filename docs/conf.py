"""Sphinx configuration for the irqbypass documentation (MyST Markdown + autodoc)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vendor_mermaid

# Document the package from this checkout even when it is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

import irqbypass  # noqa: E402  (from this checkout: the path above)

project = "irqbypass"
author = "the irqbypass authors"
copyright = "2025-2026, the irqbypass authors"
release = irqbypass.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    # diagrams as text, drawn by mermaid.js in the reader's browser; the script is
    # shipped with the docs (see setup() below), so the pages work offline
    "sphinxcontrib.mermaid",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples/**/README.md", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

nitpicky = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

# furo: a wide content column, so the tables, the demo output and the kvm
# tables fit without clipping (wider still through docs/_static/wide.css)
html_theme = "furo"
html_title = "irqbypass"
# docs/_vendor holds mermaid/mermaid.min.js, fetched by vendor_mermaid.py
html_static_path = ["_static", "_vendor"]
html_css_files = ["wide.css"]

MERMAID_SCRIPTS = ["mermaid/mermaid.min.js", "mermaid-init.js"]


def _mermaid_scripts(
    app: Any, pagename: str, templatename: str, context: Any, doctree: Any
) -> None:
    """Load the shipped mermaid.js on the pages that have a diagram."""
    from sphinxcontrib.mermaid import mermaid

    if doctree is not None and doctree.next_node(mermaid) is not None:
        for script in MERMAID_SCRIPTS:
            app.add_js_file(script)


ROOT = Path(__file__).resolve().parents[1]
CHANGELOG_MARK = "<!-- towncrier release notes start -->"


def _unreleased(app: Any, docname: str, source: list[str]) -> None:
    """docs/changelog.md shows the fragments of changelog.d/ not yet released,
    as ``towncrier build --draft`` renders them (offline; nothing is written)."""
    if docname != "changelog":
        return
    import subprocess

    draft = subprocess.run(
        [sys.executable, "-m", "towncrier", "build", "--draft", "--version", release]
        + ["--date", "unreleased", "--dir", str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    entries = draft.split("What is seen below is what would be written.\n")[-1]  # older towncrier
    source[0] = source[0].replace(CHANGELOG_MARK, f"{CHANGELOG_MARK}\n{entries.strip()}\n", 1)


def _changelog_outdated(app: Any, env: Any, added: Any, changed: Any, removed: Any) -> list[str]:
    """Read the changelog at every build: its fragments are not its source file."""
    return ["changelog"]


def setup(app: Any) -> None:
    app.connect("source-read", _unreleased)
    app.connect("env-get-outdated", _changelog_outdated)
    # sphinxcontrib-mermaid imports mermaid's ES module from a CDN: nothing renders
    # offline, and a browser refuses ES modules from file:// anyway. Its directive
    # stays; its script is replaced by mermaid's classic bundle, shipped in _static.
    from sphinxcontrib import mermaid as extension

    for listener in list(app.events.listeners.get("html-page-context", [])):
        if listener.handler is extension.install_js:
            app.disconnect(listener.id)
    vendor_mermaid.ensure()
    app.connect("html-page-context", _mermaid_scripts)
