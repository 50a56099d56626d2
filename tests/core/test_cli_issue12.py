"""Regression tests of the command line and the plugin host: each defect a new
user found (issue 12, and items 8 and 11 of issue 13), and what such a user
expects (global options anywhere, --version, -p, check's pair table)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import re
import resource
import struct
import subprocess
import sys
import termios
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import irqbypass
import irqbypass.exceptions
import irqbypass.plugin
import irqbypass.reports
import pytest
from cli_support import EXE, ROOT, clean_env, run, topology
from irqbypass import cli
from irqbypass._plugins import ENV_DISABLE, ENV_LOAD
from irqbypass.cli import output, summary
from irqbypass.cli import run as run_command

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PAIR = (
    '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\noptions={{rate=0.0, count={count}}}\n'
    '[[consumers]]\nname="l"\nkind="logging"\ntoken="t"\n'
)


def kvm_reason() -> str | None:
    import irqbypass_kvm

    return irqbypass_kvm.unavailable_reason()


# -- 1: the progress line on an 80-column terminal --------------------------


def test_progress_line_stays_on_one_line_of_an_80_column_terminal(tmp_path: Path) -> None:
    tokens = [f"a-rather-long-token-name-{i}" for i in range(6)]
    text = "".join(
        f'[[producers]]\nname="p{i}"\nkind="mock"\ntoken="{t}"\n'
        f"options={{rate=100.0, count=60}}\n"
        f'[[consumers]]\nname="c{i}"\nkind="logging"\ntoken="{t}"\n'
        for i, t in enumerate(tokens)
    )
    path = topology(tmp_path, text)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        proc = subprocess.Popen(
            [*EXE, "run", path, "--duration", "30"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=clean_env(),
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=300) == 0
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    output = b"".join(chunks).decode()
    lines = output.replace("\r\n", "\n").split("\n")
    progress = [ln for ln in lines if "delivered/fired" in ln]
    assert len(progress) == 1, f"the progress line wrapped or repeated: {lines!r}"
    redraws = [part.replace("\x1b[K", "") for part in progress[0].split("\r") if part]
    assert len(redraws) > 1, "redrawn in place"
    assert all(len(r) <= 79 for r in redraws), [len(r) for r in redraws]
    assert redraws[-1].endswith("..."), "cut, and says so"


def test_fit_cuts_to_the_width_and_keeps_short_lines() -> None:
    assert output._fit("x" * 200, 80) == "x" * 76 + "..."
    assert output._fit("short", 80) == "short"


# -- 2: nothing to run ends at once ----------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",  # an empty file
        # every pair left out by optional
        '[[producers]]\nname="v"\nkind="no-such-kind"\ntoken="t"\noptional=true\n'
        '[[consumers]]\nname="l"\nkind="logging"\ntoken="t"\n',
    ],
    ids=["empty", "all-skipped"],
)
def test_a_topology_with_nothing_to_run_does_not_wait(
    tmp_path: Path,
    text: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_env: None,
) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError("waited although nothing can fire")

    monkeypatch.setattr(run_command.time, "sleep", no_sleep)
    assert cli.main(["run", topology(tmp_path, text), "--duration", "600"]) == 0
    assert "summary: nothing ran" in capsys.readouterr().out


# -- 3: check's counts ------------------------------------------------------


def test_check_counts_in_the_singular(tmp_path: Path) -> None:
    result = run("check", topology(tmp_path, PAIR.format(count=1)))
    assert result.returncode == 0, result.stderr
    assert ": OK: 1 producer, 1 consumer, 1 token" in result.stdout


# -- 4: a veto is blamed on the plugin -------------------------------------


class Veto:
    @irqbypass.plugin.hookimpl(wrapper=True)
    def irqbypass_add(self, endpoint: Any, partner: Any, side: str) -> Generator[None, None, None]:
        if side == "producer":
            raise PermissionError("policy forbids this pair")
        return (yield)


class Sink(irqbypass.Consumer):
    def add_producer(self, producer: irqbypass.Producer) -> None:
        pass

    def del_producer(self, producer: irqbypass.Producer) -> None:
        pass


class Device(irqbypass.Producer):
    def __init__(self, token: object) -> None:
        super().__init__(token=token, name="dev0")
        self.calls: list[str] = []

    def add_consumer(self, consumer: irqbypass.Consumer) -> None:
        self.calls.append("add_consumer")


def test_a_wrapper_veto_names_the_plugin_not_the_endpoint() -> None:
    host = irqbypass.PluginHost()
    host.register(Veto(), name="policy")
    manager = irqbypass.Manager(host)
    producer = Device(token="t")
    manager.register_producer(producer)
    with pytest.raises(irqbypass.exceptions.ConnectError) as info:
        manager.register_consumer(Sink(token="t", name="sink"))
    message = str(info.value)
    assert producer.calls == [], "add_consumer was never called"
    assert (
        "plugin 'policy' raised PermissionError: policy forbids this pair in its irqbypass_add"
        " hook around producer 'dev0'.add_consumer()"
    ) in message


def test_an_endpoint_that_raises_under_a_wrapper_is_still_blamed() -> None:
    class Passing:
        @irqbypass.plugin.hookimpl(wrapper=True)
        def irqbypass_add(
            self, endpoint: Any, partner: Any, side: str
        ) -> Generator[None, None, None]:
            return (yield)

    class Failing(Device):
        def add_consumer(self, consumer: irqbypass.Consumer) -> None:
            raise OSError(errno.EBUSY, "vector busy")

    host = irqbypass.PluginHost()
    host.register(Passing(), name="tracer")
    manager = irqbypass.Manager(host)
    manager.register_producer(Failing(token="t"))
    with pytest.raises(irqbypass.exceptions.ConnectError) as info:
        manager.register_consumer(Sink(token="t", name="sink"))
    assert "producer 'dev0'.add_consumer() raised OSError" in str(info.value)
    assert "tracer" not in str(info.value)


# -- 5: a misspelled hook is refused ----------------------------------------


class Typo:
    @irqbypass.plugin.hookimpl
    def irqbypass_stopp(self, endpoint: Any, side: str) -> None:
        pass


def test_a_misspelled_hook_is_refused_with_the_hooks_there_are() -> None:
    """Said as for a hook of another release (issue 30 item 2): no guess at a
    "did you mean", which misleads when the hook is a newer core's."""
    host = irqbypass.PluginHost()
    with pytest.raises(irqbypass.PluginError) as info:
        host.register(Typo(), name="typo")
    message = str(info.value)
    assert f"hook 'irqbypass_stopp', which irqbypass {irqbypass.__version__} does not have" in (
        message
    )
    assert "irqbypass_start, irqbypass_stop (" in message and "did you mean" not in message
    assert not host.pm.has_plugin("typo"), "not left half registered"


