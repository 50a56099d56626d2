"""Hostile configuration: every malformed file is a ConfigError naming the file
(and the key where there is one), never another exception; the CLI exits 1 with
one ``irqbypass: error:`` line and no traceback; a bad apply applies nothing.

Hand-picked cases cover syntax, wrong types, huge and negative numbers, unknown
kinds, duplicate names and tokens, deep nesting, non-UTF-8 and NUL bytes and very
long strings; hypothesis adds random bytes, mutated valid files and random
documents built from the schema's own keys. ``IRQBYPASS_CONFIG_EXAMPLES``
(default 150) scales the property-based part.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import irqbypass
import pytest
from hypothesis import HealthCheck, example, given, settings
from irqbypass import cli
from rel_support import COUNTERS

EXAMPLES = int(os.environ.get("IRQBYPASS_CONFIG_EXAMPLES", "150"))
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).with_name("irqbypass")  # the environment running the tests
PLUGINS = ["irqbypass-mock", "irqbypass-logging"]

GOOD = b"""\
[run]
duration = 1.0

[[producers]]
name = "dev0"
kind = "mock"
token = "t0"
irq = 32
options = { rate = 1000.0, count = 10 }

[[consumers]]
name = "log0"
kind = "logging"
token = "t0"
"""

PRODUCER = '[[producers]]\nname = "dev0"\nkind = "mock"\ntoken = "t0"\n'
HUGE_DEC = "9" * 5000
HUGE_HEX = "0x" + "f" * 5000


@pytest.fixture(scope="module")
def host() -> irqbypass.PluginHost:
    """mock and logging only, whatever the environment says."""
    saved = {k: os.environ.pop(k) for k in (irqbypass._plugins.ENV_LOAD,) if k in os.environ}
    try:
        return irqbypass.load_plugins(allow=PLUGINS)
    finally:
        os.environ.update(saved)


def check(data: bytes, host: irqbypass.PluginHost, file: str = "hostile.toml") -> None:
    """What ``irqbypass check`` does: parse, validate, build (nothing opened)."""
    config = irqbypass.parse_config(data, file=file)
    topology = irqbypass.Topology(config, host)
    try:
        topology.build()
    finally:
        topology.teardown()


def expect_config_error(data: bytes, host: irqbypass.PluginHost) -> irqbypass.ConfigError:
    with pytest.raises(irqbypass.ConfigError) as info:
        check(data, host)
    error = info.value
    assert isinstance(error, irqbypass.IrqBypassError)
    assert error.file == "hostile.toml"
    assert str(error).startswith("hostile.toml")
    assert error.errno == 22  # EINVAL
    return error


# (id, file contents, the key the error must name (None: no key), line or None)
CASES: list[tuple[str, bytes, str | None, int | None]] = [
    ("syntax-unclosed-table", b"[[producers]\nname = 1\n", None, 1),
    ("syntax-missing-value", b"[run]\nduration =\n", None, 2),
    ("syntax-duplicate-key", b"[run]\nduration = 1\nduration = 2\n", None, 3),
    ("syntax-unclosed-string", b'[[producers]]\nname = "a\n', None, 2),
    ("syntax-bom", b"\xef\xbb\xbf[run]\nduration = 1\n", None, 1),
    ("non-utf8", b"[run]\n# caf\xe9\nduration = 1\n", None, 2),
    ("nul-byte-raw", b"[run]\nduration = 1\x00\n", None, 2),
    ("nul-in-name", (PRODUCER.replace('"dev0"', '"a\\u0000b"')).encode(), "producers[0].name", 2),
    ("nul-in-kind", (PRODUCER.replace('"mock"', '"mo\\u0000ck"')).encode(), "producers[0].kind", 3),
    ("unknown-top-key", b"[runn]\nduration = 1\n", "runn", None),
    ("unknown-endpoint-key", (PRODUCER + "module = 'os'\n").encode(), "producers[0].module", 5),
    ("unknown-plugin-key", b"[plugins]\npath = ['/tmp']\n", "plugins.path", 2),
    ("producers-not-array", b"producers = 5\n", "producers", None),
    ("producer-not-table", b"producers = [1]\n", "producers[0]", None),
    ("plugins-not-table", b"plugins = 'all'\n", "plugins", None),
    ("load-not-list", b"[plugins]\nload = 'irqbypass-mock'\n", "plugins.load", 2),
    ("load-list-of-ints", b"[plugins]\nload = [1]\n", "plugins.load", 2),
    ("load-huge-hex", f"[plugins]\nload = [{HUGE_HEX}]\n".encode(), "plugins.load", 2),
    ("strict-not-bool", b"[plugins]\nstrict = 'yes'\n", "plugins.strict", 2),
    ("duration-string", b"[run]\nduration = '5'\n", "run.duration", 2),
    ("duration-bool", b"[run]\nduration = true\n", "run.duration", 2),
    ("duration-negative", b"[run]\nduration = -1\n", "run.duration", 2),
    ("duration-zero", b"[run]\nduration = 0\n", "run.duration", 2),
    ("duration-inf", b"[run]\nduration = inf\n", "run.duration", 2),
    ("duration-nan", b"[run]\nduration = nan\n", "run.duration", 2),
    ("duration-1e400", b"[run]\nduration = 1e400\n", "run.duration", 2),
    ("duration-huge-hex", f"[run]\nduration = {HUGE_HEX}\n".encode(), "run.duration", 2),
    ("huge-decimal-int", f"[run]\nduration = {HUGE_DEC}\n".encode(), None, None),
    ("name-missing", b'[[producers]]\nkind = "mock"\ntoken = "t"\n', "producers[0]", 1),
    ("name-int", PRODUCER.replace('"dev0"', "7").encode(), "producers[0].name", 2),
    ("name-huge-hex", PRODUCER.replace('"dev0"', HUGE_HEX).encode(), "producers[0].name", 2),
    ("name-empty", PRODUCER.replace('"dev0"', '""').encode(), "producers[0].name", 2),
    ("name-long", PRODUCER.replace("dev0", "n" * 100_000).encode(), "producers[0].name", 2),
    ("name-slash", PRODUCER.replace("dev0", "../etc").encode(), "producers[0].name", 2),
    ("token-array", PRODUCER.replace('"t0"', "['t0']").encode(), "producers[0].token", 4),
    ("token-long", PRODUCER.replace("t0", "t" * 1_000_000).encode(), "producers[0].token", 4),
    ("irq-negative", (PRODUCER + "irq = -1\n").encode(), "producers[0].irq", 5),
    ("irq-2^31", (PRODUCER + "irq = 2147483648\n").encode(), "producers[0].irq", 5),
    ("irq-huge-hex", (PRODUCER + f"irq = {HUGE_HEX}\n").encode(), "producers[0].irq", 5),
    ("irq-float", (PRODUCER + "irq = 1.5\n").encode(), "producers[0].irq", 5),
    ("irq-bool", (PRODUCER + "irq = true\n").encode(), "producers[0].irq", 5),
    ("bypass-int", (PRODUCER + "bypass = 1\n").encode(), "producers[0].bypass", 5),
    ("optional-string", (PRODUCER + "optional = 'no'\n").encode(), "producers[0].optional", 5),
    ("options-not-table", (PRODUCER + "options = 3\n").encode(), "producers[0].options", 5),
    ("unknown-kind", PRODUCER.replace('"mock"', '"mocq"').encode(), "producers[0].kind", 3),
    (
        "kind-module-path",
        PRODUCER.replace('"mock"', '"os.system"').encode(),
        "producers[0].kind",
        3,
    ),
    (
        "kind-entry-point",
        PRODUCER.replace('"mock"', '"os:system"').encode(),
        "producers[0].kind",
        3,
    ),
    ("kind-wrong-side", PRODUCER.replace('"mock"', '"logging"').encode(), "producers[0].kind", 3),
    ("kind-file-path", PRODUCER.replace('"mock"', '"/bin/sh"').encode(), "producers[0].kind", 3),
    (
        "duplicate-name",
        (PRODUCER + PRODUCER.replace('"t0"', '"t1"')).encode(),
        "producers[1].name",
        6,
    ),
    (
        "duplicate-token",
        (PRODUCER + PRODUCER.replace("dev0", "dev1")).encode(),
        "producers[1].token",
        8,
    ),
    ("deep-array", ("[run]\nduration = " + "[" * 5000 + "]" * 5000 + "\n").encode(), None, None),
    ("deep-inline-table", ("x = " + "{a=" * 5000 + "1" + "}" * 5000 + "\n").encode(), None, None),
    (
        "deep-options-within-limits",
        (PRODUCER + "options = { deep = " + "[" * 200 + "]" * 200 + " }\n").encode(),
        "producers[0].options.deep",
        None,
    ),
    (
        "option-unknown",
        (PRODUCER + "options = { rat = 5 }\n").encode(),
        "producers[0].options.rat",
        None,
    ),
    (
        "option-negative-rate",
        (PRODUCER + "options = { rate = -5 }\n").encode(),
        "producers[0].options.rate",
        None,
    ),
    (
        "option-nan-rate",
        (PRODUCER + "options = { rate = nan }\n").encode(),
        "producers[0].options.rate",
        None,
    ),
    (
        "option-inf-rate",
        (PRODUCER + "options = { rate = inf }\n").encode(),
        "producers[0].options.rate",
        None,
    ),
    (
        "option-1e400-rate",
        (PRODUCER + "options = { rate = 1e400 }\n").encode(),
        "producers[0].options.rate",
        None,
    ),
    (
        "option-huge-hex-rate",
        (PRODUCER + f"options = {{ rate = {HUGE_HEX} }}\n").encode(),
        "producers[0].options.rate",
        None,
    ),
    (
        "option-huge-hex-count",
        (PRODUCER + f"options = {{ count = {HUGE_HEX} }}\n").encode(),
        "producers[0].options.count",
        None,
    ),
    (
        "option-count-float",
        (PRODUCER + "options = { count = 1e400 }\n").encode(),
        "producers[0].options.count",
        None,
    ),
    (
        "option-count-negative",
        (PRODUCER + "options = { count = -2 }\n").encode(),
        "producers[0].options.count",
        None,
    ),
    (
        "option-burst-zero",
        (PRODUCER + "options = { burst = 0 }\n").encode(),
        "producers[0].options.burst",
        None,
    ),
    (
        "option-delay-huge",
        (PRODUCER + "options = { delay = 1e300 }\n").encode(),
        "producers[0].options.delay",
        None,
    ),
    (
        "logging-level",
        b'[[consumers]]\nname = "c"\nkind = "logging"\ntoken = "t"\noptions = { level = "LOUD" }\n',
        "consumers[0].options.level",
        None,
    ),
    (
        "logging-json-file-int",
        b'[[consumers]]\nname = "c"\nkind = "logging"\ntoken = "t"\noptions = { json_file = 1 }\n',
        "consumers[0].options.json_file",
        None,
    ),
]


@pytest.mark.parametrize(
    ("data", "key", "line"), [pytest.param(d, k, n, id=i) for i, d, k, n in CASES]
)
def test_hand_picked_bad_config(
    data: bytes, key: str | None, line: int | None, host: irqbypass.PluginHost
) -> None:
    COUNTERS["hostile config: hand-picked cases"] += 1
    error = expect_config_error(data, host)
    assert error.key == key, str(error)
    if line is not None:
        assert error.line == line, str(error)
    if key is not None:
        assert key in str(error)
    assert len(str(error)) < 2000, "the message quotes the whole hostile value"


def test_good_config_is_accepted(host: irqbypass.PluginHost) -> None:
    check(GOOD, host)


def test_unreadable_files(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.toml", tmp_path):  # missing; a directory
        with pytest.raises(irqbypass.ConfigError) as info:
            irqbypass.load_config(path)
        assert info.value.file == str(path)


# -- property-based ---------------------------------------------------------

_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def only_config_errors(data: bytes, host: irqbypass.PluginHost) -> str:
    """Check ``data``: accepted, or a ConfigError naming the file; nothing else."""
    try:
        check(data, host)
    except irqbypass.ConfigError as error:
        assert error.file == "hostile.toml"
        assert str(error).startswith("hostile.toml")
        return "ConfigError"
    return "accepted"


@_SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes(data: bytes, host: irqbypass.PluginHost) -> None:
    COUNTERS["hostile config: random bytes " + only_config_errors(data, host)] += 1


@_SETTINGS
@given(
    cut=st.integers(0, len(GOOD)),
    length=st.integers(0, 20),
    insert=st.binary(max_size=12)
    | st.sampled_from(
        [b"\x00", b"\xff", b"[", b"]", b"=", b'"', b"\n", b"1e999", HUGE_HEX.encode()]
    ),
)
def test_mutated_good_file(
    cut: int, length: int, insert: bytes, host: irqbypass.PluginHost
) -> None:
    data = GOOD[:cut] + insert + GOOD[cut + length :]
    COUNTERS["hostile config: mutated files " + only_config_errors(data, host)] += 1


class _Huge:
    """Stands for HUGE_HEX (5000 hex digits) until written out: hypothesis
    itself cannot repr such an integer."""

    def __repr__(self) -> str:
        return "HUGE_HEX"


HUGE = _Huge()


def toml_value(value: Any) -> str:
    """A tiny TOML writer for generated values (any TOML they make is fair game)."""
    if value is HUGE:
        return HUGE_HEX
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return hex(value) if value > 10**300 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise AssertionError(value)


SCALARS = (
    st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, 2**31, 2**63, 2**64, HUGE])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80)
    | st.sampled_from(["mock", "logging", "os.system", "t0", "t1", "x" * 70, "a\x00b", "é"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ENDPOINT_KEYS = ["name", "kind", "token", "irq", "bypass", "optional", "options", "junk"]
OPTION_KEYS = ["rate", "count", "burst", "delay", "level", "json_file", "typo"]


@st.composite
def endpoint_tables(draw: st.DrawFn) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": draw(st.sampled_from(["a", "b", "c"]) | VALUES),
        "kind": draw(st.sampled_from(["mock", "logging", "nope", "os.system"]) | VALUES),
        "token": draw(st.sampled_from(["t0", "t1"]) | VALUES),
    }
    for key in draw(st.lists(st.sampled_from(ENDPOINT_KEYS), max_size=4)):
        table[key] = draw(VALUES)
    if draw(st.booleans()):
        table["options"] = {
            k: draw(VALUES | st.sampled_from([0, 1, 0.0, -1.0, 1e-300, "DEBUG"]))
            for k in draw(st.lists(st.sampled_from(OPTION_KEYS), max_size=3))
        }
    return table


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    lines = []
    if draw(st.booleans()):
        lines.append("[run]")
        lines.append(f"duration = {toml_value(draw(VALUES))}")
    if draw(st.booleans()):
        lines.append("[plugins]")
        for key in draw(
            st.lists(st.sampled_from(["load", "block", "strict", "bogus"]), max_size=3, unique=True)
        ):
            lines.append(f"{key} = {toml_value(draw(VALUES))}")
    for side in ("producers", "consumers"):
        for table in draw(st.lists(endpoint_tables(), max_size=3)):
            lines.append(f"[[{side}]]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


@_SETTINGS
@given(data=documents())
def test_random_documents_from_the_schema(data: bytes, host: irqbypass.PluginHost) -> None:
    COUNTERS["hostile config: schema documents " + only_config_errors(data, host)] += 1


# -- through the CLI ----------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env[irqbypass._plugins.ENV_LOAD] = ",".join(PLUGINS)
    env.pop(irqbypass._plugins.ENV_DISABLE, None)
    yield env


CLI_CASES = [
    "syntax-unclosed-table",
    "non-utf8",
    "nul-byte-raw",
    "huge-decimal-int",
    "irq-huge-hex",
    "option-huge-hex-rate",
    "option-huge-hex-count",
    "deep-array",
    "kind-module-path",
    "duplicate-token",
    "name-long",
]


def _assert_cli_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("irqbypass: error: ")]
    assert len(errors) == 1, proc.stderr
    assert "hostile.toml" in errors[0]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_check_reports_bad_config(case: str, tmp_path: Path, cli_env: dict[str, str]) -> None:
    data = {i: d for i, d, _, _ in CASES}[case]
    path = tmp_path / "hostile.toml"
    path.write_bytes(data)
    proc = subprocess.run(
        [sys.executable, "-m", "irqbypass.cli", "check", str(path)],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=tmp_path,
        check=False,
    )
    _assert_cli_error(proc)
    COUNTERS["hostile config: CLI subprocess cases"] += 1


def test_installed_script_reports_bad_config(tmp_path: Path, cli_env: dict[str, str]) -> None:
    if not BIN.exists():
        pytest.skip(f"{BIN} is not installed")
    path = tmp_path / "hostile.toml"
    path.write_bytes(PRODUCER.replace('"mock"', '"os.system"').encode())
    proc = subprocess.run(
        [str(BIN), "run", str(path)], capture_output=True, text=True, env=cli_env, check=False
    )
    _assert_cli_error(proc)
    assert "no plugin provides producer kind 'os.system'" in proc.stderr


@settings(
    max_examples=max(10, EXAMPLES // 5), deadline=None, suppress_health_check=list(HealthCheck)
)
@given(data=documents() | st.binary(max_size=200))
# found by this test (issue 16): a token with one end and no near match crashed check
@example(data=b'[[producers]]\nname = "a"\nkind = "mock"\ntoken = "t0"\n')
def test_cli_main_in_process(
    data: bytes, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """``irqbypass check`` on random input: 0 or 1, never an exception."""
    path = tmp_path_factory.mktemp("cli") / "hostile.toml"
    path.write_bytes(data)
    saved = os.environ.get(irqbypass._plugins.ENV_LOAD)
    os.environ[irqbypass._plugins.ENV_LOAD] = ",".join(PLUGINS)
    try:
        status = cli.main(["check", str(path)])
    finally:
        if saved is None:
            del os.environ[irqbypass._plugins.ENV_LOAD]
        else:
            os.environ[irqbypass._plugins.ENV_LOAD] = saved
    err = capsys.readouterr().err
    assert status in (0, 1)
    if status == 1:
        assert "irqbypass: error: " in err
    COUNTERS[f"hostile config: CLI in-process exit {status}"] += 1


# -- applying a bad config applies nothing --------------------------------------

APPLY_FAILS = {
    "json-file-missing-dir": "/nonexistent-dir/irqbypass.jsonl",
    "json-file-too-long": "x" * 5000,
    "json-file-is-dir": "/",
}


@pytest.mark.parametrize("json_file", APPLY_FAILS.values(), ids=list(APPLY_FAILS))
def test_failed_apply_applies_nothing(
    json_file: str, host: irqbypass.PluginHost, no_fd_leak: None
) -> None:
    """The second consumer cannot open: everything the apply did is undone."""
    text = f"""
