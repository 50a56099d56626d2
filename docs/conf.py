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

html_theme = "alabaster"
html_title = "irqbypass"
html_theme_options = {
    "description": "The Linux IRQ bypass manager for userspace VMMs",
    "fixed_sidebar": True,
}