def test_an_optional_hook_of_another_project_is_accepted() -> None:
    class Other:
        @irqbypass.plugin.hookimpl(optionalhook=True)
        def irqbypass_future_hook(self) -> None:
            pass

    assert irqbypass.PluginHost().register(Other(), name="other") == "other"


def test_a_misspelled_hook_from_p_fails_that_plugin_only(tmp_path: Path) -> None:
    (tmp_path / "typo_plugin.py").write_text(
        "import irqbypass.plugin\n"
        "@irqbypass.plugin.hookimpl\ndef irqbypass_stopp(endpoint, side): pass\n"
    )
    env = {"PYTHONPATH": str(tmp_path)}
    result = run("-p", "typo_plugin", "plugins", env=env)
    assert result.returncode == 0, result.stderr
    assert "plugin 'typo_plugin' (no distribution) failed to load" in result.stderr
    assert "hook 'irqbypass_stopp', which irqbypass" in result.stderr
    assert "mock (irqbypass-mock" in result.stdout, "the others are loaded"
    strict = run("--strict", "-p", "typo_plugin", "plugins", env=env)
    assert strict.returncode == 1 and "irqbypass_stopp" in strict.stderr


def test_p_loads_a_module_without_packaging_it(tmp_path: Path) -> None:
    (tmp_path / "extra_kinds.py").write_text(
        "import irqbypass\n"
        "class Sink(irqbypass.Consumer):\n"
        "    def add_producer(self, p): pass\n"
        "    def del_producer(self, p): pass\n"
        "@irqbypass.plugin.hookimpl\n"
        "def irqbypass_register_kinds(register):\n"
        "    register.consumer('extra', lambda spec: Sink(token=spec.token, name=spec.name))\n"
    )
    text = PAIR.format(count=3).replace('kind="logging"', 'kind="extra"')
    result = run("check", topology(tmp_path, text), "-p", "extra_kinds", env={
        "PYTHONPATH": str(tmp_path)
    })  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "l (extra)" in result.stdout


