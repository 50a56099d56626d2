"""The kind as a user meets it: TOML options, `irqbypass check`, and a
back-end killed in the middle of `irqbypass run`."""

from __future__ import annotations

import dataclasses
import errno
import os
import select
import subprocess
import sys
from pathlib import Path

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass_vhost_user import StorageDaemon, VhostUserProducer, VhostUserSettings

from .conftest import GUARD

ROOT = Path(__file__).resolve().parents[3]


def spec(
    token: irqbypass.Eventfd, irq: int | None = None, **options: object
) -> irqbypass.plugin.EndpointSpec:
    return irqbypass.plugin.EndpointSpec(
        name="vq", kind="vhost-user", side="producer", token=token, irq=irq, options=options,
        key_path="producers[0]", file="t.toml",
    )  # fmt: skip


def test_the_kind_is_registered() -> None:
    kind = irqbypass.load_plugins().kinds.get("producer", "vhost-user")
    assert kind.factory == VhostUserProducer.from_spec


def test_options() -> None:
    with irqbypass.Eventfd() as token:
        p = VhostUserProducer.from_spec(
            spec(token, irq=3, socket="/run/x.sock", queue_size=64, timeout=1.5, requests=9)
        )
        assert (p.socket_path, p.queue, p.queue_size, p.timeout, p.requests) == (
            "/run/x.sock", 3, 64, 1.5, 9,
        )  # fmt: skip
        handed = VhostUserProducer.from_spec(spec(token, fd=7, reply_ack=True))
        assert not handed.owns_connection and handed.reply_ack


def test_toml_and_python_make_the_same_settings_value() -> None:
    """Both ways end in one frozen VhostUserSettings, checked once: the TOML
    entry's and the keywords' are equal, and a producer takes it as made."""
    options = {"socket": "/run/x.sock", "queue_size": 64, "timeout": 1.5, "requests": 9}
    with irqbypass.Eventfd() as token:
        read = VhostUserProducer.from_spec(spec(token, irq=3, **options)).settings
        made = VhostUserProducer(token=token, irq=3, **options).settings  # type: ignore[arg-type]
        assert (
            read
            == made
            == VhostUserSettings(
                socket="/run/x.sock", queue=3, queue_size=64, timeout=1.5, requests=9
            )
        )
        with pytest.raises(dataclasses.FrozenInstanceError):
            read.timeout = 60.0  # type: ignore[misc]
        again = VhostUserProducer(token=token, name="again", settings=read)
        assert (again.settings, again.queue, again.irq) == (read, 3, 3)
        with pytest.raises(
            irqbypass.InvalidEndpointError, match=r"'vq': queue 300 must be 0\.\.255"
        ):
            VhostUserProducer(token=token, name="vq", socket="/s", queue=300)
        with pytest.raises(irqbypass.InvalidEndpointError, match=r"not both"):
            VhostUserProducer(token=token, settings=read, timeout=2.0)
        with pytest.raises(irqbypass.InvalidEndpointError, match=r"give exactly one of socket"):
            VhostUserSettings()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give exactly one of socket"),
        ({"socket": "/s", "spawn": True}, "give exactly one of socket"),
        ({"fd": -1}, "inherited fd number"),
        ({"socket": "/s", "queue": 256}, "queue"),
        ({"socket": "/s", "queue_size": 100}, "power of 2"),
        ({"fd": 3, "requests": 5}, "needs a connection this producer owns"),
        ({"socket": "/s", "sokcet": 1}, "did you mean 'socket'"),
        # issue 20: values that reached a raw error at run
        ({"socket": "/s", "timeout": 1e300}, "above the maximum 3600"),
        ({"socket": "/run/a\0b"}, "holds a NUL byte"),
        ({"socket": "/run/" + "x" * 100}, "more than the 82 that fit"),
        ({"socket": ""}, "empty"),
        ({"socket": "/s", "backend_uid": -1}, "backend_uid"),
        ({"socket": "/s", "backend_uid": True}, "backend_uid"),
        ({"socket": "/s", "rate": 1e300}, "above the maximum"),
        ({"socket": "/s", "delay": 1e300}, "above the maximum"),
    ],
)
def test_bad_options_are_refused_with_the_key(options: dict[str, object], message: str) -> None:
    with irqbypass.Eventfd() as token, pytest.raises(irqbypass.ConfigError, match=message) as c:
        VhostUserProducer.from_spec(spec(token, **options))
    assert "producers[0].options" in str(c.value)


def test_constructing_touches_nothing() -> None:
    with irqbypass.Eventfd() as token:
        p = VhostUserProducer(token=token, socket="/nonexistent/socket")
        assert p.connection is None and p.stats()["bound"] == 0
    with pytest.raises(irqbypass.InvalidEndpointError, match=r"not an irqbypass\.Eventfd"):
        VhostUserProducer(token="t", socket="/s")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 1e300}, r"timeout must be 0\.\.3600"),
        ({"timeout": float("nan")}, r"timeout must be 0\.\.3600"),
        ({"timeout": "5"}, "timeout must be a number"),
        ({"drain_timeout": True}, "drain_timeout must be a number"),
        ({"requests": 1.5}, "requests must be an integer"),
        ({"backend_uid": "root"}, "backend_uid must be an integer"),
        ({"socket": "/run/a\0b"}, "NUL"),
        ({"socket": 7}, "socket must be a path"),
    ],
)
def test_bad_values_at_the_python_api_are_refused(options: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"socket": "/run/vu.sock", **options}
    with irqbypass.Eventfd() as token, pytest.raises(irqbypass.InvalidEndpointError, match=message):
        VhostUserProducer(token=token, **arguments)  # type: ignore[arg-type]


def test_a_refused_socket_path_keeps_its_errno() -> None:
    with (
        irqbypass.Eventfd() as token,
        pytest.raises(irqbypass.InvalidEndpointError, match="more than the 82") as caught,
    ):
        VhostUserProducer(token=token, name="vq", socket="/run/" + "x" * 100)
    assert caught.value.errno == errno.ENAMETOOLONG
    assert caught.value.message.startswith("vhost-user producer 'vq': socket path ")


def test_a_backend_killed_during_irqbypass_run_is_named(
    daemon: StorageDaemon, tmp_path: Path
) -> None:
    topology = tmp_path / "t.toml"
    topology.write_text(
        f"""
[run]
duration = {GUARD}

[[producers]]
name = "blk0"
kind = "vhost-user"
token = "vq0"
options = {{ socket = "{daemon.socket_path}", requests = 1000000, rate = 500.0 }}

[[consumers]]
name = "log0"
kind = "logging"
token = "vq0"
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRQBYPASS_")}
    env["PYTHONUNBUFFERED"] = "1"  # the applied table as soon as it is printed
    run = subprocess.Popen(
        [sys.executable, "-m", "irqbypass.cli", "run", str(topology)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert run.stdout is not None
        seen = b""
        while b"paired (bypass)" not in seen:  # applied: the load is running
            ready, _, _ = select.select([run.stdout], [], [], GUARD)
            assert ready, f"irqbypass run printed no applied table: {seen!r}"
            chunk = os.read(run.stdout.fileno(), 4096)  # unbuffered: select stays true
            assert chunk, f"irqbypass run ended early: {seen!r}"
            seen += chunk
        daemon.kill()
        rest, err = run.communicate(timeout=GUARD)
        out = seen.decode() + rest
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 1, err
    assert "Traceback" not in err
    # the summary, then the error naming the producer and what to do
    assert "backend_lost=1" in out
    assert "irqbypass: error:" in err and "'blk0'" in err and "restart the back-end" in err
