"""Against the real back-end, qemu-storage-daemon: every completion counted
exactly through a Manager-paired consumer; stop/start; a killed, restarted
back-end; a second producer refused; the back-end behaviours the docs state."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading

import irqbypass
import irqbypass.plugin
import irqbypass.signalsafe
import pytest
from irqbypass_logging import LoggingConsumer
from irqbypass_vhost_user import (
    BackendGoneError,
    BackendTimeoutError,
    BlkDriver,
    Connection,
    GuestMemory,
    SplitRing,
    StorageDaemon,
    VhostUserProducer,
)
from irqbypass_vhost_user import _wire as wire

from .conftest import complete, wait_for

pytestmark = pytest.mark.usefixtures("no_fd_leak")


class Counter(irqbypass.Consumer):
    """A consumer that is paired and counts the token's eventfd as a guest would."""

    def __init__(self, token: irqbypass.Eventfd) -> None:
        super().__init__(token=token, name="counter")
        self.eventfd = token

    def add_producer(self, producer: irqbypass.Producer) -> None:
        pass

    def del_producer(self, producer: irqbypass.Producer) -> None:
        pass


def paired(
    daemon: StorageDaemon, token: irqbypass.Eventfd, **options: object
) -> tuple[irqbypass.Manager, VhostUserProducer, LoggingConsumer]:
    consumer = LoggingConsumer(token=token, name="log")
    producer = VhostUserProducer(token=token, socket=daemon.socket_path, name="vq0", **options)  # type: ignore[arg-type]
    mgr = irqbypass.Manager()
    consumer.open()
    mgr.register_consumer(consumer)
    producer.open()
    mgr.register_producer(producer)
    return mgr, producer, consumer


def unpair(mgr: irqbypass.Manager, producer: VhostUserProducer, consumer: LoggingConsumer) -> None:
    mgr.unregister_producer(producer)
    mgr.unregister_consumer(consumer)
    producer.close()
    consumer.close()


def delivered(consumer: LoggingConsumer) -> int:
    return consumer.stats()["delivered"]


def test_negotiation_with_qemu_storage_daemon(
    daemon: StorageDaemon, token: irqbypass.Eventfd
) -> None:
    with VhostUserProducer(token=token, socket=daemon.socket_path, queue=1, name="vq1") as p:
        assert p.features >> wire.VIRTIO_F_VERSION_1 & 1
        assert p.features >> wire.VHOST_USER_F_PROTOCOL_FEATURES & 1
        assert (
            p.protocol_features
            == 1 << wire.ProtocolFeature.REPLY_ACK | 1 << wire.ProtocolFeature.MQ
        )
        assert p.connection is not None and p.connection.reply_ack
        assert p.queue_count == 2
        assert p.bound_to == token.fileno()
        stats = p.stats()
        # libvhost-user signalled both call fds it was given once: the probe on
        # the holding eventfd and the bind on the token (a phantom: nothing behind it)
        assert (stats["kicks"], stats["phantom"], stats["bound"]) == (2, 1, 1)
    assert token.read(0) == 1
    assert p.bound_to is None


def test_every_completion_one_at_a_time(daemon: StorageDaemon, token: irqbypass.Eventfd) -> None:
    mgr, producer, consumer = paired(daemon, token)
    try:
        # open's bind made one phantom; pairing stopped an idle ring: no message, none
        phantom = producer.stats()["phantom"]
        assert phantom == 1 and producer.stats()["swaps"] == 0
        wait_for(lambda: delivered(consumer) == phantom, "the binds' kicks")
        for i in range(1, 201):
            assert producer.submit(1) == 1
            wait_for(lambda i=i: delivered(consumer) == phantom + i, f"interrupt {i}")  # type: ignore[misc]
            complete(producer, 1)
        assert producer.stats()["completed"] == 200
        assert producer.stats()["failed"] == 0
        assert delivered(consumer) == 200 + producer.stats()["phantom"]
    finally:
        unpair(mgr, producer, consumer)


def test_every_completion_in_batches(daemon: StorageDaemon, token: irqbypass.Eventfd) -> None:
    mgr, producer, consumer = paired(daemon, token, queue_size=128)
    try:
        for batch in (1, 7, 32, 64, 64, 13):
            before = producer.stats()["completed"]
            assert producer.submit(batch) == batch
            complete(producer, batch)
            assert producer.stats()["completed"] == before + batch
        total = 1 + 7 + 32 + 64 + 64 + 13
        phantom = producer.stats()["phantom"]
        wait_for(lambda: delivered(consumer) == total + phantom, "every signal")
    finally:
        unpair(mgr, producer, consumer)
    # nothing more arrived: unregistering stopped an idle ring
    assert delivered(consumer) == total + producer.stats()["phantom"] == total + phantom
    assert producer.stats()["failed"] == 0


