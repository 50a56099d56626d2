"""Real-device tests on the host report what they did in the test guest.

A test marked ``@pytest.mark.guest("vfio")`` (or ``"vdpa"``) needs a real device
this host does not have. Run on the host, it does not run here: it is collected
once per guest kernel that runs its family (``boot.KERNELS``: vfio on 6.1 and
6.12, vdpa on 6.1; ``guest("vfio", kernels=("6.1",))`` narrows it), its id
naming the kernel (``test_x[linux-6.12]``). When
collection ends, one guest boot per kernel starts in the background
(``scripts/guest``) for every family a selected test needs there, and runs all
those tests inside against the real drivers while the host's own tests run; the
guest's tests are moved last, and each then reports its own in-guest outcome
(passed, failed with the guest's traceback, or skipped with the guest's reason)
and duration. Where a guest cannot boot, its tests skip with the reason and the
command that sets it up.

Inside a guest (and on a host that names its own device) a test is collected
once, and its ``guest_kernel`` fixture is the series of the kernel it runs on.

It stays out of the way inside the guest (``IRQBYPASS_IN_GUEST``), where a
device was named on the host (``IRQBYPASS_TEST_VFIO_DEVICE`` /
``IRQBYPASS_TEST_VDPA_DEVICE``), and with ``IRQBYPASS_GUEST=off``.

tests/conftest.py imports the hooks from here.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boot as boot_script
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


def _host_kvm_reason() -> str | None:
    import irqbypass_kvm

    return irqbypass_kvm.unavailable_reason()


#: families whose tests also run on the host itself, besides the guests, where
#: the host has the part; the probe says why not (None: it works). The kvm
#: plugin's tests run on a host whose /dev/kvm works as well as in the guests.
ON_THE_HOST_TOO: dict[str, Callable[[], str | None]] = {"kvm": _host_kvm_reason}
#: the guest_kernel parameter (and id) of such a test's item on the host itself
HOST = "host"
#: families a session can be told not to boot (``IRQBYPASS_GUEST_KVM=0``): KVM nested
#: in the TCG guests adds about two minutes to each boot, which a quick run may skip
OPT_OUT = {"kvm": "IRQBYPASS_GUEST_KVM"}
#: the guest_kernel parameter of a guest test whose family is not booted
OFF = "off"


def opted_out(families: tuple[str, ...]) -> list[str]:
    """The families among ``families`` this session was told not to boot."""
    return [
        f for f in families
        if f in OPT_OUT and os.environ.get(OPT_OUT[f], "").lower() in ("0", "off", "no")
    ]  # fmt: skip


def families_of_mark(marker: pytest.Mark) -> tuple[str, ...]:
    """``guest("vfio")`` -> ("vfio",); a chain across families names them all,
    ``guest("vfio", "kvm")``, and runs where every one of them is set up."""
    return tuple(sorted({str(arg) for arg in marker.args}))


def _runs_here(families: tuple[str, ...]) -> bool:
    """In the guest, or on a host that names its own device of every family:
    the test is collected once and runs where it is."""
    if os.environ.get("IRQBYPASS_IN_GUEST"):
        return True
    return all(f in HOST_DEVICE_ENV and os.environ.get(HOST_DEVICE_ENV[f]) for f in families)


@functools.cache
def host_too(families: tuple[str, ...]) -> bool:
    """Whether a test of ``families`` also runs on this host itself."""
    probes = [ON_THE_HOST_TOO.get(family) for family in families]
    return all(probe is not None for probe in probes) and all(
        probe() is None for probe in probes if probe is not None
    )


def guest_families(item: pytest.Item) -> tuple[str, ...] | None:
    """The families of the guest that runs ``item`` for this session, or None
    when it runs here (no guest marker, inside the guest, a device named on
    the host, or the host's own item of an ON_THE_HOST_TOO family)."""
    marker = item.get_closest_marker("guest")
    if marker is None:
        return None
    families = families_of_mark(marker)
    if _runs_here(families) or kernel_of(item) in (HOST, OFF):
        return None
    return families


def kernel_id(series: str) -> str:
    """The parameter id a guest test gets on the host for a kernel: linux-6.12."""
    return f"linux-{series}"


def guest_nodeid(nodeid: str, series: str) -> str:
    """What the guest, which collects a test once, calls the host's item of
    ``series``: ``t.py::test_x[keep-linux-6.12]`` -> ``t.py::test_x[keep]``."""
    mark = re.escape(kernel_id(series))
    head, bracket, params = nodeid.partition("[")
    if not bracket:
        return nodeid
    rest = re.sub(rf"(^{mark}-|-{mark}(?=[-\]])|^{mark}(?=\]))", "", params, count=1)
    return head if rest == "]" else f"{head}[{rest}"


def kernel_of(item: pytest.Item) -> str:
    """The guest kernel a host item runs on (its guest_kernel parameter)."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return str(params.get("guest_kernel", boot_script.DEFAULT_KERNEL))


def kernels_of(marker: pytest.Mark) -> list[str]:
    """The guest kernels a test marked ``guest(family, ...)`` runs on: every
    kernel that runs all its families, or those of them its ``kernels=`` names."""
    families = families_of_mark(marker)
    kernels = [k for k, has in boot_script.KERNELS.items() if set(families) <= set(has)]
    wanted = marker.kwargs.get("kernels")
    if wanted is None:
        return kernels
    unknown = [k for k in wanted if k not in kernels]
    if unknown:
        what = "+".join(families)
        raise ValueError(
            f"guest({', '.join(map(repr, families))}, kernels={tuple(wanted)!r}): "
            f"{', '.join(unknown)} does not run {what} (its kernels: {', '.join(kernels)})"
        )
    return [k for k in kernels if k in wanted]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A guest test on the host: one item per kernel that runs its families,
    and one that runs here (``[host]``) where ON_THE_HOST_TOO says the host can."""
    marker = metafunc.definition.get_closest_marker("guest")
    if marker is None or "guest_kernel" not in metafunc.fixturenames:
        return
    families = families_of_mark(marker)
    if _runs_here(families):
        return
    off = opted_out(families)
    kernels: list[str] = [] if off else kernels_of(marker)
    ids = [kernel_id(k) for k in kernels]
    if host_too(families):
        kernels, ids = [HOST, *kernels], [HOST, *ids]
    if kernels:
        metafunc.parametrize("guest_kernel", kernels, ids=ids)
        return
    reason = (
        f"the {', '.join(off)} family is not booted by this session "
        f"({' '.join(OPT_OUT[f] + '=' + os.environ[OPT_OUT[f]] for f in off)}): unset "
        f"{' '.join(OPT_OUT[f] for f in off)}, or run scripts/guest {','.join(families)}"
    )
    metafunc.parametrize(
        "guest_kernel", [pytest.param(OFF, marks=pytest.mark.skip(reason=reason))], ids=[OFF]
    )


@pytest.fixture(autouse=True)
def guest_kernel(request: pytest.FixtureRequest) -> str:
    """The series of the kernel a guest test runs on (6.1, 6.12): its parameter
    on the host, the running kernel's in the guest and for a ``[host]`` item."""
    param = getattr(request, "param", None)
    if param is not None and param != HOST:
        return str(param)
    return boot_script.series_of(os.uname().release)


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
    """One guest boot of a pytest session, for one kernel, started in the
    background when collection ends (so the host's own tests run while the
    guest boots), for every family a selected test needs on that kernel;
    ``wait`` is its result. ``nodeids`` are the guest's own."""

    def __init__(
        self, families: list[str], nodeids: list[str], series: str = boot_script.DEFAULT_KERNEL
    ) -> None:
        self.families = families
        self.series = series
        self.name = boot_script.boot_name(families, series)
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
            [sys.executable, str(SCRIPT), "--kernel", series, ",".join(families), *nodeids],
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def command(self) -> str:
        return f"scripts/guest --kernel {self.series} {','.join(self.families)}"

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
            self.run = GuestRun({}, error=f"{self.command} {what}:\n{output}")
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


#: the session's boots, by kernel series
_boots: dict[str, Boot] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that run in the guest go last, so the host's own run while it
    boots. Inside a guest, a test of a family this boot did not set up (a
    chain across families, in a boot of one of them) skips, naming the boot."""
    items.sort(key=lambda item: guest_families(item) is not None)  # stable: order kept within each
    here = os.environ.get("IRQBYPASS_IN_GUEST")
    if not here:
        return
    for item in items:
        marker = item.get_closest_marker("guest")
        missing = set(families_of_mark(marker)) - set(here.split(",")) if marker else set()
        if missing:
            needs = ",".join(sorted(set(here.split(",")) | missing))
            item.add_marker(
                pytest.mark.skip(
                    reason=f"this boot set up {here}, not {','.join(sorted(missing))}: "
                    f"scripts/guest {needs}"
                )
            )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the session's guest boots, in the background: one per kernel, for
    every family a selected test needs there (nothing to boot when none is
    selected). The boots of different kernels run side by side."""
    wanted: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for item in session.items:
        families = guest_families(item)
        if families is not None:
            series = kernel_of(item)
            wanted.setdefault(series, []).append((families, guest_nodeid(item.nodeid, series)))
    if not wanted or session.config.option.collectonly:
        return
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    for series, tests in sorted(wanted.items()):
        families = sorted({family for needs, _ in tests for family in needs})
        running = _boots[series] = Boot(families, [nodeid for _, nodeid in tests], series)
        if terminal is not None and running.proc is not None:
            terminal.write_line(
                f"guest: booting the {running.name} test guest in the background for "
                f"{len(tests)} tests (they run last; console: .cache/guest/{running.name}/boot.log)"
            )


def pytest_sessionfinish(session: pytest.Session) -> None:
    for running in _boots.values():
        running.stop()
    _boots.clear()


def result(item: pytest.Item, families: tuple[str, ...]) -> tuple[Boot, Outcome]:
    series = kernel_of(item)
    running = _boots.get(series)
    assert running is not None and set(families) <= set(running.families), (
        "the boots start at collection"
    )
    if running.run is None:
        terminal = item.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:  # the boot takes minutes: say so, then what it did
            terminal.write_line(
                f"guest: waiting for the {running.name} test guest "
                f"(started {time.monotonic() - running.started:.0f} s ago)"
            )
        run = running.wait()
        if terminal is not None:
            if run.skip:
                what = f"not booted ({run.skip})"
            elif run.error:
                what = "the guest ran no tests"
            else:
                what = f"{len(run.results)} tests ran"
            terminal.write_line(
                f"guest: {running.name}: {what} in {time.monotonic() - running.started:.0f} s "
                f"(console: .cache/guest/{running.name}/boot.log)"
            )
    run = running.wait()
    if run.skip:
        return running, Outcome("skipped", run.skip)
    if run.error:
        return running, Outcome("failed", run.error)
    got = run.results.get(junit_key(guest_nodeid(item.nodeid, series)))
    if got is None:
        return running, Outcome(
            "failed", f"the {running.name} guest ran no test {item.nodeid} (see its log)"
        )
    return running, got


def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    families = guest_families(item)
    if families is None:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    running, got = result(item, families)
    log = f".cache/guest/{running.name}/boot.log"
    longrepr: object = None
    if got.outcome == "failed":
        longrepr = f"{got.text}\n(ran in the {running.name} test guest; its console: {log})"
    elif got.outcome == "skipped":
        path, lineno, _ = item.location
        where = f"in the {running.name} guest"
        longrepr = (str(ROOT / path), (lineno or 0) + 1, f"{where}: {got.text}")
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
            user_properties=[("ran_in_guest", running.name)],
        )
        item.ihook.pytest_runtest_logreport(report=report)
    # what pytest's own protocol does last: tear down the collectors (module,
    # class) the next item does not share, so the next item's setup finds a clean stack
    item.session._setupstate.teardown_exact(nextitem)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
