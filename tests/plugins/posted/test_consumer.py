"""The posted-interrupt consumer: pairing through the Manager, the direct path,
the eventfd relay, hold on stop, the drain thread, TOML, another process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass_mock import MockProducer
from irqbypass_posted import PostedDescriptor, PostedInterruptConsumer, PostedSettings

pytestmark = pytest.mark.usefixtures("no_fd_leak")

TIMEOUT = 60.0  # only against hangs


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


class Declining(MockProducer):
    """A mock that refuses the direct path, so it keeps writing its eventfd."""

    def offer_direct_path(self, deliver: Callable[[], None] | None) -> bool:
        return False


class Raw(irqbypass.Producer):
    """Accepts the direct path and keeps it; delivers whenever told to (it does
    not hold while stopped, so the consumer must)."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.deliver: Callable[[], None] | None = None
        self.offers: list[bool] = []

    def offer_direct_path(self, deliver: Callable[[], None] | None) -> bool:
        self.deliver = deliver
        self.offers.append(deliver is not None)
        return True


def test_mock_posts_directly_bypassing_the_eventfd() -> None:
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token, name="pi")
        producer = MockProducer(token=token, irq=40, count=0)
        mgr = irqbypass.Manager()
        with consumer, producer:
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            producer.fire(250)
            assert producer.stats() == {"fired": 250, "direct": 250, "eventfd": 0, "pending": 0}
            assert token.read(0) == 0  # the eventfd counter stayed 0
            stats = consumer.stats()
            assert (stats["posted"], stats["notified"], stats["delivered"]) == (250, 1, 0)
            assert stats["undrained"] == 250 and stats["relayed"] == 0
            descriptor = consumer.descriptor
            assert descriptor is not None
            assert descriptor.sync().posts == {40: 250}
            assert consumer.stats()["delivered"] == 250
            assert consumer.stats()["vectors_drained"] == 1
            mgr.unregister_producer(producer)
            # unpaired: the path is withdrawn, the mock is back on its eventfd
            producer.fire(3)
            assert producer.stats()["eventfd"] == 3 and token.read(0) == 3
            assert consumer.stats()["posted"] == 250
            mgr.unregister_consumer(consumer)
        final = consumer.stats()
        assert (final["delivered"], final["posted"], final["notified"]) == (250, 250, 1)


def test_declining_producer_is_relayed_from_its_eventfd() -> None:
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token, vector=77, drain=True)
        producer = Declining(token=token, irq=5, count=0)
        mgr = irqbypass.Manager()
        with consumer, producer:
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            for _ in range(100):
                producer.fire(1)
            wait_for(lambda: consumer.stats()["delivered"] == 100)
            stats = consumer.stats()
            assert producer.stats()["eventfd"] == 100 and producer.stats()["direct"] == 0
            assert stats["relayed"] == 100 and stats["posted"] == 100
            descriptor = consumer.descriptor
            assert descriptor is not None
            assert descriptor.posted_per_vector() == {77: 100}
            mgr.unregister_producer(producer)
            mgr.unregister_consumer(consumer)
        assert consumer.stats()["delivered"] == 100


def test_interrupts_signalled_before_pairing_are_posted() -> None:
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token)
        producer = MockProducer(token=token, irq=33, count=0)
        mgr = irqbypass.Manager()
        with consumer, producer:
            producer.fire(4)  # unpaired: into the eventfd
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            producer.fire(2)
            stats = consumer.stats()
            assert (stats["early"], stats["posted"]) == (4, 6)
            mgr.unregister_producer(producer)
            mgr.unregister_consumer(consumer)


def test_stop_holds_posts_and_start_posts_them() -> None:
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token, vector=60)
        producer = Raw(token=token)
        with consumer:
            mgr = irqbypass.Manager()
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            deliver = producer.deliver
            assert deliver is not None
            deliver()
            consumer.stop()
            for _ in range(5):
                deliver()
            descriptor = consumer.descriptor
            assert descriptor is not None
            assert consumer.stats()["held"] == 5 and consumer.stats()["posted"] == 1
            consumer.start()
            assert consumer.stats()["held"] == 0 and consumer.stats()["posted"] == 6
            assert descriptor.sync().posts == {60: 6}
            # held during the unpairing's stop: delivered by del_producer, not lost
            consumer.stop()
            deliver()
            consumer.start()
            mgr.unregister_producer(producer)
            assert producer.offers == [True, False]
            assert consumer.stats()["posted"] == 7
            mgr.unregister_consumer(consumer)


