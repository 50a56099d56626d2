"""Sphinx configuration for the irqbypass documentation (MyST Markdown + autodoc)."""

from __future__ import annotations

import sys
from pathlib import Path

# Document the package from this checkout even when it is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

project = "irqbypass"
author = "the irqbypass authors"
copyright = "2025, the irqbypass authors"
release = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    # diagrams as text, drawn by mermaid.js in the reader's browser: nothing to
    # render (or fetch) at build time, so the build works offline
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
html_static_path = ["_static"]
html_css_files = ["wide.css"]