def test_stop_start_while_requests_complete_none_lost_none_doubled(
    daemon: StorageDaemon, token: irqbypass.Eventfd
) -> None:
    """On its own ring: a stop finds requests in flight (the call is swapped
    to the holding eventfd) or an idle ring (publishing is deferred)."""
    mgr, producer, consumer = paired(daemon, token, queue_size=64)
    done = threading.Event()
    errors: list[BaseException] = []
    total = 0

    def load() -> None:
        nonlocal total
        try:
            while not done.is_set():
                total += producer.submit(8)
                complete(producer, producer.driver.in_flight if producer.driver else 0)
        except BaseException as exc:  # reported below
            errors.append(exc)

    feeder = threading.Thread(target=load)
    feeder.start()
    try:
        for _ in range(100):
            producer.stop()
            producer.start()
    finally:
        done.set()
        feeder.join()
    try:
        assert not errors, errors
        stats = producer.stats()
        assert stats["quiesces"] == 1 + 100  # registering stopped it once
        assert stats["completed"] == total
        wait_for(lambda: delivered(consumer) == total + stats["phantom"], "every signal")
        assert stats["held"] == stats["replayed"]
    finally:
        unpair(mgr, producer, consumer)
    assert delivered(consumer) == total + producer.stats()["phantom"]


def test_stop_start_on_a_handed_connection_under_load(
    daemon: StorageDaemon, token: irqbypass.Eventfd
) -> None:
    """The VMM's driver keeps completing requests; every stop swaps the call
    to the holding eventfd and every start replays: none lost, none doubled."""
    with contextlib.ExitStack() as stack:
        vmm_call = stack.enter_context(irqbypass.Eventfd())
        conn, driver, kick = vmm_set_up(daemon, vmm_call, stack)
        consumer = LoggingConsumer(token=token, name="log")
        producer = VhostUserProducer(token=token, connection=conn.fileno(), reply_ack=True)
        mgr = irqbypass.Manager()
        consumer.open()
        stack.callback(consumer.close)
        mgr.register_consumer(consumer)
        stack.callback(mgr.unregister_consumer, consumer)
        producer.open()
        stack.callback(producer.close)
        mgr.register_producer(producer)
        stack.callback(mgr.unregister_producer, producer)
        done = threading.Event()
        errors: list[BaseException] = []

        def load() -> None:
            try:
                while not done.is_set():
                    driver.queue(8)
                    kick.write()
                    wait_for(lambda: driver.reap() >= 0 and driver.in_flight == 0, "the batch")
            except BaseException as exc:  # reported below
                errors.append(exc)

        feeder = threading.Thread(target=load)
        feeder.start()
        try:
            for _ in range(100):
                producer.stop()
                producer.start()
        finally:
            done.set()
            feeder.join()
        assert not errors, errors
        stats = producer.stats()
        assert stats["swaps"] == stats["quiesces"] == 1 + 100
        assert stats["held"] == stats["replayed"]
        assert stats["held"] > 0, "nothing completed while stopped: the test proved nothing"
        total = driver.completed
        wait_for(lambda: delivered(consumer) == total + stats["phantom"], "every signal")
        assert vmm_call.read(0) == 1  # only its own bind's kick, from before the hand-over


def test_a_killed_backend_is_reported_and_the_producer_reopens(
    daemon: StorageDaemon, token: irqbypass.Eventfd
) -> None:
    mgr, producer, consumer = paired(daemon, token)
    try:
        producer.submit(16)
        complete(producer, 16)
        producer.submit(16)  # mid-stream: some of these may never complete
        daemon.kill()
        wait_for(lambda: producer.stats()["backend_lost"] == 1, "the loss to show")
        assert producer.problem is not None and "closed the connection" in producer.problem
        assert "restart the back-end" in producer.problem
        with pytest.raises(BackendGoneError) as caught:
            producer.connection.request(wire.Request.GET_FEATURES)  # type: ignore[union-attr]
        assert caught.value.errno in (errno.EPIPE, errno.ECONNRESET)
        # the token and the memory stay valid: the consumer still works
        token.write(1)
        wait_for(lambda: delivered(consumer) >= 1 + 16 + 1, "a write to the token")
        # stop/start on a dead back-end record state and raise nothing
        producer.stop()
        producer.start()
        with pytest.raises(BackendGoneError, match="closed the connection"):
            producer.close()  # closes everything, then says the back-end went away
        assert producer.connection is None and producer.stats()["bound"] == 0
        daemon.start()
        producer.open()
        assert producer.stats()["backend_lost"] == 1 and producer.problem is None
        assert producer.stats()["opens"] == 2
        # the reopen's phantom may or may not have been read yet: at most one more
        before = delivered(consumer)
        producer.submit(5)
        complete(producer, 5)
        wait_for(lambda: delivered(consumer) >= before + 5, "completions after the reopen")
        assert delivered(consumer) <= before + 5 + 1
    finally:
        unpair(mgr, producer, consumer)


