"""The plugin API's templates of signal safety (issue 28 item 2: "plugins never
import signal machinery"): what an uninterrupted method reaches is marked where
it is defined, with ``irqbypass.plugin.waits_on_peer``, ``calls_partner`` and
``holding``, and no plugin imports ``irqbypass.signalsafe`` or ``irqbypass._signals``."""

from __future__ import annotations

import ast
import signal
import threading
from pathlib import Path

import irqbypass.plugin
import pytest
from test_interruptible import GUARD, interrupt_main_when

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
#: the signal machinery: the embedders' tier and its implementation
MACHINERY = frozenset({"irqbypass.signalsafe", "irqbypass._signals"})


def machinery_uses(source: str) -> list[str]:
    """Where ``source`` reaches the signal machinery: an import of it (any form),
    an attribute ``irqbypass.signalsafe``, or its name as a string (importlib)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names = [f"{node.value.id}.{node.attr}"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        found += [f"line {node.lineno}: {name}" for name in names if _is_machinery(name)]
    return found


def _is_machinery(name: str) -> bool:
    return any(name == module or name.startswith(f"{module}.") for module in MACHINERY)


@pytest.mark.parametrize(
    "source",
    [
        "import irqbypass.signalsafe\n",
        "import irqbypass._signals as s\n",
        "from irqbypass import signalsafe\n",
        "from irqbypass.signalsafe import hold\n",
        "from irqbypass._signals import callout\n",
        "import irqbypass\nirqbypass.signalsafe.callout(f)\n",
        "importlib.import_module('irqbypass.signalsafe')\n",
    ],
)
def test_the_scan_finds_each_form_of_use(source: str) -> None:
    assert machinery_uses(source)


def test_the_scan_passes_the_plugin_api() -> None:
    source = "import irqbypass.plugin\n@irqbypass.plugin.waits_on_peer\ndef f() -> None: ...\n"
    assert not machinery_uses(source)


def test_no_plugin_imports_the_signal_machinery() -> None:
    sources = sorted(PLUGINS.glob("*/irqbypass_*/**/*.py"))
    assert len({path.parts[len(PLUGINS.parts)] for path in sources}) >= 8, "no plugin found"
    uses = {
        f"{path.relative_to(PLUGINS)}, {use}"
        for path in sources
        for use in machinery_uses(path.read_text())
    }
    assert not uses, (
        "plugins reach the signal machinery (use irqbypass.plugin's templates: "
        f"uninterrupted, holding, waits_on_peer, calls_partner): {sorted(uses)}"
    )


# SIGINT raises KeyboardInterrupt, guarded as a Manager guards it (tests/conftest.py)
signals = pytest.mark.usefixtures("guarded_sigint")


@signals
def test_a_wait_on_a_peer_ends_at_a_ctrl_c_inside_an_uninterrupted_method() -> None:
    waiting, never = threading.Event(), threading.Event()
    steps: list[str] = []

    @irqbypass.plugin.waits_on_peer
    def wait_for_reply() -> None:
        waiting.set()
        never.wait(GUARD)  # a peer that never answers
        steps.append("answered")

    @irqbypass.plugin.uninterrupted
    def request() -> None:
        try:
            wait_for_reply()
        finally:
            steps.append("cleaned up")

    thread = interrupt_main_when(waiting)
    with pytest.raises(KeyboardInterrupt):
        request()
    thread.join(GUARD)
    assert steps == ["cleaned up"]


@signals
def test_a_ctrl_c_that_waited_is_delivered_as_the_wait_on_a_peer_begins() -> None:
    steps: list[str] = []

    @irqbypass.plugin.waits_on_peer
    def wait_for_reply() -> None:
        steps.append("waited")

    @irqbypass.plugin.uninterrupted
    def request() -> None:
        signal.raise_signal(signal.SIGINT)  # lands in the method: waits
        steps.append("went on")
        wait_for_reply()

    with pytest.raises(KeyboardInterrupt):
        request()
    assert steps == ["went on"]


@signals
def test_a_ctrl_c_in_the_partner_s_code_passes_and_elsewhere_waits() -> None:
    steps: list[str] = []

    class Endpoint:
        @irqbypass.plugin.calls_partner
        def attach(self, partner: str) -> None:
            steps.append(partner)
            signal.raise_signal(signal.SIGINT)  # in the partner's code: raised here
            steps.append("not reached")

        @irqbypass.plugin.uninterrupted
        def open(self) -> None:
            signal.raise_signal(signal.SIGINT)  # in the method's own lines: waits
            steps.append("own lines")

        @irqbypass.plugin.uninterrupted
        def open_paired(self) -> None:
            try:
                self.attach("partner")
            except KeyboardInterrupt:
                steps.append("caught")
                raise
            finally:
                steps.append("finished")

    with pytest.raises(KeyboardInterrupt):
        Endpoint().open()
    assert steps == ["own lines"]
    steps.clear()
    with pytest.raises(KeyboardInterrupt):
        Endpoint().open_paired()
    assert steps == ["partner", "caught", "finished"]


class Contended:
    """Another thread's lock: tells when a taker starts to wait for it."""

    def __init__(self) -> None:
        self.lock, self.waiting = threading.Lock(), threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if blocking:
            self.waiting.set()
        return self.lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.lock.release()


@signals
def test_a_ctrl_c_ends_the_wait_for_a_held_lock_and_leaves_it_untaken() -> None:
    contended = Contended()
    steps: list[bool] = []

    class Descriptor:
        def __init__(self) -> None:
            self.lock = contended

        @irqbypass.plugin.holding(lambda self: self.lock)
        def close(self) -> None:
            steps.append(contended.lock.locked())

    Descriptor().close()
    assert steps == [True] and not contended.lock.locked()
    contended.lock.acquire()  # another thread's: the close must wait for it
    try:
        thread = interrupt_main_when(contended.waiting)
        with pytest.raises(KeyboardInterrupt):
            Descriptor().close()
        thread.join(GUARD)
    finally:
        contended.lock.release()
    assert steps == [True] and not contended.lock.locked()


def test_an_alias_reads_its_path_and_cannot_be_set() -> None:
    class Settings:
        queue = 3

    class Producer:
        queue = irqbypass.plugin.Alias[int]("settings.queue")

        def __init__(self) -> None:
            self.settings = Settings()

    producer = Producer()
    assert producer.queue == 3 and Producer.queue.path == "settings.queue"
    with pytest.raises(AttributeError, match=r"read-only: it is Producer's settings\.queue"):
        producer.queue = 4
    assert producer.queue == 3


def test_a_service_is_started_and_closed_by_with() -> None:
    steps: list[str] = []

    class Daemon(irqbypass.plugin.Service):
        def start(self) -> None:
            steps.append("start")

        def close(self) -> None:
            steps.append("close")

    with pytest.raises(RuntimeError), Daemon() as daemon:
        assert isinstance(daemon, Daemon)
        raise RuntimeError
    assert steps == ["start", "close"]
