#!/usr/bin/env python3
"""Boot the test guest for device families and run their real-device tests inside.

    scripts/guest [--kernel 6.1|6.12] kvm|vfio|vdpa|kvm,vfio|all [--check] [NODEID ...]
    scripts/guest [--kernel 6.1|6.12] vfio --exec 'COMMAND'   (a command instead of pytest)
    scripts/guest [--timeout SECONDS] ...   (a longer hang guard: a benchmark's long run)

One boot serves every family named: its QEMU devices and kernel arguments are
the union of theirs, and the guest sets up each family's devices before one
pytest runs all the tests (a TCG boot costs about a minute: one, not one a
family). A family runs on every guest kernel of :data:`KERNELS` that has it:
vfio on Debian's 6.1 and 6.12 (whose vfio-pci differ: dynamic MSI-X since 6.5),
kvm on both (kvm_amd on the SVM that TCG emulates for ``-cpu max``), vdpa on
6.1 only (its modules are built from linux-source-6.1).

The guest is Debian's kernel (linux-image-amd64, linux-image-6.12-amd64) under
qemu-system-x86 with TCG, booted by virtme-ng (.venv/bin/vng) on this machine's root
filesystem, shared read-only: the guest sees this checkout and its .venv, and runs
pytest on the real-device tests (all of the family's, or the NODEIDs given) against
a real vfio-pci device (QEMU's edu behind an emulated intel-iommu) or real
vhost-vdpa devices (vdpa_sim_blk, vdpa_sim_net; the modules are built once from
linux-source-6.1 into .cache/guest/, as Debian's kernel has no CONFIG_VDPA) and the
kernel's vhost-net (Debian's vhost_net.ko, with a tap), in the vdpa guest; and
a working /dev/kvm for the kvm family (kvm_amd, nested paging on TCG's SVM), in
which the kvm plugin's own tiny guest runs, nested.

Everything the guest prints goes to .cache/guest/<boot>/boot.log, where <boot>
is the families joined by "+" and the kernel series, as "vdpa+vfio-6.1";
pytest's junit XML to .cache/guest/<boot>/junit.xml. Exit status: pytest's, or 77 when
a part is missing (the reason on the last line, with the command that sets it
up), or 1 when the guest did not run the tests (the log's tail is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "guest"
VENV_BIN = ROOT / ".venv" / "bin"
SKIP = 77
SETUP = "make guest-test (as root, apt and PyPI reachable: it provisions, then boots)"

#: where each family's tests are: without node ids, a boot runs the tests marked
#: guest there (a boot of several families runs them all in one pytest)
FAMILIES: dict[str, list[str]] = {
    "vfio": ["tests/plugins/vfio"],
    # the vdpa family also loads vhost_net: the vhost tests ride on its set-up
    "vdpa": ["tests/plugins/vdpa", "tests/plugins/vhost"],
    # KVM inside the guest (kvm_amd on TCG's emulated SVM): the kvm plugin's tests
    # that need a kernel KVM, and the vhost-user chain (its back-end is a process);
    # the other chains are in the device families' folders
    "kvm": ["tests/plugins/kvm", "tests/plugins/vhost_user/test_kvm.py"],
}

#: QEMU options each family's devices need (a boot of several families gets them all)
QEMU_OPTS = {
    "vfio": "-machine q35 -device intel-iommu -device edu "
    # a group that is not viable: an edu and a virtio device behind one PCI bridge
    "-device pcie-pci-bridge,id=pbr "
    "-device edu,bus=pbr,addr=1 -device virtio-rng-pci,bus=pbr,addr=2 "
    # 5 MSI-X vectors (QEMU warns "nic has no peer": it needs none)
    "-device e1000e",
    "vdpa": "",
    # TCG's "max" CPU has AMD's SVM with nested paging: kvm_amd gives a /dev/kvm
    # (vng asks for it under --disable-kvm already; said here, as the kvm family needs it)
    "kvm": "-cpu max -accel tcg,thread=single",
}
APPEND = {"vfio": "intel_iommu=on modprobe.blacklist=e1000e", "vdpa": "", "kvm": ""}
#: on every boot: the kernel's check that the timer interrupt works through the
#: IO-APIC waits a few jiffies of TCG's time, which a loaded host does not give
#: it, and with interrupt remapping (vfio's intel_iommu=on) a failed check is a
#: panic ("timer doesn't work through Interrupt-remapped IO-APIC": the 6.12 guest
#: with -accel tcg,thread=single, load 6); QEMU's timer works, the check is moot
APPEND_ALWAYS = "no_timer_check"

#: the guest kernels (Debian's series) and the families each boots, the default first
KERNELS: dict[str, tuple[str, ...]] = {
    "6.1": ("kvm", "vdpa", "vfio"),
    "6.12": ("kvm", "vfio"),
}
#: the Debian package of each series' kernel image
KERNEL_PACKAGES = {"6.1": "linux-image-amd64", "6.12": "linux-image-6.12-amd64"}
DEFAULT_KERNEL = "6.1"

#: the vDPA sources built out of tree (module name -> path in linux-source-6.1)
VDPA_SOURCES = {
    "vdpa.c": "drivers/vdpa/vdpa.c",
    "vdpa_sim.c": "drivers/vdpa/vdpa_sim/vdpa_sim.c",
    "vdpa_sim.h": "drivers/vdpa/vdpa_sim/vdpa_sim.h",
    "vdpa_sim_blk.c": "drivers/vdpa/vdpa_sim/vdpa_sim_blk.c",
    "vdpa_sim_net.c": "drivers/vdpa/vdpa_sim/vdpa_sim_net.c",
    "vhost_vdpa_main.c": "drivers/vhost/vdpa.c",
    "vhost.h": "drivers/vhost/vhost.h",
    "vringh.c": "drivers/vhost/vringh.c",
}
VDPA_KBUILD = """\
obj-m := vringh.o vdpa.o vdpa_sim.o vdpa_sim_blk.o vdpa_sim_net.o vhost_vdpa.o
vhost_vdpa-y := vhost_vdpa_main.o
"""
#: in load order
VDPA_MODULES = ["vringh", "vdpa", "vdpa_sim", "vdpa_sim_blk", "vdpa_sim_net", "vhost_vdpa"]

BOOT_TIMEOUT_S = 900  # a hang guard for a TCG guest on a loaded 2-core host, not a goal


class Missing(Exception):
    """A part the guest needs is not here; the message says which and how to get it."""


def kernel(series: str = DEFAULT_KERNEL) -> tuple[str, Path]:
    """The newest Debian kernel image of ``series`` (6.1, 6.12) with its modules."""
    found = []
    for image in glob.glob(f"/boot/vmlinuz-{series}.*-amd64"):
        version = image.removeprefix("/boot/vmlinuz-")
        if Path("/lib/modules", version, "modules.dep").exists():
            found.append((tuple(int(n) for n in re.findall(r"\d+", version)), version))
    if not found:
        raise Missing(
            f"no Debian {series} kernel with modules (/boot/vmlinuz-{series}.*-amd64 and "
            f"/lib/modules/<version>): apt-get install {KERNEL_PACKAGES[series]}"
        )
    version = max(found)[1]
    return version, Path("/boot", f"vmlinuz-{version}")


def series_of(release: str) -> str:
    """The series of a kernel release: '6.12' for '6.12.117+deb12-amd64'."""
    match = re.match(r"(\d+\.\d+)", release)
    return match.group(1) if match else release


def check(family: str, series: str = DEFAULT_KERNEL) -> str:
    """The kernel version to boot; raises Missing when a part is absent."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise Missing("the test guest needs an x86_64 Linux host")
    if not shutil.which("qemu-system-x86_64"):
        raise Missing("qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
    if not (VENV_BIN / "vng").exists():
        raise Missing(f"virtme-ng is missing from {VENV_BIN}: make setup")
    if not Path("/bin/busybox").exists() or "static" not in _file_kind("/bin/busybox"):
        raise Missing("virtme-ng needs a static busybox: apt-get install busybox-static")
    version, image = kernel(series)
    if not os.access(image, os.R_OK):
        raise Missing(f"{image} is not readable by this user: run as root")
    if family == "vdpa":
        if not Path("/lib/modules", version, "build", "Makefile").exists():
            raise Missing(
                f"no kernel headers for {version}: apt-get install linux-headers-{version}"
            )
        if not Path("/usr/src/linux-source-6.1.tar.xz").exists():
            raise Missing(
                "no linux-source-6.1 (for the vdpa modules): apt-get install linux-source-6.1"
            )
        for tool in ("make", "gcc"):
            if not shutil.which(tool):
                raise Missing(
                    f"{tool} is missing (to build the vdpa modules): apt-get install {tool}"
                )
        if not shutil.which("vdpa"):
            raise Missing("the vdpa tool is missing: apt-get install iproute2")
    return version


def _file_kind(path: str) -> str:
    """'static' when ``path`` has no ELF interpreter (no PT_INTERP)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return "dynamic" if b"/lib64/ld-linux" in head or b"/lib/ld-linux" in head else "static"


def build_vdpa(version: str) -> Path:
    """The vdpa modules for ``version``, built once into .cache/guest/vdpa-<version>."""
    out = CACHE / f"vdpa-modules-{version}"
    if all((out / f"{m}.ko").exists() for m in VDPA_MODULES):
        return out
    print(f"guest: building the vdpa modules for {version} into {out} (once, ~30 s)", flush=True)
    work = CACHE / f"vdpa-build-{version}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = CACHE / "vdpa-build.log"
    prefix = "linux-source-6.1/"
    with open(log, "w") as logf, open(CACHE / "vdpa-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a boot beside this one may build them too
        if all((out / f"{m}.ko").exists() for m in VDPA_MODULES):
            return out
        step = subprocess.run(
            ["tar", "-xJf", "/usr/src/linux-source-6.1.tar.xz", "-C", str(work)]
            + [prefix + p for p in VDPA_SOURCES.values()],
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
        if step.returncode == 0:
            for name, rel in VDPA_SOURCES.items():
                shutil.copy(work / prefix / rel, work / name)
            (work / "Kbuild").write_text(VDPA_KBUILD)
            step = subprocess.run(
                ["make", "-C", f"/lib/modules/{version}/build", f"M={work}", "modules"],
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
    if step.returncode != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise RuntimeError(f"building the vdpa modules failed (log: {log})")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for m in VDPA_MODULES:
        shutil.copy(work / f"{m}.ko", tmp / f"{m}.ko")
    tmp.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def boot(
    argv: list[str], env: dict[str, str], log: IO[bytes], timeout: float = BOOT_TIMEOUT_S
) -> int | str:
    """Run vng to the end; on a timeout, an error or Ctrl-C, kill what it
    started (vng, virtme-run, qemu: one process group) before going on."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timeout after {timeout:g} s"
    finally:
        if proc.poll() is None or _group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def parse_families(arg: str, series: str = DEFAULT_KERNEL) -> list[str]:
    """``vfio``, ``vdpa,vfio`` or ``all`` (the kernel's families): one boot's, sorted."""
    names = sorted(KERNELS[series]) if arg == "all" else sorted(set(arg.split(",")))
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise ValueError(
            f"unknown family {','.join(unknown) or repr(arg)}: "
            f"give {', '.join(sorted(FAMILIES))}, a comma-separated list of them, or all"
        )
    elsewhere = [n for n in names if n not in KERNELS[series]]
    if elsewhere:
        raise ValueError(
            f"the {series} guest does not run {', '.join(elsewhere)} "
            f"(it runs {', '.join(KERNELS[series])}; see KERNELS in tests/guest/boot.py)"
        )
    return names


def boot_name(families: list[str], series: str = DEFAULT_KERNEL) -> str:
    """The folder of one boot under .cache/guest: the families joined by '+',
    then the kernel series ('vdpa+vfio-6.1')."""
    return "+".join(sorted(families)) + f"-{series}"


def parse_kernel(arg: str) -> str:
    if arg not in KERNELS:
        raise ValueError(f"unknown guest kernel {arg!r}: give {', '.join(KERNELS)}")
    return arg


def run(
    families: list[str],
    nodeids: list[str],
    series: str = DEFAULT_KERNEL,
    command: str = "",
    timeout: float = BOOT_TIMEOUT_S,
) -> int:
    CACHE.mkdir(parents=True, exist_ok=True)
    name = boot_name(families, series)
    with open(CACHE / f"{name}.lock", "w") as lock:
        # one boot of a name at a time per checkout (its output folder is
        # replaced); boots of other kernels run beside it
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _run(families, nodeids, series, command, timeout)


def _run(families: list[str], nodeids: list[str], series: str, command: str, timeout: float) -> int:
    version = ""
    for family in families:
        version = check(family, series)
    modules = build_vdpa(version) if "vdpa" in families else None
    name = boot_name(families, series)
    out = CACHE / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    default = ["-m", "guest", *(path for family in families for path in FAMILIES[family])]
    (out / "args").write_text("\n".join(nodeids or default) + "\n")
    if command:  # run instead of pytest, in the checkout, the devices set up
        (out / "exec").write_text(command + "\n")
    log = out / "boot.log"
    inside = Path(__file__).resolve().parent / "inside.sh"
    script = f"bash {inside} {','.join(families)} {out} {modules or '-'}"
    argv = [
        str(VENV_BIN / "vng"),
        "--run", f"/boot/vmlinuz-{version}",
        "--disable-kvm",  # this host's /dev/kvm (kvm_pvm) hangs a Linux guest: TCG
        "--disable-microvm",
        "--memory", "2G",
        "--cpus", "2",
        "--rwdir", str(out),
        "--cwd", str(ROOT),
        "--exec", script,
    ]  # fmt: skip
    qemu_opts = " ".join(QEMU_OPTS[f] for f in families if QEMU_OPTS[f])
    if qemu_opts:
        argv.append(f"--qemu-opts={qemu_opts}")
    if "kvm" in families:  # the kernel's console too, into boot.log: an oops of the
        argv.append("--verbose")  # test guest's kernel under nested KVM shows there
    append = " ".join([APPEND_ALWAYS, *(APPEND[f] for f in families if APPEND[f])])
    argv += ["--append", append]
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    print(f"guest: booting {name} ({version}, TCG); log: {log}", flush=True)
    started = time.monotonic()
    with open(log, "wb") as logf:
        vng_rc = boot(argv, env, logf, timeout)
    elapsed = time.monotonic() - started
    rc_file = out / "rc"
    if not rc_file.exists():
        tail = log.read_bytes()[-4000:].decode(errors="replace")
        print(f"{tail}\nguest: the {name} guest ran no tests (vng: {vng_rc}, {elapsed:.0f} s); "
              f"its log: {log}", file=sys.stderr)  # fmt: skip
        return 1
    rc = int(rc_file.read_text().strip() or 1)
    summary = (out / "summary").read_text().strip() if (out / "summary").exists() else ""
    what = "the command" if command else "pytest"
    print(f"guest: {name}: {what} exit {rc} in {elapsed:.0f} s (boot included): {summary}")
    return rc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "families", metavar="FAMILY[,FAMILY...]",
        help=f"{', '.join(sorted(FAMILIES))}, several joined by commas (one boot), or all",
    )  # fmt: skip
    parser.add_argument(
        "--kernel", default=DEFAULT_KERNEL, metavar="SERIES",
        help=f"the guest kernel: {', '.join(KERNELS)} (default {DEFAULT_KERNEL})",
    )  # fmt: skip
    parser.add_argument("--check", action="store_true", help="only say whether it can run")
    parser.add_argument(
        "--exec", default="", metavar="COMMAND", dest="command",
        help="run COMMAND (bash, in the checkout, the devices set up and named by the "
        "IRQBYPASS_TEST_* variables; $IRQBYPASS_GUEST_OUT is the boot's folder) instead of pytest",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=BOOT_TIMEOUT_S, metavar="SECONDS",
        help=f"stop the guest after SECONDS, boot included (default {BOOT_TIMEOUT_S:g})",
    )  # fmt: skip
    parser.add_argument("nodeids", nargs="*", help="in-guest pytest node ids (default: all)")
    args = parser.parse_args()
    try:
        series = parse_kernel(args.kernel)
        families = parse_families(args.families, series)
    except ValueError as exc:
        parser.error(str(exc))
    name = boot_name(families, series)
    try:
        for family in families:
            check(family, series)
        if args.check:
            print(f"guest: {name}: ready")
            return 0
        if args.command and args.nodeids:
            parser.error("give node ids or --exec, not both")
        return run(families, args.nodeids, series, args.command, args.timeout)
    except Missing as exc:
        print(f"guest: cannot boot the {name} guest: {exc} (set up with: {SETUP})")
        return SKIP
    except KeyboardInterrupt:
        print(f"guest: interrupted; the {name} guest was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
