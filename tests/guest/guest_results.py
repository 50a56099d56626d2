"""Real-device tests on the host report what they did in the test guest.

A test marked ``@pytest.mark.guest("vfio")`` (or ``"vdpa"``) needs a real device
this host does not have. Run on the host, it does not run here: the first such
test of a family boots that family's guest once (``scripts/guest``), which runs
every selected test of the family inside against the real driver; each host
test then reports its own in-guest outcome (passed, failed with the guest's
traceback, or skipped with the guest's reason) and duration. Where the guest
cannot boot, the tests skip with the reason and the command that sets it up.

It stays out of the way inside the guest (``IRQBYPASS_IN_GUEST``), where a
device was named on the host (``IRQBYPASS_TEST_VFIO_DEVICE`` /
``IRQBYPASS_TEST_VDPA_DEVICE``), and with ``IRQBYPASS_GUEST=off``.

The conftest.py of each family's test directory imports
:func:`pytest_runtest_protocol` from here, so the hook sees only that family's
tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
from _pytest.reports import TestReport

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "guest" / "boot.py"
HOST_DEVICE_ENV = {"vfio": "IRQBYPASS_TEST_VFIO_DEVICE", "vdpa": "IRQBYPASS_TEST_VDPA_DEVICE"}
SKIP = 77


@dataclass(frozen=True)
class Outcome:
    """One in-guest test's result."""

    outcome: str  # "passed", "failed" or "skipped"
    text: str = ""
    duration: float = 0.0


@dataclass
class GuestRun:
    """One boot of a family's guest: the result of every test it ran, or why
    none ran (``skip`` or ``error``)."""

    results: dict[str, Outcome]
    skip: str = ""
    error: str = ""


_runs: dict[str, GuestRun] = {}


def family_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("guest")
    if marker is None:
        return None
    family = str(marker.args[0])
    if os.environ.get("IRQBYPASS_IN_GUEST") or os.environ.get(HOST_DEVICE_ENV[family]):
        return None
    return family


def junit_key(nodeid: str) -> str:
    """What pytest's junit XML calls ``nodeid``: classname.name."""
    path, _, rest = nodeid.partition("::")
    parts = rest.split("::")
    classname = ".".join([path.removesuffix(".py").replace("/", "."), *parts[:-1]])
    return f"{classname}::{parts[-1]}"


def parse_junit(path: Path) -> dict[str, Outcome]:
    results: dict[str, Outcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        duration = float(case.get("time") or 0)
        outcome = Outcome("passed", "", duration)
        for child in case:
            if child.tag in ("failure", "error"):
                text = f"{child.get('message') or ''}\n{child.text or ''}".strip()
                outcome = Outcome("failed", f"[{child.tag} in the guest]\n{text}", duration)
                break
            if child.tag == "skipped":
                outcome = Outcome("skipped", child.get("message") or "skipped", duration)
        results[key] = outcome
    return results


def boot(family: str, nodeids: list[str]) -> GuestRun:
    if os.environ.get("IRQBYPASS_GUEST", "").lower() in ("0", "off", "no"):
        return GuestRun({}, skip="IRQBYPASS_GUEST=off: the test guest is not booted")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), family, *nodeids],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode == SKIP:
        return GuestRun({}, skip=output.splitlines()[-1])
    junit = ROOT / ".cache" / "guest" / family / "junit.xml"
    if not junit.exists():
        return GuestRun({}, error=f"scripts/guest {family} exited {proc.returncode}:\n{output}")
    return GuestRun(parse_junit(junit))


def result(item: pytest.Item, family: str) -> Outcome:
    if family not in _runs:
        nodeids = [i.nodeid for i in item.session.items if family_of(i) == family]
        terminal = item.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:  # a boot takes minutes: say so, then what it did
            terminal.write_line(f"guest: booting the {family} test guest for {len(nodeids)} tests")
        started = time.monotonic()
        _runs[family] = boot(family, nodeids)
        if terminal is not None:
            run = _runs[family]
            if run.skip:
                what = f"not booted ({run.skip})"
            elif run.error:
                what = "the guest ran no tests"
            else:
                what = f"{len(run.results)} tests ran"
            terminal.write_line(
                f"guest: {family}: {what} in {time.monotonic() - started:.0f} s "
                f"(console: .cache/guest/{family}/boot.log)"
            )
    run = _runs[family]
    if run.skip:
        return Outcome("skipped", run.skip)
    if run.error:
        return Outcome("failed", run.error)
    got = run.results.get(junit_key(item.nodeid))
    if got is None:
        return Outcome("failed", f"the {family} guest ran no test {item.nodeid} (see its log)")
    return got


def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    family = family_of(item)
    if family is None:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    got = result(item, family)
    log = f".cache/guest/{family}/boot.log"
    longrepr: object = None
    if got.outcome == "failed":
        longrepr = f"{got.text}\n(ran in the {family} test guest; its console: {log})"
    elif got.outcome == "skipped":
        path, lineno, _ = item.location
        longrepr = (str(ROOT / path), (lineno or 0) + 1, f"in the {family} guest: {got.text}")
    if got.outcome == "skipped":
        phases = [("setup", "skipped", longrepr)]  # a skip is reported at setup, as pytest does
    else:
        phases = [("setup", "passed", None), ("call", got.outcome, longrepr)]
        phases.append(("teardown", "passed", None))
    for when, outcome, repr_ in phases:
        report = TestReport(
            item.nodeid,
            item.location,
            dict.fromkeys(item.keywords, 1),
            outcome,  # type: ignore[arg-type]
            repr_,  # type: ignore[arg-type]
            when,  # type: ignore[arg-type]
            duration=got.duration if when == "call" else 0.0,
            user_properties=[("ran_in_guest", family)],
        )
        item.ihook.pytest_runtest_logreport(report=report)
    # what pytest's own protocol does last: tear down the collectors (module,
    # class) the next item does not share, so the next item's setup finds a clean stack
    item.session._setupstate.teardown_exact(nextitem)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