def test_close_withdraws_the_path_and_open_offers_it_again() -> None:
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token, vector=61)
        producer = Raw(token=token)
        mgr = irqbypass.Manager()
        mgr.register_consumer(consumer)
        mgr.register_producer(producer)
        assert producer.offers == []  # not open: no descriptor, no path
        consumer.open()
        consumer.close()
        consumer.open()
        assert producer.offers == [True, False, True]
        assert producer.deliver is not None
        producer.deliver()
        assert consumer.stats()["posted"] == 1
        mgr.unregister_producer(producer)
        consumer.close()
        mgr.unregister_consumer(consumer)
        assert producer.offers == [True, False, True, False]


def test_urgent_producer_notifies_despite_sn() -> None:
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token, vector=70, sn=True)
        quiet = Raw(token=token)
        with consumer:
            mgr = irqbypass.Manager()
            mgr.register_consumer(consumer)
            mgr.register_producer(quiet)
            assert quiet.deliver is not None
            quiet.deliver()
            assert consumer.stats()["notified"] == 0
            mgr.unregister_producer(quiet)
            loud = Raw(token=token)
            loud.urgent = True  # type: ignore[attr-defined]
            mgr.register_producer(loud)
            assert loud.deliver is not None
            loud.deliver()
            assert consumer.stats()["notified"] == 1
            mgr.unregister_producer(loud)
            mgr.unregister_consumer(consumer)


def test_vector_outside_the_pir_fails_the_pairing() -> None:
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token)
        producer = MockProducer(token=token, irq=300, count=0)
        mgr = irqbypass.Manager()
        mgr.register_consumer(consumer)
        with pytest.raises(irqbypass.IrqBypassError) as exc:
            mgr.register_producer(producer)
        assert "set the consumer option vector" in str(exc.value.__cause__)
        assert consumer.producer is None
        mgr.unregister_consumer(consumer)


def test_declining_producer_without_eventfd_token_fails_the_pairing() -> None:
    consumer = PostedInterruptConsumer(token="t0", vector=3)
    producer = Declining(token="t0", count=0)
    mgr = irqbypass.Manager()
    with consumer:
        mgr.register_consumer(consumer)
        with pytest.raises(irqbypass.IrqBypassError) as exc:
            mgr.register_producer(producer)
        assert "nothing to relay" in str(exc.value.__cause__)
        mgr.unregister_consumer(consumer)


def test_drain_thread_delivers_what_the_mock_fires() -> None:
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token, drain=True)
        producer = MockProducer(token=token, irq=34, rate=0.0, count=2000)
        mgr = irqbypass.Manager()
        with consumer:
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            with producer:
                wait_for(lambda: producer.finished and consumer.stats()["delivered"] == 2000)
            stats = consumer.stats()
            assert stats["posted"] == 2000 and stats["undrained"] == 0
            assert 1 <= stats["notified"] <= stats["syncs"]
            assert 1 <= stats["vectors_drained"] <= 2000
            mgr.unregister_producer(producer)
            mgr.unregister_consumer(consumer)


DEMO_TOML = """
[run]
duration = 30.0

[[producers]]
name = "mock-pi"
kind = "mock"
token = "vector-pi"
irq = 36
options = { rate = 0.0, count = 500 }

[[consumers]]
name = "vcpu0"
kind = "posted-interrupt"
token = "vector-pi"
options = { nv = 0xf2, ndst = 1, drain = true }
"""


