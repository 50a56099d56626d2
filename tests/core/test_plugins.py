"""Discovery: the real plugin distributions, a broken one, the allow and block
lists, strict mode, de-duplication, kind registration and conflicts."""

from __future__ import annotations

import errno
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass._plugins import ENV_DISABLE, ENV_LOAD


def make_distribution(
    root: Path, dist: str, module: str, source: str, *, ep_name: str | None = None
) -> None:
    """A minimal installed distribution: dist-info with an entry point, and its module."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[irqbypass]\n{ep_name or module} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


GOOD_PLUGIN = """
import irqbypass
import irqbypass.exceptions

class Sink(irqbypass.Consumer):
    def add_producer(self, producer): pass
    def del_producer(self, producer): pass

@irqbypass.plugin.hookimpl
def irqbypass_register_kinds(register):
    register.consumer("extra-sink", lambda spec: Sink(token=spec.token, name=spec.name))
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for test distributions; the env vars cleared."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_LOAD, raising=False)
    monkeypatch.delenv(ENV_DISABLE, raising=False)
    yield tmp_path


def test_real_distributions_are_discovered(site: Path) -> None:
    host = irqbypass.load_plugins()
    infos = {info.name: info for info in host.info()}
    assert infos["mock"].distribution == "irqbypass-mock"
    assert infos["mock"].version == metadata.version("irqbypass-mock")
    assert infos["mock"].kinds == {"producer": ["mock"]}
    assert infos["logging"].kinds == {"consumer": ["logging"]}
    assert "irqbypass_register_kinds" in infos["mock"].hooks
    assert host.kinds.get("producer", "mock").plugin == "mock"
    assert host.failures == []


def test_broken_plugin_is_reported_and_others_work(site: Path) -> None:
    make_distribution(site, "irqbypass-broken", "broken_mod", "raise ImportError('no libfoo')")
    make_distribution(site, "irqbypass-extra", "extra_mod", GOOD_PLUGIN)
    host = irqbypass.load_plugins()
    (failure,) = host.failures
    assert failure.name == "broken_mod"
    assert failure.distribution == "irqbypass-broken"
    assert failure.version == "1.0"
    assert failure.error == "ImportError: no libfoo"
    assert host.kinds.get("consumer", "extra-sink").plugin == "extra_mod"
    assert host.kinds.get("producer", "mock")
    listed = {info.name: info.error for info in host.info()}
    assert listed["broken_mod"] == "ImportError: no libfoo"
    assert listed["mock"] is None


def test_strict_mode_makes_a_broken_plugin_fatal(site: Path) -> None:
    make_distribution(site, "irqbypass-broken", "broken_mod", "1/0")
    with pytest.raises(irqbypass.PluginError) as info:
        irqbypass.load_plugins(strict=True)
    message = str(info.value)
    assert "'broken_mod'" in message and "irqbypass-broken 1.0" in message
    assert "ZeroDivisionError" in message


