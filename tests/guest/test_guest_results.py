"""How host tests report what ran in the guest: junit parsing, node ids, and
the skip (with the command that sets it up) when the guest cannot boot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import boot
import guest_results
import pytest
from guest_results import ROOT, guest_nodeid, junit_key, parse_junit
from realdevice import wait_until


def test_junit_key_is_what_pytest_writes() -> None:
    assert junit_key("tests/plugins/vfio/test_real.py::test_x[keep]") == (
        "tests.plugins.vfio.test_real::test_x[keep]"
    )
    assert junit_key("tests/a/test_b.py::Cls::test_c") == "tests.a.test_b.Cls::test_c"


def test_parse_junit_reads_pass_fail_and_skip(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="t.m" name="ok" time="0.5"/>'
        '<testcase classname="t.m" name="bad" time="1"><failure message="assert 1 == 2">'
        "trace</failure></testcase>"
        '<testcase classname="t.m" name="skip"><skipped message="no edu"/></testcase>'
        "</testsuite></testsuites>"
    )
    got = parse_junit(junit)
    assert got["t.m::ok"].outcome == "passed" and got["t.m::ok"].duration == 0.5
    assert got["t.m::bad"].outcome == "failed" and "assert 1 == 2\ntrace" in got["t.m::bad"].text
    assert got["t.m::skip"].outcome == "skipped" and got["t.m::skip"].text == "no edu"


def test_a_guest_that_cannot_boot_skips_its_tests_with_the_reason() -> None:
    env = dict(os.environ, IRQBYPASS_GUEST="off")
    env.pop("IRQBYPASS_TEST_VFIO_DEVICE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q",
         "tests/plugins/vfio/test_real.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed, 8 skipped" in proc.stdout  # the host's own, then the guests' (2 kernels)
    for name in ("vfio-6.1", "vfio-6.12"):
        assert f"in the {name} guest: IRQBYPASS_GUEST=off: the test guest is not booted" in (
            proc.stdout
        )


def test_a_guest_test_is_collected_once_per_kernel_that_runs_its_family() -> None:
    """vfio runs on 6.1 and 6.12, vdpa on 6.1: the host's ids name the kernel."""
    env = dict(os.environ, IRQBYPASS_GUEST="off")
    env.pop("IRQBYPASS_TEST_VFIO_DEVICE", None)
    env.pop("IRQBYPASS_TEST_VDPA_DEVICE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
         "tests/plugins/vfio/test_real.py", "tests/plugins/vdpa/test_real.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    ids = proc.stdout.split()
    vfio = [i for i in ids if i.startswith("tests/plugins/vfio/test_real.py::test_real_")]
    on_612 = [i for i in vfio if "[linux-6.12" in i]
    on_61 = [i for i in vfio if "[linux-6.1-" in i or "[linux-6.1]" in i]
    assert on_612 and len(on_612) == len(on_61) and len(vfio) == 2 * len(on_61), vfio
    vdpa = [i for i in ids if i.startswith("tests/plugins/vdpa/test_real.py::") and "linux" in i]
    assert vdpa and all("[linux-6.1" in i and "6.12" not in i for i in vdpa), vdpa


def test_the_guest_calls_a_host_item_by_its_own_id() -> None:
    """The guest collects a test once, without the kernel parameter."""
    path = "tests/plugins/vfio/test_real.py"
    assert guest_nodeid(f"{path}::test_x[linux-6.12]", "6.12") == f"{path}::test_x"
    assert guest_nodeid(f"{path}::test_x[linux-6.1-keep]", "6.1") == f"{path}::test_x[keep]"
    assert guest_nodeid(f"{path}::test_x[keep-linux-6.1]", "6.1") == f"{path}::test_x[keep]"
    assert guest_nodeid(f"{path}::test_x[linux-6.1-6.12]", "6.1") == f"{path}::test_x[6.12]"
    assert guest_nodeid(f"{path}::test_x", "6.1") == f"{path}::test_x"


def test_the_boot_script_names_the_command_that_sets_it_up() -> None:
    env = dict(os.environ, PATH="/nonexistent")  # no qemu-system-x86_64 on this PATH
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/guest/boot.py"), "vfio", "--check"],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 77
    assert "qemu-system-x86_64 is missing: apt-get install qemu-system-x86" in proc.stdout
    assert "set up with: make guest-test" in proc.stdout


def test_a_boot_that_times_out_leaves_no_process_behind(tmp_path: Path) -> None:
    """vng starts virtme-run and qemu: a timeout (or Ctrl-C) kills them all."""
    pidfile = tmp_path / "child"
    argv = ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"]
    with open(tmp_path / "log", "wb") as log:
        got = boot.boot(argv, dict(os.environ), log, timeout=5)
    assert got == "timeout after 5 s"
    child = int(pidfile.read_text())

    def gone() -> bool:  # SIGKILL takes effect when the process next runs: wait for it
        try:
            with open(f"/proc/{child}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is gone
        except FileNotFoundError:
            return True

    assert wait_until(gone, timeout=30), f"pid {child} (sleep) is still running"


def test_one_boot_serves_several_families() -> None:
    assert boot.parse_families("vfio") == ["vfio"]
    assert boot.parse_families("vfio,vdpa,vfio") == ["vdpa", "vfio"]
    assert boot.parse_families("all") == sorted(boot.FAMILIES)
    assert boot.boot_name(["vfio", "vdpa"]) == "vdpa+vfio-6.1"
    with pytest.raises(ValueError, match="unknown family nvme: give kvm, vdpa, vfio"):
        boot.parse_families("vfio,nvme")


def test_the_boot_folders_docs_testing_names_are_those_scripts_guest_writes() -> None:
    """docs/testing.md's `scripts/guest ...` lines name the folder each boot
    writes under .cache/guest (before: `scripts/guest all` named vdpa+vfio-6.1,
    from before the kvm family joined the 6.1 guest)."""
    page = (ROOT / "docs" / "testing.md").read_text()
    lines = re.findall(r"^\$ scripts/guest (.+?)\s+#.*\.cache/guest/([\w+.-]+)/", page, re.M)
    assert len(lines) >= 4, "docs/testing.md lost its scripts/guest lines"
    for args, folder in lines:
        words = args.split()
        kernel = words[words.index("--kernel") + 1] if "--kernel" in words else boot.DEFAULT_KERNEL
        (families,) = [w for w in words if not w.startswith("-") and w != kernel]
        assert boot.boot_name(boot.parse_families(families, kernel), kernel) == folder, args


def test_each_kernel_boots_the_families_it_has() -> None:
    assert boot.parse_families("all", "6.12") == ["kvm", "vfio"]
    assert boot.boot_name(["vfio"], "6.12") == "vfio-6.12"
    with pytest.raises(ValueError, match=re.escape("the 6.12 guest does not run vdpa")):
        boot.parse_families("vdpa,vfio", "6.12")
    with pytest.raises(ValueError, match=re.escape("unknown guest kernel '5.10': give 6.1, 6.12")):
        boot.parse_kernel("5.10")
    assert boot.series_of("6.12.117+deb12-amd64") == "6.12"
    assert boot.series_of("6.1.0-57-amd64") == "6.1"


def test_the_guest_tests_run_after_the_host_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """They run last, so the host's own tests run while the guest boots; the
    order within each part stays as collected."""

    class Item:
        def __init__(self, name: str, family: str | None) -> None:
            self.name, self.family = name, family

        def get_closest_marker(self, name: str) -> pytest.Mark | None:
            return pytest.mark.guest(self.family).mark if self.family else None

    monkeypatch.delenv("IRQBYPASS_IN_GUEST", raising=False)
    for family in guest_results.HOST_DEVICE_ENV.values():
        monkeypatch.delenv(family, raising=False)
    items = [Item("a", "vfio"), Item("b", None), Item("c", "vdpa"), Item("d", None)]
    guest_results.pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert [item.name for item in items] == ["b", "d", "a", "c"]


def test_a_boot_the_session_outlives_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C or -x ends the session while the guest still boots: the boot
    script is interrupted (it then kills the guest it started), and the test
    still waiting for it fails with the reason instead of hanging."""
    script = tmp_path / "boot.py"
    script.write_text("import time\ntime.sleep(300)\n")
    monkeypatch.setattr(guest_results, "SCRIPT", script)
    monkeypatch.setattr(guest_results, "OUT", tmp_path)
    monkeypatch.delenv("IRQBYPASS_GUEST", raising=False)
    running = guest_results.Boot(["vfio"], ["tests/plugins/vfio/test_real.py::test_x"])
    assert running.proc is not None and running.proc.poll() is None
    running.stop()
    assert running.proc.returncode is not None
    assert running.wait().error == "the session ended before the guest did"


def test_a_test_can_narrow_the_kernels_it_runs_on() -> None:
    kernels_of = guest_results.kernels_of
    assert kernels_of(pytest.mark.guest("vfio").mark) == ["6.1", "6.12"]
    assert kernels_of(pytest.mark.guest("vfio", kernels=("6.12",)).mark) == ["6.12"]
    assert kernels_of(pytest.mark.guest("vdpa").mark) == ["6.1"]
    with pytest.raises(ValueError, match=re.escape("6.12 does not run vdpa (its kernels: 6.1)")):
        kernels_of(pytest.mark.guest("vdpa", kernels=("6.12",)).mark)
    # a chain across families runs on the kernels that run all of them
    assert kernels_of(pytest.mark.guest("kvm", "vfio").mark) == ["6.1", "6.12"]
    assert kernels_of(pytest.mark.guest("kvm", "vdpa").mark) == ["6.1"]
    with pytest.raises(ValueError, match=re.escape("6.12 does not run kvm+vdpa")):
        kernels_of(pytest.mark.guest("vdpa", "kvm", kernels=("6.12",)).mark)


def collect(*paths: str, **env: str) -> list[str]:
    """The node ids pytest collects on this host (no guest booted)."""
    environ = dict(os.environ, IRQBYPASS_GUEST="off")
    for name in guest_results.OPT_OUT.values():
        environ.pop(name, None)
    environ.update(env)
    for name in guest_results.HOST_DEVICE_ENV.values():
        environ.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *paths],
        cwd=ROOT, env=environ, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line for line in proc.stdout.split() if "::" in line]


def test_a_kvm_test_runs_in_both_guests_and_on_a_host_whose_kvm_works() -> None:
    """guest("kvm"): an item per guest kernel (the kvm family boots unless
    IRQBYPASS_GUEST_KVM=0), and ``[host]`` where the host's /dev/kvm works
    (ON_THE_HOST_TOO); told not to boot it and without a host KVM, one item
    that skips saying how."""
    test = "tests/plugins/kvm/test_delivery.py::test_mock_to_guest_through_the_manager_exactly"
    host = [f"{test}[host]"] if guest_results._host_kvm_reason() is None else []
    on = collect("tests/plugins/kvm/test_delivery.py")
    assert [i for i in on if i.startswith(test)] == [
        *host,
        f"{test}[linux-6.1]",
        f"{test}[linux-6.12]",
    ]
    off = collect("tests/plugins/kvm/test_delivery.py", IRQBYPASS_GUEST_KVM="0")
    assert [i for i in off if i.startswith(test)] == (host or [f"{test}[off]"])
    chain = "tests/plugins/vfio/test_real_kvm.py::test_nothing_arrives_after_close"
    assert [i for i in collect("tests/plugins/vfio/test_real_kvm.py", IRQBYPASS_GUEST_KVM="0")
            if i.startswith(chain)] == [f"{chain}[off]"]  # fmt: skip
    assert [i for i in collect("tests/plugins/vfio/test_real_kvm.py")
            if i.startswith(chain)] == [f"{chain}[linux-6.1]", f"{chain}[linux-6.12]"]  # fmt: skip


def test_only_families_on_the_host_too_get_a_host_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(guest_results.ON_THE_HOST_TOO, "kvm", lambda: None)
    guest_results.host_too.cache_clear()
    try:
        assert guest_results.host_too(("kvm",))
        assert not guest_results.host_too(("kvm", "vfio"))  # a chain needs the guest's devices
        assert not guest_results.host_too(("vfio",))
        monkeypatch.setitem(guest_results.ON_THE_HOST_TOO, "kvm", lambda: "no /dev/kvm")
        guest_results.host_too.cache_clear()
        assert not guest_results.host_too(("kvm",))
    finally:
        guest_results.host_too.cache_clear()


def test_in_a_guest_a_chain_skips_when_its_other_family_was_not_set_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Item:
        def __init__(self, *families: str) -> None:
            self.families = families
            self.marks: list[pytest.Mark] = []

        def get_closest_marker(self, name: str) -> pytest.Mark | None:
            return pytest.mark.guest(*self.families).mark if self.families else None

        def add_marker(self, mark: pytest.MarkDecorator) -> None:
            self.marks.append(mark.mark)

    monkeypatch.setenv("IRQBYPASS_IN_GUEST", "vfio")
    chain, alone, host = Item("kvm", "vfio"), Item("vfio"), Item()
    guest_results.pytest_collection_modifyitems([chain, alone, host])  # type: ignore[list-item]
    assert alone.marks == [] and host.marks == []
    assert [m.kwargs["reason"] for m in chain.marks] == [
        "this boot set up vfio, not kvm: scripts/guest kvm,vfio"
    ]
