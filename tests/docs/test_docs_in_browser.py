"""Every built page, in a real browser, at three widths: no text cut at the
right, no mermaid diagram left as raw text, nothing fetched from the network.

Regression (issue 22, item 18): at 1024 and 1280 px the text column was cut
at the right (docs/_static/wide.css defeated furo's responsive layout), and the
diagrams stayed raw text offline (mermaid.js came from a CDN). The pages are
built into a temporary directory and opened from file://, as a reader offline
would; Debian's chromium runs headless through its chromedriver (no browser
download). Set IRQBYPASS_DOCS_SCREENSHOTS=DIR to keep a screenshot of each
page at each width.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTHS = (1024, 1440, 1920)
HEIGHT = 900
SETUP = (
    "make provision (as root: apt-get install chromium chromium-driver, "
    "scripts/system-packages) and make setup (selenium)"
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

#: what the page itself reports: text boxes past the right edge of what shows
#: them (the viewport, or an ancestor that clips), diagrams not drawn, and
#: resources that did not come from the built files
CHECK = """
const width = document.documentElement.clientWidth;
const problems = [];
const name = (el) => {
  const text = (el.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 50);
  return `<${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}> "${text}"`;
};
const article = document.querySelector("article") || document.body;
const selector = "p, li, dt, dd, h1, h2, h3, h4, h5, h6, table, pre, div.highlight, svg, img, " +
  "blockquote, .admonition";
// what an element's ancestors let it show: null inside a block that scrolls
// (nothing is cut there), else the right edge of the innermost clip
const limits = new Map();
const limitOf = (el) => {
  if (!el) return width;
  if (limits.has(el)) return limits.get(el);
  const overflow = getComputedStyle(el).overflowX;
  let limit = limitOf(el.parentElement);
  if (overflow === "auto" || overflow === "scroll") limit = null;
  else if (limit !== null && (overflow === "hidden" || overflow === "clip")) {
    limit = Math.min(limit, el.getBoundingClientRect().right);
  }
  limits.set(el, limit);
  return limit;
};
for (const el of article.querySelectorAll(selector)) {
  const box = el.getBoundingClientRect();
  if (box.width === 0 || box.height === 0) continue;
  const limit = limitOf(el.parentElement);
  if (limit !== null && box.right > limit + 1) {
    problems.push(`${name(el)} ends at ${Math.round(box.right)} px, past ${Math.round(limit)} px`);
  }
}
if (document.documentElement.scrollWidth > width + 1) {
  problems.push(`the page is ${document.documentElement.scrollWidth} px wide in ${width} px`);
}
for (const pre of document.querySelectorAll("pre.mermaid")) {
  if (!pre.querySelector("svg")) problems.push(`mermaid diagram not drawn: ${name(pre)}`);
  else if (pre.querySelector('svg[aria-roledescription="error"]')) {
    problems.push(`mermaid diagram has an error: ${name(pre)}`);
  }
}
for (const entry of performance.getEntriesByType("resource")) {
  if (!entry.name.startsWith("file:")) problems.push(`fetched from the network: ${entry.name}`);
}
return problems;
"""

DRAWN = """
return [...document.querySelectorAll("pre.mermaid")].every((pre) => pre.querySelector("svg"));
"""


def pages(html: Path) -> list[Path]:
    return sorted(html.rglob("*.html"))


#: what the docs are built from: a build older than any of these is stale
DOCS_SOURCES = ("docs", "core/irqbypass", "plugins", "README.md")


def newest_source() -> float:
    newest = 0.0
    for top in DOCS_SOURCES:
        path = ROOT / top
        files = [path] if path.is_file() else path.rglob("*")
        for f in files:
            if "_build" in f.parts or "__pycache__" in f.parts or not f.is_file():
                continue
            newest = max(newest, f.stat().st_mtime)
    return newest


@pytest.fixture(scope="module")
def built_docs() -> Iterator[Path]:
    """The docs of this checkout: make docs' own build (make test builds the
    docs first, every page into a fresh folder) when it ended after the last
    change to any source; otherwise every page written afresh into a temporary
    directory (an incremental build keeps a stale viewcode page in place), from
    make docs' parsed sources where there are some. Without -W: that gate is
    make docs' own."""
    made = ROOT / "docs" / "_build" / "html"
    complete = made / ".complete"
    if complete.exists() and complete.stat().st_mtime > newest_source():
        yield made
        return
    with tempfile.TemporaryDirectory(prefix="irqbypass-docs-") as tmp:
        out = Path(tmp) / "html"
        doctrees = ROOT / "docs" / "_build" / "doctrees"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sphinx",
                "-q",
                "-b",
                "html",
                "-d",
                str(doctrees),
                "docs",
                str(out),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,  # a hang guard
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed; run {SETUP}")
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium missing; run {SETUP}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="irqbypass-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTHS[0]},{HEIGHT}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_width(driver: Any, width: int) -> None:
    """The viewport exactly ``width`` CSS pixels wide (a window size would
    include the browser's own frame)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )


def wait_drawn(driver: Any, timeout: float = 60.0) -> None:
    """Until every diagram has its svg (a hang guard, not a speed limit)."""
    deadline = time.monotonic() + timeout
    while not driver.execute_script(DRAWN) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_every_page_fits_and_draws_its_diagrams(built_docs: Path, browser: Any) -> None:
    shots = os.environ.get("IRQBYPASS_DOCS_SCREENSHOTS")
    problems: list[str] = []
    diagrams = 0
    for page in pages(built_docs):
        relative = page.relative_to(built_docs)
        set_width(browser, WIDTHS[0])
        browser.get(page.as_uri())
        wait_drawn(browser)
        diagrams += browser.execute_script('return document.querySelectorAll("pre.mermaid").length')
        for width in WIDTHS:
            set_width(browser, width)
            problems += [f"{relative} at {width} px: {p}" for p in browser.execute_script(CHECK)]
            if shots:
                target = Path(shots) / f"{str(relative).replace('/', '_')}-{width}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(target))
    assert not problems, "\n".join(problems)
    assert diagrams >= 1, "no page has a mermaid diagram: the check of drawing checked nothing"


def test_the_check_sees_a_cut_column_and_a_raw_diagram(tmp_path: Path, browser: Any) -> None:
    """The check itself fails on what it is for (a test that cannot fail is no test)."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body style='margin:0'><div style='overflow:hidden;width:800px'>"
        "<article><p style='width:1200px'>a paragraph too wide for its column</p>"
        "<pre class='mermaid'>flowchart LR\n  a --> b</pre></article></div></body></html>"
    )
    set_width(browser, 1024)
    browser.get(page.as_uri())
    problems = browser.execute_script(CHECK)
    assert any("a paragraph too wide" in p and "past 800 px" in p for p in problems), problems
    assert any(p.startswith("mermaid diagram not drawn") for p in problems), problems