# -- 6 and 7: what was left out is said ------------------------------------


def test_plugins_filtered_by_the_environment_are_not_called_missing() -> None:
    result = run("plugins", env={ENV_DISABLE: "1"})
    assert result.returncode == 0
    assert "no plugins installed" not in result.stdout
    assert "no plugins loaded: all of them were left out (below)" in result.stdout
    assert f"mock (irqbypass-mock {irqbypass_version('irqbypass-mock')}): {ENV_DISABLE} is set" in (
        result.stdout
    )
    loaded = run("plugins", env={ENV_LOAD: "irqbypass-logging"})
    assert "mock (irqbypass-mock" in loaded.stdout and f"not in {ENV_LOAD}" in loaded.stdout


def irqbypass_version(dist: str) -> str:
    from importlib import metadata

    return metadata.version(dist)


def test_a_kind_of_a_filtered_plugin_says_it_was_filtered(tmp_path: Path) -> None:
    result = run(
        "check", topology(tmp_path, PAIR.format(count=1)), env={ENV_LOAD: "irqbypass-mock"}
    )
    assert result.returncode == 1
    assert "no plugin provides consumer kind 'logging'" in result.stderr
    assert "is the plugin installed?" not in result.stderr
    assert f"logging (irqbypass-logging): not in {ENV_LOAD} (irqbypass-mock)" in result.stderr


def test_a_load_list_entry_that_matches_nothing_is_named(tmp_path: Path) -> None:
    result = run(
        "check",
        topology(tmp_path, PAIR.format(count=1)),
        env={ENV_LOAD: "irqbypass-mock,irqbypass-loging"},
    )
    assert (
        f"{ENV_LOAD} names 'irqbypass-loging', which is no installed plugin or distribution"
        in result.stderr
    )


# -- 8: -v and -vv ----------------------------------------------------------


def test_verbose_logs_the_steps_and_a_debug_logging_consumer(tmp_path: Path) -> None:
    path = topology(tmp_path, PAIR.format(count=2))
    debug = tmp_path / "debug.toml"
    debug.write_text(
        '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\noptions={rate=0.0, count=2}\n'
        '[[consumers]]\nname="l"\nkind="logging"\ntoken="t"\noptions={level="DEBUG"}\n'
    )
    quiet = run("run", str(debug))
    assert "irqbypass.logging.l" not in quiet.stderr
    verbose = run("run", str(debug), "-v")  # -v after the command
    assert verbose.returncode == 0, verbose.stderr
    assert "irqbypass.plugins: loaded plugin mock" in verbose.stderr
    assert "irqbypass.cli: consumer 'l' (kind logging): opened, registered" in verbose.stderr
    assert "irqbypass.cli: tearing down" in verbose.stderr
    assert "irqbypass.logging.l: l add_producer" in verbose.stderr
    assert "irqbypass.trace" not in verbose.stderr
    traced = run("-vv", "run", path)
    assert "irqbypass.trace: producer 'm': stop" in traced.stderr
    assert "irqbypass.trace: consumer 'l': add 'm'" in traced.stderr


# -- 9: coalescing is not loss ---------------------------------------------


class _Counted(irqbypass.Consumer):
    """A consumer whose stats are given, merging or not."""

    def __init__(self, stats: dict[str, int], coalesces: bool) -> None:
        super().__init__(token="t", name="c")
        self._stats = stats
        self.coalesces = coalesces

    def add_producer(self, producer: irqbypass.Producer) -> None:
        pass

    def del_producer(self, producer: irqbypass.Producer) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return self._stats