def test_opening_against_a_dead_backend_is_a_clear_error(
    daemon: StorageDaemon, token: irqbypass.Eventfd
) -> None:
    daemon.kill()
    producer = VhostUserProducer(token=token, socket=daemon.socket_path, timeout=0.2, name="vq0")
    with pytest.raises(BackendGoneError, match="nothing listens there") as caught:
        producer.open()
    assert caught.value.errno == errno.ECONNREFUSED
    assert "'vq0'" in caught.value.message
    assert producer.connection is None and producer.stats()["bound"] == 0


def test_a_second_producer_on_the_same_queue_is_refused(
    daemon: StorageDaemon, token: irqbypass.Eventfd
) -> None:
    with (
        irqbypass.Eventfd() as other,
        VhostUserProducer(token=token, socket=daemon.socket_path, name="first") as first,
    ):
        second = VhostUserProducer(token=other, socket=daemon.socket_path, name="second")
        with pytest.raises(irqbypass.BusyError, match="already bound by producer 'first'") as c:
            second.open()
        assert c.value.errno == errno.EBUSY
        # the same virtqueue through the first one's connection, handed over: refused too
        assert first.connection is not None
        handed = VhostUserProducer(token=other, connection=first.connection, name="handed")
        with pytest.raises(irqbypass.BusyError):
            handed.open()
        # another process would get a second connection: qemu-storage-daemon queues it
        # unanswered while the first is open, which the bounded wait turns into an error
        raw = Connection.connect(daemon.socket_path, what="second front-end", timeout=0.5)
        try:
            with pytest.raises(BackendTimeoutError, match="serves another front-end first"):
                raw.request(wire.Request.GET_FEATURES)
        finally:
            raw.close()
        # another virtqueue of the back-end is not refused (qemu-storage-daemon leaves a
        # second front-end waiting, in its backlog or unanswered); each failed open gives
        # its claim back while the back-end's group lives on (else EBUSY, 'q1' itself)
        queue1 = VhostUserProducer(
            token=other, socket=daemon.socket_path, queue=1, name="q1", timeout=0.5
        )
        for _ in range(2):
            with pytest.raises(BackendTimeoutError):
                queue1.open()
        assert first.stats()["backend_lost"] == 0  # the first one is unharmed
        assert first.submit(1) == 1
        complete(first, 1)
    # the first one closed: its claims went with it, and another binds the virtqueue
    with (
        irqbypass.Eventfd() as again,
        VhostUserProducer(token=again, socket=daemon.socket_path, name="after") as after,
    ):
        assert after.stats()["bound"] == 1 and after.stats()["backend_lost"] == 0


