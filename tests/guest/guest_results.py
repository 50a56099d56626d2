"""Real-device tests on the host report what they did in the test guest.

A test marked ``@pytest.mark.guest("vfio")`` (or ``"vdpa"``) needs a real device
this host does not have. Run on the host, it does not run here: when collection
ends, one guest boot starts in the background (``scripts/guest``) for every
family a selected test needs, and runs all those tests inside against the real
drivers while the host's own tests run; the guest's tests are moved last, and
each then reports its own in-guest outcome (passed, failed with the guest's
traceback, or skipped with the guest's reason) and duration. Where the guest
cannot boot, the tests skip with the reason and the command that sets it up.

It stays out of the way inside the guest (``IRQBYPASS_IN_GUEST``), where a
device was named on the host (``IRQBYPASS_TEST_VFIO_DEVICE`` /
``IRQBYPASS_TEST_VDPA_DEVICE``), and with ``IRQBYPASS_GUEST=off``.

tests/conftest.py imports the hooks from here.
"""

from __future__ import annotations

import os
import signal
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
OUT = ROOT / ".cache" / "guest"
SKIP = 77
#: boot.py stops a guest after its own 900 s guard; this bounds boot.py itself
WAIT_TIMEOUT_S = 1200


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


class Boot:
    """The one guest boot of a pytest session, started in the background when
    collection ends (so the host's own tests run while the guest boots), for
    every family a selected test needs; ``wait`` is its result."""

    def __init__(self, families: list[str], nodeids: list[str]) -> None:
        self.families = families
        self.name = "+".join(families)
        self.count = len(nodeids)
        self.started = time.monotonic()
        self.run: GuestRun | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        if os.environ.get("IRQBYPASS_GUEST", "").lower() in ("0", "off", "no"):
            self.run = GuestRun({}, skip="IRQBYPASS_GUEST=off: the test guest is not booted")
            return
        OUT.mkdir(parents=True, exist_ok=True)
        # a file, not a pipe: nobody reads a pipe while the host's tests run
        self.output = open(OUT / f"{self.name}.out", "w+b")  # noqa: SIM115 (closed in wait/stop)
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), ",".join(families), *nodeids],
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def wait(self) -> GuestRun:
        if self.run is not None:
            return self.run
        assert self.proc is not None
        try:
            # boot.py has its own hang guard (BOOT_TIMEOUT_S); this one is for boot.py itself
            returncode = self.proc.wait(timeout=WAIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._terminate()
            returncode = -1
        self.output.seek(0)
        output = self.output.read().decode(errors="replace").strip()
        self.output.close()
        junit = OUT / self.name / "junit.xml"
        if returncode == SKIP:
            self.run = GuestRun({}, skip=output.splitlines()[-1])
        elif returncode == -1 or not junit.exists():
            what = "did not end in time" if returncode == -1 else f"exited {returncode}"
            command = f"scripts/guest {','.join(self.families)}"
            self.run = GuestRun({}, error=f"{command} {what}:\n{output}")
        else:
            self.run = GuestRun(parse_junit(junit))
        return self.run

    def stop(self) -> None:
        """Stop a boot still running (the session ended first: Ctrl-C, -x)."""
        if self.proc is not None and self.proc.poll() is None:
            self._terminate()
        if self.run is None and self.proc is not None:
            self.output.close()
            self.run = GuestRun({}, error="the session ended before the guest did")

    def _terminate(self) -> None:
        """SIGINT first: boot.py then kills the guest it started (vng, qemu)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_boot: Boot | None = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that run in the guest go last, so the host's own run while it boots."""
    items.sort(key=lambda item: family_of(item) is not None)  # stable: order kept within each


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the session's one guest boot, in the background, for every family a
    selected test needs (nothing to boot when none is selected)."""
    global _boot
    guest_items = [(family_of(i), i.nodeid) for i in session.items]
    families = sorted({family for family, _ in guest_items if family is not None})
    if not families or session.config.option.collectonly:
        return
    nodeids = [nodeid for family, nodeid in guest_items if family is not None]
    _boot = Boot(families, nodeids)
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None and _boot.proc is not None:
        terminal.write_line(
            f"guest: booting the {_boot.name} test guest in the background for "
            f"{len(nodeids)} tests (they run last; console: .cache/guest/{_boot.name}/boot.log)"
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _boot is not None:
        _boot.stop()


def result(item: pytest.Item, family: str) -> Outcome:
    assert _boot is not None and family in _boot.families, "the boot starts at collection"
    if _boot.run is None:
        terminal = item.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:  # the boot takes minutes: say so, then what it did
            terminal.write_line(
                f"guest: waiting for the {_boot.name} test guest "
                f"(started {time.monotonic() - _boot.started:.0f} s ago)"
            )
        run = _boot.wait()
        if terminal is not None:
            if run.skip:
                what = f"not booted ({run.skip})"
            elif run.error:
                what = "the guest ran no tests"
            else:
                what = f"{len(run.results)} tests ran"
            terminal.write_line(
                f"guest: {_boot.name}: {what} in {time.monotonic() - _boot.started:.0f} s "
                f"(console: .cache/guest/{_boot.name}/boot.log)"
            )
    run = _boot.wait()
    if run.skip:
        return Outcome("skipped", run.skip)
    if run.error:
        return Outcome("failed", run.error)
    got = run.results.get(junit_key(item.nodeid))
    if got is None:
        return Outcome("failed", f"the {_boot.name} guest ran no test {item.nodeid} (see its log)")
    return got


def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    family = family_of(item)
    if family is None:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    got = result(item, family)
    log = f".cache/guest/{_boot.name if _boot else family}/boot.log"
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