def test_topology_pair_through_plugins() -> None:
    host = irqbypass.load_plugins()
    config = irqbypass.parse_config(DEMO_TOML, file="demo-posted.toml")
    with irqbypass.Topology(config, host) as topology:
        wait_for(lambda: topology.finished and topology.status()[0].lost == 0)
        row = topology.status()[0]
        assert row.paired and row.fired == 500 and row.delivered == 500
        assert row.producer is not None and row.consumer is not None
        produced, consumed = row.producer.endpoint.stats(), row.consumer.endpoint.stats()
        # the topology opens the mock before it pairs: what it fired in between went
        # into the eventfd, and the consumer posted it when the direct path was set
        assert produced["direct"] + produced["eventfd"] == 500
        assert consumed["early"] == produced["eventfd"]
        assert consumed["posted"] == 500 and consumed["relayed"] == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"vector": 256}, "above the maximum"),
        ({"nv": -1}, "below the minimum"),
        ({"lock": "file"}, "needs a file-backed"),
        ({"lock": "spin"}, "is not one of"),
        ({"drian": True}, "did you mean 'drain'"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    spec = irqbypass.plugin.EndpointSpec(
        name="c", kind="posted-interrupt", side="consumer", token="t", options=options
    )
    with pytest.raises(irqbypass.ConfigError, match=message):
        PostedInterruptConsumer.from_spec(spec)


def test_options_reach_the_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "pid"
    spec = irqbypass.plugin.EndpointSpec(
        name="c",
        kind="posted-interrupt",
        side="consumer",
        token="t",
        irq=45,
        options={"nv": 0xF1, "ndst": 0x300, "sn": True, "file": str(path), "urgent": True},
    )
    consumer = PostedInterruptConsumer.from_spec(spec)
    assert not path.exists()  # building validates; only open creates
    assert consumer.vector == 45 and consumer.urgent
    with consumer:
        d = consumer.descriptor
        assert d is not None
        assert (d.nv, d.ndst, d.sn, d.on, d.lock_mode) == (0xF1, 0x300, True, False, "file")
        assert path.stat().st_mode & 0o777 == 0o600
    assert not path.exists()


def test_the_file_and_python_make_the_same_settings() -> None:
    """One frozen value, checked once, for both ways in (issue 28 item 4); a
    refusal from Python names the consumer, from a file the option."""
    options = {"vector": 45, "nv": 0xF1, "ndst": 0x300, "sn": True, "drain": True}
    spec = irqbypass.plugin.EndpointSpec(
        name="c", kind="posted-interrupt", side="consumer", token="t", options=options
    )
    from_file = PostedInterruptConsumer.from_spec(spec).settings
    from_python = PostedInterruptConsumer(token="t", name="c", **options).settings  # type: ignore[arg-type]
    assert (
        from_file == from_python == PostedSettings(45, False, 0xF1, 0x300, True, None, None, True)
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_file.nv = 1  # type: ignore[misc]
    with pytest.raises(irqbypass.InvalidEndpointError) as info:
        PostedInterruptConsumer(token="t", name="c", lock="file")
    assert str(info.value) == (
        "posted-interrupt consumer 'c': lock 'file' needs a file-backed descriptor; "
        "set file to a path"
    )
    spec = irqbypass.plugin.EndpointSpec(
        name="c", kind="posted-interrupt", side="consumer", token="t", options={"lock": "file"}
    )
    with pytest.raises(irqbypass.ConfigError) as config:
        PostedInterruptConsumer.from_spec(spec)
    assert config.value.key == "c.options.lock"
    assert config.value.problem == "'file' locking needs a file-backed descriptor; set file"


CHILD = r"""
import json, sys
import irqbypass
from irqbypass_posted import PostedDescriptor

path, fd, expected = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with irqbypass.Eventfd.from_fd(fd, owned=True) as note:
    with PostedDescriptor.attach(path, notification=note) as d:
        print(json.dumps({"raw": d.raw().hex()}), flush=True)
        drained, notes, syncs = {}, 0, 0
        while sum(drained.values()) < expected:
            notes += d.wait(60.0)
            for v, n in d.sync().posts.items():
                drained[v] = drained.get(v, 0) + n
            syncs += 1
        print(json.dumps({"drained": drained, "notes": notes, "syncs": syncs}), flush=True)
"""


def test_another_process_drains_the_file_backed_descriptor(tmp_path: Path) -> None:
    """A vCPU in another process maps the file, waits on the notification
    eventfd and syncs, while two threads here post (flock on both sides)."""
    per_thread = 5000
    path = tmp_path / "vcpu0.pid"
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token, vector=48, file=str(path), ndst=7)
        producer = Raw(token=token)
        with consumer:
            mgr = irqbypass.Manager()
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            descriptor = consumer.descriptor
            assert descriptor is not None and descriptor.notification is not None
            deliver = producer.deliver
            assert deliver is not None
            nfd = descriptor.notification.fileno()
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(path), str(nfd), str(2 * per_thread + 1)],
                pass_fds=(nfd,),
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "error::ResourceWarning"},
            )
            try:
                assert child.stdout is not None
                first = json.loads(child.stdout.readline())
                assert first["raw"] == descriptor.raw().hex()
                assert bytes.fromhex(first["raw"])[34] == 0xF2  # NV, DEFAULT_NV
                assert bytes.fromhex(first["raw"])[36] == 7  # NDST

                def posts() -> None:
                    for _ in range(per_thread):
                        deliver()

                threads = [threading.Thread(target=posts) for _ in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                descriptor.post(200)
                out, _ = child.communicate(timeout=TIMEOUT)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.communicate()
            assert child.returncode == 0
            result = json.loads(out)
            assert result["drained"] == {"48": 2 * per_thread, "200": 1}
            stats = consumer.stats()
            assert stats["delivered"] == stats["posted"] == 2 * per_thread + 1
            assert stats["notified"] == result["notes"]
            assert stats["syncs"] == result["syncs"]
            mgr.unregister_producer(producer)
            mgr.unregister_consumer(consumer)
    assert not path.exists()


def test_attach_by_process_lock_reads_only(tmp_path: Path) -> None:
    path = tmp_path / "pid"
    with (
        PostedDescriptor(file=str(path)) as d,
        PostedDescriptor.attach(str(path), lock="process") as reader,
    ):
        d.post(9)
        assert reader.pir == 1 << 9 and reader.on and reader.notification is None
        with pytest.raises(irqbypass.IrqBypassError, match="no notification eventfd"):
            reader.wait(0)


SN_CHILD = r"""
import json, sys
import irqbypass
from irqbypass_posted import PostedDescriptor

path, fd = sys.argv[1], int(sys.argv[2])
with irqbypass.Eventfd.from_fd(fd, owned=True) as note:
    with PostedDescriptor.attach(path, notification=note) as d:
        d.set_sn(True)  # this vCPU is scheduled out
        print("suppressed", flush=True)
        sys.stdin.readline()
        notified = d.set_sn(False)  # scheduled in: pending vectors notify
        notes = d.wait(60.0)
        posts = d.sync().posts
        print(json.dumps({"notified": notified, "notes": notes, "posts": posts}), flush=True)
"""


def test_sn_set_by_another_process_suppresses_until_cleared(tmp_path: Path) -> None:
    path = tmp_path / "vcpu1.pid"
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token, vector=49, file=str(path))
        producer = Raw(token=token)
        with consumer:
            mgr = irqbypass.Manager()
            mgr.register_consumer(consumer)
            mgr.register_producer(producer)
            descriptor = consumer.descriptor
            assert descriptor is not None and descriptor.notification is not None
            assert producer.deliver is not None
            nfd = descriptor.notification.fileno()
            child = subprocess.Popen(
                [sys.executable, "-c", SN_CHILD, str(path), str(nfd)],
                pass_fds=(nfd,),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert child.stdout is not None and child.stdin is not None
                assert child.stdout.readline() == "suppressed\n"
                assert descriptor.sn
                for _ in range(10):
                    producer.deliver()
                assert consumer.stats()["notified"] == 0 and not descriptor.on
                out, _ = child.communicate("go\n", timeout=TIMEOUT)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.communicate()
            assert child.returncode == 0
            assert json.loads(out) == {"notified": True, "notes": 1, "posts": {"49": 10}}
            stats = consumer.stats()
            assert (stats["notified"], stats["delivered"], stats["syncs"]) == (1, 10, 1)
            assert not descriptor.sn and not descriptor.on
            mgr.unregister_producer(producer)
            mgr.unregister_consumer(consumer)


def test_stats_racing_close_never_reads_an_unmapped_descriptor() -> None:
    """A status reader in another thread (``irqbypass run``) may ask for stats
    while the consumer closes: it gets the live or the final counters, never
    an error from a descriptor unmapped under it."""
    with irqbypass.Eventfd() as token:
        consumer = PostedInterruptConsumer(token=token, vector=8)
        consumer.open()
        descriptor = consumer.descriptor
        assert descriptor is not None
        descriptor.post(8)
        entered, go = threading.Event(), threading.Event()
        original = descriptor.counters

        def slow_counters() -> dict[str, int]:
            if threading.current_thread().name == "reader":
                entered.set()
                go.wait(TIMEOUT)
            return original()

        descriptor.counters = slow_counters  # type: ignore[method-assign]
        seen: list[object] = []
        reader = threading.Thread(
            target=lambda: seen.append(_stats_or_error(consumer)), name="reader"
        )
        reader.start()
        assert entered.wait(TIMEOUT)
        closer = threading.Thread(target=consumer.close)
        closer.start()
        closer.join(0.2)  # lets an unguarded close() unmap under the reader
        go.set()
        reader.join()
        closer.join()
        assert len(seen) == 1 and isinstance(seen[0], dict), seen
        assert seen[0]["posted"] == 1
        assert consumer.stats()["posted"] == 1


def _stats_or_error(consumer: PostedInterruptConsumer) -> object:
    try:
        return dict(consumer.stats())
    except Exception as exc:  # the test reports what it got
        return exc