def vmm_set_up(
    daemon: StorageDaemon, call: irqbypass.Eventfd, stack: contextlib.ExitStack
) -> tuple[Connection, BlkDriver, irqbypass.Eventfd]:
    """What a VMM does before it hands its connection over: negotiate, share
    memory, set up virtqueue 0 with its own call eventfd."""
    conn = Connection.connect(daemon.socket_path, what="vmm")
    stack.callback(conn.close)
    conn.request(wire.Request.GET_FEATURES)
    conn.request(wire.Request.GET_PROTOCOL_FEATURES)
    conn.request(wire.Request.SET_PROTOCOL_FEATURES, wire.pack_u64(1 << 3))
    conn.reply_ack = True
    conn.request(wire.Request.SET_OWNER, sync=True)
    conn.request(wire.Request.SET_FEATURES, wire.pack_u64(1 << 32 | 1 << 30), sync=True)
    memory = GuestMemory.create(1 << 20)
    stack.callback(memory.close)
    ring = SplitRing(memory, 0, 64)
    region = wire.MemoryRegion(0, memory.size, memory.user_addr)
    conn.request(
        wire.Request.SET_MEM_TABLE, wire.pack_memory_table([region]), [memory.fd], sync=True
    )
    conn.request(wire.Request.SET_VRING_NUM, wire.pack_vring_state(0, 64), sync=True)
    conn.request(wire.Request.SET_VRING_BASE, wire.pack_vring_state(0, 0), sync=True)
    addr = wire.pack_vring_addr(
        0, desc=memory.user(ring.desc_gpa), used=memory.user(ring.used_gpa),
        avail=memory.user(ring.avail_gpa),
    )  # fmt: skip
    conn.request(wire.Request.SET_VRING_ADDR, addr, sync=True)
    kick = stack.enter_context(irqbypass.Eventfd())
    vring_file = wire.pack_vring_file(0, has_fd=True)
    conn.request(wire.Request.SET_VRING_KICK, vring_file, [kick.fileno()], sync=True)
    conn.request(wire.Request.SET_VRING_CALL, vring_file, [call.fileno()], sync=True)
    conn.request(wire.Request.SET_VRING_ENABLE, wire.pack_vring_state(0, 1), sync=True)
    return conn, BlkDriver(ring, memory, ring.end_gpa), kick


def run(driver: BlkDriver, kick: irqbypass.Eventfd, n: int) -> None:
    driver.queue(n)
    kick.write()
    done = 0

    def reaped() -> bool:
        nonlocal done
        done += driver.reap()
        return done >= n

    wait_for(reaped, f"{n} completions")


@pytest.mark.parametrize("reply_ack", [True, False], ids=["reply-ack", "round-trip"])
def test_a_handed_connection_binds_only_its_call(
    daemon: StorageDaemon, token: irqbypass.Eventfd, reply_ack: bool
) -> None:
    with contextlib.ExitStack() as stack:
        vmm_call = stack.enter_context(irqbypass.Eventfd())
        conn, driver, kick = vmm_set_up(daemon, vmm_call, stack)
        assert vmm_call.read(0) == 1  # libvhost-user's kick on SET_VRING_CALL
        run(driver, kick, 3)
        wait_for(lambda: vmm_call.read(0) == 3 or False, "the VMM's own interrupts")

        producer = VhostUserProducer(token=token, connection=conn.fileno(), reply_ack=reply_ack)
        producer.open()
        try:
            assert token.read(0) == 1  # the bind's kick: the phantom the stats count
            run(driver, kick, 4)
            got = 0

            def arrived() -> bool:
                nonlocal got
                got += token.read(0)
                return got >= 4

            wait_for(arrived, "the producer's interrupts")
            producer.stop()
            run(driver, kick, 2)  # while stopped: held
            assert token.read(0) == 0
            producer.start()
            assert token.read(0) == 2  # the kick stood in for one, the replay the other
            assert vmm_call.read(0) == 0  # the VMM's eventfd saw nothing meanwhile
            stats = producer.stats()
            assert (stats["held"], stats["replayed"], stats["absorbed"]) == (2, 2, 1)
        finally:
            producer.close()
        os.fstat(conn.fileno())  # the connection is still the VMM's, and open
        assert conn.alive()
        conn.request(wire.Request.SET_VRING_CALL, wire.pack_vring_file(0, has_fd=True),
                     [vmm_call.fileno()], sync=True)  # fmt: skip
        assert vmm_call.read(0) == 1
        run(driver, kick, 2)
        wait_for(lambda: vmm_call.read(0) == 2 or False, "the VMM's interrupts again")
        assert token.read(0) == 0


def test_the_no_fd_flag_makes_the_backend_drop_the_connection(
    daemon: StorageDaemon, token: irqbypass.Eventfd
) -> None:
    """Why close() unbinds to a holding eventfd: with the no-fd flag,
    libvhost-user panics at the next completion and drops the connection."""
    with contextlib.ExitStack() as stack:
        conn, driver, kick = vmm_set_up(daemon, token, stack)
        conn.request(wire.Request.SET_VRING_CALL, wire.pack_vring_file(0, has_fd=False), sync=True)
        driver.queue(1)
        kick.write()
        wait_for(lambda: not conn.alive(), "the back-end to drop the connection")
        wait_for(lambda: "vu_panic: Error writing eventfd" in daemon.log_tail(20), "its log")