def test_allow_list_from_environment(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(site, "irqbypass-extra", "extra_mod", GOOD_PLUGIN)
    monkeypatch.setenv(ENV_LOAD, "irqbypass-mock, irqbypass-extra")
    names = {info.name for info in irqbypass.load_plugins().info()}
    assert names == {"mock", "extra_mod"}
    monkeypatch.setenv(ENV_LOAD, "")
    assert irqbypass.load_plugins().info() == [], "empty means none"


def test_allow_list_from_argument(site: Path) -> None:
    names = {info.name for info in irqbypass.load_plugins(allow=["irqbypass_logging"]).info()}
    assert names == {"logging"}, "distribution names are normalized"


def test_disable_autoload(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DISABLE, "1")
    host = irqbypass.load_plugins()
    assert host.info() == []
    manager = irqbypass.Manager(host)  # still usable
    assert len(manager) == 0


@pytest.mark.parametrize("name", ["mock", "irqbypass-mock", "IRQBYPASS_MOCK"])
def test_block_list_by_plugin_or_distribution(site: Path, name: str) -> None:
    names = {info.name for info in irqbypass.load_plugins(block=[name]).info()}
    assert "mock" not in names and "logging" in names


def test_same_distribution_seen_twice_loads_once(site: Path) -> None:
    make_distribution(site, "irqbypass-extra", "extra_mod", GOOD_PLUGIN)
    (ep,) = [e for e in metadata.entry_points(group="irqbypass") if e.name == "extra_mod"]
    loads: list[str] = []

    class Counting:
        def __init__(self, inner: metadata.EntryPoint) -> None:
            self.inner = inner
            self.name = inner.name
            self.dist = inner.dist

        def load(self) -> object:
            loads.append(self.name)
            return self.inner.load()

    host = irqbypass.PluginHost()
    host.load_entry_points(entry_points=lambda: [Counting(ep), Counting(ep)])  # type: ignore[list-item,return-value]
    assert loads == ["extra_mod"]
    assert host.kinds.get("consumer", "extra-sink")


def test_duplicate_kind_names_both_plugins(site: Path) -> None:
    make_distribution(
        site,
        "irqbypass-othermock",
        "othermock_mod",
        """
        import irqbypass
        @irqbypass.plugin.hookimpl
        def irqbypass_register_kinds(register):
            register.producer("mock", lambda spec: None)
            register.producer("othermock", lambda spec: None)
        """,
    )
    host = irqbypass.load_plugins()
    (problem,) = host.check_kinds()
    assert "'mock'" in problem and "'mock' and 'othermock_mod'" in problem
    with pytest.raises(irqbypass.exceptions.KindConflictError, match="'mock' and 'othermock_mod'"):
        host.kinds.get("producer", "mock")
    assert host.kinds.get("producer", "othermock").plugin == "othermock_mod"
    assert host.kinds.get("consumer", "logging").plugin == "logging"
    with pytest.raises(irqbypass.PluginError):
        irqbypass.load_plugins(strict=True)
    # blocking one of them resolves it
    assert irqbypass.load_plugins(block=["othermock_mod"]).kinds.get("producer", "mock")


def test_register_kinds_raising_is_reported_per_plugin() -> None:
    class Good:
        @irqbypass.plugin.hookimpl
        def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
            register.producer("good", lambda spec: irqbypass.Producer(token=spec.token))

    class Bad:
        @irqbypass.plugin.hookimpl
        def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
            register.producer("half", lambda spec: irqbypass.Producer(token=spec.token))
            raise RuntimeError("kind table corrupt")

    host = irqbypass.PluginHost()
    host.register(Good(), name="good")
    host.register(Bad(), name="bad")
    (problem,) = host.check_kinds()
    assert "'bad'" in problem and "kind table corrupt" in problem
    assert host.kinds.names("producer") == ["good"], "a failed registration adds nothing"


def test_wrong_hook_signature_is_refused_with_name() -> None:
    class Wrong:
        @irqbypass.plugin.hookimpl
        def irqbypass_stop(self, endpoint: object, side: str, extra: int) -> None: ...

    host = irqbypass.PluginHost()
    with pytest.raises(irqbypass.PluginError, match="wrong"):
        host.register(Wrong(), name="wrong")
    assert host.wrapped == {}


def test_unknown_kind_suggests_the_closest() -> None:
    host = irqbypass.load_plugins()
    with pytest.raises(irqbypass.exceptions.UnknownKindError, match="did you mean 'mock'") as info:
        host.kinds.get("producer", "mokc")
    assert info.value.errno == errno.ENOENT


def test_in_process_registration_is_undone() -> None:
    class Kinds:
        @irqbypass.plugin.hookimpl
        def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
            register.consumer("inproc", lambda spec: None)  # type: ignore[arg-type,return-value]

    host = irqbypass.PluginHost()
    with host.registered(Kinds(), name="inproc"):
        assert host.kinds.names("consumer") == ["inproc"]
    assert host.kinds.names("consumer") == []


def test_availability_reason() -> None:
    class Kinds:
        @irqbypass.plugin.hookimpl
        def irqbypass_register_kinds(self, register: irqbypass.plugin.KindRegistrar) -> None:
            register.consumer("never", lambda spec: None, availability=lambda: "no device")  # type: ignore[arg-type,return-value]
            register.consumer("crashy", lambda spec: None, availability=lambda: 1 // 0)  # type: ignore[arg-type,return-value]

    host = irqbypass.PluginHost()
    host.register(Kinds())
    assert host.kinds.get("consumer", "never").unavailable_reason() == "no device"
    reason = host.kinds.get("consumer", "crashy").unavailable_reason()
    assert reason is not None and "ZeroDivisionError" in reason


def test_each_plugin_page_is_titled_by_its_kind_and_distribution() -> None:
    """The docs' sidebar lists the plugin pages by title: each reads "The KIND
    SIDE (DISTRIBUTION)" (four read "mock (producer)", "irqbypass-kvm: the
    `kvm-irqfd` consumer" and so on), its kind and side as the summary names them."""
    pages = sorted((Path(__file__).resolve().parents[2] / "docs" / "plugins").glob("*.md"))
    assert len(pages) == 8
    for page in pages:
        name = f"irqbypass-{page.stem}"
        summary = metadata.metadata(name)["Summary"]
        side, kind = summary.split("'")[0].split()[1], summary.split("'")[1]
        assert summary.startswith(f"irqbypass {side} kind '{kind}': "), summary
        title = page.read_text(encoding="utf-8").splitlines()[0]
        assert title == f"# The {kind} {side} ({name})", page.name