class _Fired(irqbypass.Producer):
    def __init__(self, fired: int) -> None:
        super().__init__(token="t", name="p")
        self.fired = fired

    def stats(self) -> dict[str, int]:
        return {"fired": self.fired}

    @property
    def finished(self) -> bool:
        return True


def _row(
    coalesces: bool, settled: bool, queued: int = 0, **stats: int
) -> Iterator[irqbypass.reports.PairStatus]:
    from irqbypass._topology import Placed

    config = irqbypass.parse_config(
        '[[producers]]\nname="p"\nkind="x"\ntoken="t"\n'
        '[[consumers]]\nname="c"\nkind="y"\ntoken="t"\n'
    )
    counted = {"delivered": stats["delivered"]}
    if "c" in stats:
        counted["coalesced"] = stats["c"]
    with irqbypass.Eventfd() as eventfd:
        if queued:
            eventfd.write(queued)
        yield irqbypass.reports.PairStatus(
            "t",
            Placed(config.producers[0], _Fired(stats["fired"])),
            Placed(config.consumers[0], _Counted(counted, coalesces)),
            True,
            settled,
            eventfd,
        )


def test_a_coalescing_consumer_s_settled_shortfall_is_coalesced_not_lost() -> None:
    for row in _row(True, True, fired=400, delivered=390):
        assert (row.coalesced, row.queued, row.lost) == (10, 0, 0)
    for queued in _row(True, True, queued=4, fired=400, delivered=390):
        assert (queued.coalesced, queued.lost) == (6, 0)
    for plain in _row(False, True, fired=400, delivered=390):
        assert (plain.coalesced, plain.lost) == (None, 10), "a reader that merges nothing lost them"
    for reported in _row(False, True, fired=400, delivered=390, c=7):
        assert (reported.coalesced, reported.lost) == (7, 3), "the consumer's own count wins"