[[producers]]
name = "dev0"
kind = "mock"
token = "t0"
options = {{ count = -1, rate = 0 }}

[[consumers]]
name = "good"
kind = "logging"
token = "t0"

[[consumers]]
name = "bad"
kind = "logging"
token = "t1"
options = {{ json_file = "{json_file}" }}
"""
    config = irqbypass.parse_config(text, file="apply.toml")
    manager = irqbypass.Manager(host)
    topology = irqbypass.Topology(config, host, manager)
    with pytest.raises(irqbypass.TopologyError) as info:
        topology.apply()
    assert "open of consumer 'bad'" in str(info.value)
    assert info.value.__cause__ is not None
    assert len(manager) == 0 and topology.placed == [] and topology.tokens == {}
    COUNTERS["hostile config: failed applies"] += 1


def test_json_file_with_a_nul_is_refused_before_anything_opens(
    host: irqbypass.PluginHost, no_fd_leak: None
) -> None:
    """A NUL in json_file used to fail only at open (ValueError turned into a
    TopologyError); the consumer's constructor refuses it now, so `check` says so."""
    text = """
[[consumers]]
name = "bad"
kind = "logging"
token = "t1"
options = { json_file = "a\\u0000b" }
"""
    config = irqbypass.parse_config(text, file="nul.toml")
    topology = irqbypass.Topology(config, host)
    with pytest.raises(irqbypass.ConfigError, match=r"consumers\[0\].*NUL") as info:
        topology.build()
    assert "\x00" not in str(info.value)
    assert topology.tokens == {}