def test_close_drains_before_get_vring_base(
    daemon: StorageDaemon, token: irqbypass.Eventfd
) -> None:
    with VhostUserProducer(token=token, socket=daemon.socket_path, name="vq0") as producer:
        producer.submit(64)
    # close waited for all 64, then GET_VRING_BASE answered base 64 (checked in close)
    assert producer.problem is None and producer.stats()["backend_lost"] == 0
    with VhostUserProducer(token=token, socket=daemon.socket_path, name="vq0") as again:
        assert again.submit(1) == 1  # the back-end kept serving: nothing was dropped
        complete(again, 1)


def test_spawn_runs_a_private_daemon_and_removes_it(
    daemon_usable: None, token: irqbypass.Eventfd
) -> None:
    spec = irqbypass.plugin.EndpointSpec(
        name="blk", kind="vhost-user", side="producer", token=token, irq=None,
        options={"spawn": True}, key_path="producers[0]", file="t.toml",
    )  # fmt: skip
    producer = VhostUserProducer.from_spec(spec)
    producer.open()
    try:
        assert producer.daemon is not None and producer.daemon.running
        directory, pid = producer.daemon.directory, producer.daemon.pid
        producer.submit(3)
        complete(producer, 3)
    finally:
        producer.close()
    assert producer.daemon is None
    assert directory is not None and not os.path.exists(directory)
    assert pid is not None and not os.path.exists(f"/proc/{pid}")
    assert producer.stats()["completed"] == 3


def test_ctrl_c_during_a_swap_waits_until_the_kick_is_accounted(
    daemon: StorageDaemon, token: irqbypass.Eventfd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGINT right after SET_VRING_CALL's ack, before the back-end's kick was
    taken off the holding eventfd, would leave that kick to be replayed as a
    completion; with the guard it is delivered once the swap is accounted."""
    previous = signal.getsignal(signal.SIGINT)
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGINT, previous)
        irqbypass.signalsafe.guard_signals((signal.SIGINT,))
        vmm_call = stack.enter_context(irqbypass.Eventfd())
        conn, _driver, _kick = vmm_set_up(daemon, vmm_call, stack)
        producer = VhostUserProducer(token=token, connection=conn.fileno(), reply_ack=True)
        producer.open()
        stack.callback(producer.close)
        assert producer.connection is not None
        request = producer.connection.request

        def interrupted(*args: object, **kwargs: object) -> bytes:
            reply = request(*args, **kwargs)  # type: ignore[arg-type]
            os.kill(os.getpid(), signal.SIGINT)  # lands right after the ack
            return reply

        monkeypatch.setattr(producer.connection, "request", interrupted)
        with pytest.raises(KeyboardInterrupt):
            producer.stop()
        monkeypatch.undo()
        assert producer.bound_to is not None and producer.bound_to != token.fileno()
        producer.start()
        stats = producer.stats()
        # nothing completed while stopped: no held completion, the start's kick a phantom
        assert (stats["held"], stats["absorbed"], stats["phantom"]) == (0, 0, 2)


@pytest.mark.parametrize("reply_ack", [True, False], ids=["reply-ack", "round-trip"])
@pytest.mark.parametrize("fds", ["one-fd", "dup"])
def test_producers_handed_one_connection_take_turns_on_it(
    daemon: StorageDaemon, reply_ack: bool, fds: str
) -> None:
    """Two producers (virtqueues 0 and 1) handed the VMM's one connection, by
    the same fd or by a dup of it, each opened and closed from its own thread:
    one request at a time on the socket, so neither reads the other's reply
    (a reply waiting before a request is a protocol error)."""
    rounds = 100
    with contextlib.ExitStack() as stack:
        vmm_call = stack.enter_context(irqbypass.Eventfd())
        conn, _driver, _kick = vmm_set_up(daemon, vmm_call, stack)
        second = conn.fileno() if fds == "one-fd" else os.dup(conn.fileno())
        if fds == "dup":
            stack.callback(os.close, second)
        producers = [
            VhostUserProducer(
                token=stack.enter_context(irqbypass.Eventfd()),
                connection=fd,
                queue=queue,
                reply_ack=reply_ack,
                name=f"vq{queue}",
            )
            for queue, fd in ((0, conn.fileno()), (1, second))
        ]
        failures: list[BaseException] = []

        def cycle(producer: VhostUserProducer) -> None:
            try:
                for _ in range(rounds):
                    producer.open()
                    producer.close()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=cycle, args=(p,)) for p in producers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert conn.alive()  # and the VMM's connection still answers in turn
        conn.request(wire.Request.SET_VRING_CALL, wire.pack_vring_file(0, has_fd=True),
                     [vmm_call.fileno()], sync=True)  # fmt: skip