@pytest.mark.kvm
def test_kvm_edges_merged_on_the_pic_line_are_coalesced_and_end_the_run_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = kvm_reason()
    if reason is not None:
        pytest.skip(f"{reason} (run where /dev/kvm works: modprobe kvm_intel or kvm_amd)")
    path = topology(
        tmp_path,
        '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\nirq=5\n'
        "options={rate=0.0, count=3000, delay=0.2}\n"
        '[[consumers]]\nname="g"\nkind="kvm-irqfd"\ntoken="t"\n'
        'options={vm="guest", gsi=5}\n',
    )
    # an hour of settling: the run must end because every interrupt is accounted for
    monkeypatch.setattr(run_command, "SETTLE_SECONDS", 3600.0)
    assert cli.main(["run", path, "--json", "--duration", "120"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["pairs"]
    assert row["fired"] == 3000 and row["lost"] == 0
    assert row["delivered"] + row["coalesced"] + row["queued"] == 3000
    assert row["coalesced"] > 0, "flat out, edges on the PIC line merge"


# -- 10: the kvm consumer's device path ------------------------------------


@pytest.mark.kvm
def test_a_wrong_kvm_device_path_is_named_and_optional_skips_it(tmp_path: Path) -> None:
    reason = kvm_reason()
    if reason is not None:
        pytest.skip(f"{reason} (run where /dev/kvm works: modprobe kvm_intel or kvm_amd)")
    text = (
        '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\noptions={count=1}\n'
        '[[consumers]]\nname="g"\nkind="kvm-irqfd"\ntoken="t"\noptional=true\n'
        'options={vm="guest", gsi=5, device="/dev/nokvm"}\n'
    )
    result = run("check", topology(tmp_path, text))
    assert result.returncode == 0, result.stderr
    assert "would be skipped" in result.stdout
    assert "/dev/nokvm does not exist; check the consumer's device option" in result.stdout
    assert "KVM is not available on this host" not in result.stdout
    ran = run("run", topology(tmp_path, text), "--json")
    assert ran.returncode == 0, ran.stderr
    assert [s["token"] for s in json.loads(ran.stdout)["skipped"]] == ["t"]


# -- 12: set-up prints no build warnings -----------------------------------


@pytest.mark.parametrize(
    "pyproject", [ROOT / "pyproject.toml", *sorted(ROOT.glob("plugins/*/pyproject.toml"))], ids=str
)
def test_every_distribution_builds_without_setuptools_warnings(pyproject: Path) -> None:
    project = tomllib.loads(pyproject.read_text())["project"]
    readme = project.get("readme")
    if readme is not None:
        assert (pyproject.parent / readme).is_file(), f"{pyproject}: readme {readme} is missing"
    assert not isinstance(project.get("license"), dict), "a license table is deprecated"


# -- 13: option names in the docs are code, never en dashes ----------------


def test_no_option_name_in_the_docs_is_left_to_smart_quotes() -> None:
    """`--json` outside a code span is rendered as an en dash; a nested backtick
    ends a code span early and leaves the rest as text."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark")
    problems = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for token in md.parse(page.read_text()):
            for child in token.children or []:
                if child.type == "text" and re.search(r"(?<![-\w])--[a-z]", child.content):
                    problems.append(f"{page.name}: {child.content.strip()[:60]!r}")
    assert not problems


# -- issue 13 item 8: running out of fds -----------------------------------


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def _many_pairs(tmp_path: Path, n: int = 100) -> str:
    return topology(
        tmp_path,
        "".join(
            f'[[producers]]\nname="p{i}"\nkind="mock"\ntoken="t{i}"\noptions={{count=1}}\n'
            f'[[consumers]]\nname="c{i}"\nkind="logging"\ntoken="t{i}"\n'
            for i in range(n)
        ),
    )


def test_check_opens_no_eventfd_per_token_and_passes_under_ulimit_64(tmp_path: Path) -> None:
    result = subprocess.run(
        [*EXE, "check", _many_pairs(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        preexec_fn=_limit_fds,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OK: 100 producers, 100 consumers, 100 tokens" in result.stdout


def test_running_out_of_fds_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [*EXE, "run", _many_pairs(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        preexec_fn=_limit_fds,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "out of file descriptors" in result.stderr and "`ulimit -n` is 64" in result.stderr


@pytest.mark.usefixtures("no_fd_leak")
def test_check_in_process_opens_one_fd_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env: None
) -> None:
    opened = []
    real = irqbypass.Eventfd.__init__

    def counting(self: irqbypass.Eventfd, *args: Any, **kwargs: Any) -> None:
        opened.append(1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(irqbypass.Eventfd, "__init__", counting)
    assert cli.main(["check", _many_pairs(tmp_path, 20)]) == 0
    assert len(opened) == 1


# -- issue 13 item 11: a row from one snapshot -----------------------------


class Racing(irqbypass.Producer):
    """Fires between any two reads: every stats() call sees more."""

    def __init__(self, token: object, done: bool = False) -> None:
        super().__init__(token=token, name="racing")
        self.reads = 0
        self.done = done

    def stats(self) -> Mapping[str, int]:
        self.reads += 1
        return {"fired": 100 * self.reads}

    @property
    def finished(self) -> bool:
        return self.done


class Counting(Sink):
    def __init__(self, token: object, producer: Racing) -> None:
        super().__init__(token=token, name="counting")
        self.source = producer
        self.reads = 0

    def stats(self) -> Mapping[str, int]:
        self.reads += 1
        return {"delivered": 100 * self.source.reads}  # all that was fired so far


@pytest.mark.parametrize("done", [True, False])
def test_each_summary_row_comes_from_one_read_of_each_end(done: bool) -> None:
    from irqbypass._topology import Placed

    config = irqbypass.parse_config(
        '[[producers]]\nname="racing"\nkind="x"\ntoken="t"\n'
        '[[consumers]]\nname="counting"\nkind="y"\ntoken="t"\n'
    )
    producer = Racing("t", done)
    consumer = Counting("t", producer)

    class FakeTopology:
        tokens: ClassVar[dict[str, object]] = {}
        finished = True

        def status(self, settled: bool | None = None) -> list[irqbypass.reports.PairStatus]:
            return [
                irqbypass.reports.PairStatus(
                    "t",
                    Placed(config.producers[0], producer),
                    Placed(config.consumers[0], consumer),
                    True,
                )
            ]

    (row,) = summary.snapshot(FakeTopology())  # type: ignore[arg-type]
    doc = row.as_dict()
    assert (producer.reads, consumer.reads) == (1, 1)
    assert doc["fired"] == doc["producer_stats"]["fired"]
    assert doc["delivered"] == doc["consumer_stats"]["delivered"]
    assert doc["delivered"] <= doc["fired"], "the consumer is read first"
    if done:
        assert doc["lost"] == doc["fired"] - doc["delivered"]
    else:  # still firing: what fired between the two reads is in flight (issue 16)
        assert doc["lost"] is None


# -- what users of pytest and llm expect -----------------------------------


def test_version_and_python_dash_m() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"irqbypass {irqbypass_version('irqbypass')}"


def test_global_options_after_the_command(tmp_path: Path) -> None:
    path = topology(tmp_path, PAIR.format(count=1))
    result = run("check", path, "--block", "irqbypass-logging")
    assert result.returncode == 1 and "no plugin provides consumer kind 'logging'" in (
        result.stderr
    )
    both = run("--block", "mock", "plugins", "--json", "--block", "logging")
    names = {p["name"] for p in json.loads(both.stdout)["plugins"]}
    assert not names & {"mock", "logging"}, "both places add up"


def test_run_starts_with_a_header_of_the_loaded_plugins(tmp_path: Path) -> None:
    result = run("run", topology(tmp_path, PAIR.format(count=3)), env={
        ENV_LOAD: "irqbypass-mock,irqbypass-logging"
    })  # fmt: skip
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    version = irqbypass_version("irqbypass-mock")
    assert first == (
        f"irqbypass {irqbypass_version('irqbypass')}; plugins: logging {version}, mock {version}"
    )


def test_check_reads_standard_input_and_prints_json(tmp_path: Path) -> None:
    result = run("check", "-", "--json", input=PAIR.format(count=1))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["file"] == "<stdin>" and doc["ok"] is True and doc["warnings"] == []
    assert doc["pairs"] == [
        {
            "token": "t",
            "producer": "m",
            "producer_kind": "mock",
            "consumer": "l",
            "consumer_kind": "logging",
            "state": "pairs (bypass)",
        }
    ]


def test_check_warns_of_a_one_ended_token_with_the_near_identical_one(tmp_path: Path) -> None:
    text = (
        '[[producers]]\nname="dev0"\nkind="mock"\ntoken="vector0"\n'
        '[[consumers]]\nname="sink0"\nkind="logging"\ntoken="vectr0"\n'
    )
    path = topology(tmp_path, text)
    result = run("check", path)
    assert result.returncode == 0
    assert (
        "producers[0]: token 'vector0' has only a producer ('dev0'): no consumer pairs with it;"
        " did you mean token 'vectr0' of consumer 'sink0'?"
    ) in result.stderr
    assert "producer only: nothing pairs with it" in result.stdout
    strict = run("--strict", "check", path)
    assert strict.returncode == 1 and "2 warnings (--strict)" in strict.stderr


def test_check_warns_of_a_kind_typo_that_optional_would_hide(tmp_path: Path) -> None:
    text = (
        '[[producers]]\nname="m"\nkind="mock"\ntoken="t"\n'
        '[[consumers]]\nname="g"\nkind="kvm-irqdf"\ntoken="t"\noptional=true\n'
    )
    result = run("check", topology(tmp_path, text))
    assert result.returncode == 0
    assert "consumers[0].kind: 'kvm-irqdf' is no loaded kind; did you mean 'kvm-irqfd'?" in (
        result.stderr
    )


def test_plugins_shows_each_kind_s_availability_and_tracebacks_with_v(tmp_path: Path) -> None:
    (tmp_path / "broken_plugin.py").write_text("import no_such_module_here\n")
    env = {"PYTHONPATH": str(tmp_path)}
    result = run("plugins", "-p", "broken_plugin", env=env)
    assert result.returncode == 0
    assert re.search(r"producer\s+vfio\s+vfio\s+(yes|no: )", result.stdout)
    assert "module: irqbypass_mock" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    verbose = run("plugins", "-p", "broken_plugin", "-v", env=env)
    assert "Traceback (most recent call last)" in verbose.stdout
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in verbose.stdout