def test_cli_run_with_failing_apply(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "hostile.toml"
    path.write_text(
        '[[consumers]]\nname = "c"\nkind = "logging"\ntoken = "t"\n'
        'options = { json_file = "/nonexistent-dir/x.jsonl" }\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "irqbypass.cli", "run", str(path), "--duration", "1"],
        capture_output=True,
        text=True,
        env=cli_env,
        check=False,
    )
    _assert_cli_error(proc)
    assert "No such file or directory" in proc.stderr


# -- a value that passes validation but broke the mock's firing thread ----------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"rate": 1e-12, "count": 3}, id="tiny-rate"),
        pytest.param({"rate": 5e-324, "count": -1}, id="denormal-rate"),
        pytest.param({"delay": 1e12, "count": 1}, id="huge-delay"),
    ],
)
def test_mock_extreme_timing_does_not_crash_its_timer(
    kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch, no_fd_leak: None
) -> None:
    """Regression: a period or delay beyond threading.TIMEOUT_MAX made the
    mock's thread die with OverflowError (a traceback on stderr under
    ``irqbypass run``); it must wait (until closed) instead. Its schedule is a
    timer on the event loop now: the timer stays, and the loop records no fault."""
    import threading
    import time

    from irqbypass_mock import MockProducer

    crashed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))
    faults = irqbypass.event_loop().fault_count
    producer = MockProducer(token="t", **kwargs)
    producer.open()
    try:
        expected = 0 if "delay" in kwargs else 1
        deadline = time.monotonic() + 30
        while producer.stats()["fired"] < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the timer would have failed by now if it were going to
        assert producer._timer is not None and producer._timer.active, crashed
        assert producer.problem is None
        assert irqbypass.event_loop().fault_count == faults, list(irqbypass.event_loop().faults)
        assert producer.stats()["fired"] == expected
    finally:
        producer.close()
    assert crashed == []


def test_cli_run_with_tiny_rate_has_no_traceback(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "slow.toml"
    path.write_text(PRODUCER + "options = { rate = 1e-12, count = 2 }\n")
    proc = subprocess.run(
        [sys.executable, "-m", "irqbypass.cli", "run", str(path), "--duration", "0.5", "--json"],
        capture_output=True,
        text=True,
        env=cli_env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    # one fire at once, the next in 10**12 s; the run ends at its duration, when
    # a loaded host may not yet have run the first (a count at a fixed moment)
    assert json.loads(proc.stdout)["pairs"][0]["fired"] in (0, 1)
