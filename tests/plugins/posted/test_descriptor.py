"""The descriptor: pi_desc layout to the bit, VT-d posting rules, sync, concurrency."""

from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess
import threading
from pathlib import Path

import irqbypass
import pytest
from irqbypass_posted import (
    DESCRIPTOR_SIZE,
    RECORD_SIZE,
    Port,
    PostedDescriptor,
)

pytestmark = pytest.mark.usefixtures("no_fd_leak")

# Linux arch/x86/include/asm/posted_intr.h, the bitfield form of the control word.
C_PROBE = r"""
#include <stdio.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <stdlib.h>

struct pi_desc {
    uint64_t pir[4];
    union {
        struct {
            uint16_t on : 1, sn : 1, rsvd_1 : 14;
            uint8_t nv;
            uint8_t rsvd_2;
            uint32_t ndst;
        };
        uint64_t control;
    };
    uint32_t rsvd[6];
} __attribute__((aligned(64)));

int main(int argc, char **argv) {
    struct pi_desc d;
    memset(&d, 0, sizeof d);
    d.on = atoi(argv[1]);
    d.sn = atoi(argv[2]);
    d.nv = atoi(argv[3]);
    d.ndst = strtoul(argv[4], 0, 0);
    for (int i = 5; i < argc; i++) {
        int v = atoi(argv[i]);
        d.pir[v / 64] |= 1ULL << (v % 64);
    }
    printf("%zu %zu %zu %zu %zu\n", sizeof d, _Alignof(struct pi_desc),
           offsetof(struct pi_desc, control), offsetof(struct pi_desc, ndst),
           offsetof(struct pi_desc, rsvd));
    for (size_t i = 0; i < sizeof d; i++) printf("%02x", ((unsigned char *)&d)[i]);
    printf("\n");
    return 0;
}
"""

CASES = [
    # on, sn, nv, ndst, vectors
    (0, 0, 0, 0, []),
    (1, 0, 0xF2, 0, [0]),
    (0, 1, 0xF1, 0xDEADBEEF, [255]),
    (1, 1, 0x20, 0x0100, [32, 33, 63, 64, 127, 128, 200]),
    (1, 0, 0xFF, 0xFFFFFFFF, list(range(0, 256, 7))),
]


def state(on: int, sn: int, nv: int, ndst: int, vectors: list[int]) -> bytes:
    """A descriptor in exactly this state, built with posts, SN and syncs."""
    with PostedDescriptor(nv=nv, ndst=ndst, sn=True) as d:
        for v in vectors:
            d.post(v)  # SN set: PIR bits, no ON
        assert not d.on
        if on:
            assert vectors, "ON is set by a post, so an ON state needs a vector"
            d.post(vectors[0], urgent=True)  # urgent: sets ON despite SN
        if not sn:
            d.set_sn(False)  # only used where ON is set already, so it adds nothing
        assert (d.on, d.sn) == (bool(on), bool(sn))
        return d.raw()


def expected_bytes(on: int, sn: int, nv: int, ndst: int, vectors: list[int]) -> bytes:
    raw = bytearray(64)
    for v in vectors:
        raw[v // 8] |= 1 << (v % 8)
    raw[32] = on | sn << 1
    raw[34] = nv
    raw[36:40] = ndst.to_bytes(4, "little")
    return bytes(raw)


@pytest.mark.parametrize(
    ("on", "sn", "nv", "ndst", "vectors"),
    [
        (1, 0, 0xF2, 0, [0]),
        (0, 1, 0xF1, 0xDEADBEEF, [255]),
        (1, 1, 0x20, 0x0100, [32, 33, 63, 64, 127, 128, 200]),
        (0, 1, 0, 0, []),
        (1, 0, 0xFF, 0xFFFFFFFF, list(range(0, 256, 7))),
    ],
)
def test_bytes_are_exact(on: int, sn: int, nv: int, ndst: int, vectors: list[int]) -> None:
    assert state(on, sn, nv, ndst, vectors) == expected_bytes(on, sn, nv, ndst, vectors)


def test_field_positions_by_bit_number() -> None:
    """ON is bit 256, SN bit 257, NV bits 272-279, NDST bits 288-319."""
    with PostedDescriptor(nv=0xAB, ndst=0x12345678, sn=True) as d:
        d.post(5, urgent=True)
        word = int.from_bytes(d.raw(), "little")
    assert word >> 5 & 1 and word & ((1 << 256) - 1) == 1 << 5
    assert word >> 256 & 1 == 1  # ON
    assert word >> 257 & 1 == 1  # SN
    assert word >> 258 & ((1 << 14) - 1) == 0  # rsvd_1
    assert word >> 272 & 0xFF == 0xAB  # NV
    assert word >> 280 & 0xFF == 0  # rsvd_2
    assert word >> 288 & 0xFFFFFFFF == 0x12345678  # NDST
    assert word >> 320 == 0  # rsvd[6]


def test_layout_matches_the_c_struct(tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed; the byte-exact tests above still check the layout")
    source = tmp_path / "probe.c"
    source.write_text(C_PROBE)
    binary = tmp_path / "probe"
    subprocess.run([gcc, "-std=gnu11", "-o", str(binary), str(source)], check=True)
    for on, sn, nv, ndst, vectors in CASES:
        if on and not vectors:
            continue
        out = subprocess.run(
            [str(binary), str(on), str(sn), str(nv), str(ndst), *map(str, vectors)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        assert out[0] == "64 64 32 36 40"
        assert state(on, sn, nv, ndst, vectors).hex() == out[1], (on, sn, nv, ndst, vectors)


def test_mapping_is_64_byte_aligned() -> None:
    with PostedDescriptor() as d:
        view = (ctypes.c_char * DESCRIPTOR_SIZE).from_buffer(d._mm)
        try:
            assert ctypes.addressof(view) % 64 == 0
        finally:
            del view


@pytest.mark.parametrize("path", ["post", "poster", "post_port"])
@pytest.mark.parametrize(("on", "sn", "urgent"), list(itertools.product([0, 1], repeat=3)))
def test_posting_rule(on: int, sn: int, urgent: int, path: str) -> None:
    """VT-d: PIR bit always; notify (and set ON) iff ON was clear and (URG or !SN).
    The same rule holds for every way in: post(), the direct path, the relay's."""
    with PostedDescriptor(sn=True) as d:
        if on:
            d.post(1, urgent=True)
        if sn:
            d.set_sn(True)
        else:
            d.set_sn(False)  # PIR is empty unless ON is already set: no new notification
        assert (d.on, d.sn) == (bool(on), bool(sn))
        before_notified = d.counters()["notified"]
        d.wait(0)  # take earlier notifications
        port = Port(77, urgent=bool(urgent))
        if path == "post":
            d.post(77, urgent=bool(urgent))
        elif path == "poster":
            d.poster(port)()
        else:
            d.post_port(port, 3)
        expect = not on and (bool(urgent) or not sn)
        assert d.wait(0) == (1 if expect else 0)
        assert d.counters()["notified"] == before_notified + expect
        assert d.pir >> 77 & 1
        assert d.on == bool(on or expect)
        assert d.sn == bool(sn)


def test_notifications_coalesce_until_sync() -> None:
    with PostedDescriptor() as d:
        for i in range(1000):
            assert d.post(32 + i % 3) == (i == 0)
        assert d.wait(0) == 1
        result = d.sync()
        assert result.posts == {32: 334, 33: 333, 34: 333}
        assert result.vector_list == [32, 33, 34]
        assert not d.on and d.pir == 0
        assert d.post(32)  # ON was cleared by sync: the next post notifies again
        assert d.wait(0) == 1
        assert d.counters() == {
            "posted": 1001,
            "notified": 2,
            "syncs": 1,
            "vectors_drained": 3,
            "posts_drained": 1000,
            "pending": 1,
        }
        assert d.posted_per_vector() == {32: 335, 33: 333, 34: 333}
        assert d.drained_per_vector() == {32: 334, 33: 333, 34: 333}


def test_sync_fills_irr_and_acknowledge_takes_highest_first() -> None:
    with PostedDescriptor() as d:
        for v in (40, 200, 41, 200):
            d.post(v)
        result = d.sync()
        assert result.posts == {40: 1, 41: 1, 200: 2} and result.total_posts == 4
        assert d.irr == 1 << 40 | 1 << 41 | 1 << 200
        assert [d.acknowledge() for _ in range(4)] == [200, 41, 40, None]
        assert d.sync().vectors == 0


def test_clearing_sn_with_pending_vectors_notifies() -> None:
    with PostedDescriptor(sn=True) as d:
        assert not d.post(50) and not d.on
        assert d.wait(0) == 0
        assert d.set_sn(False)  # vCPU scheduled in: PIR has a vector, so ON + notify
        assert d.on and d.wait(0) == 1
        assert not d.set_sn(True) and not d.set_sn(False)  # ON already set: nothing new
        d.sync()
        assert not d.set_sn(False)  # nothing pending: no notification


def test_drain_is_sync_then_acknowledging_everything() -> None:
    with PostedDescriptor() as d, PostedDescriptor() as e:
        for desc in (d, e):
            for v in (40, 200, 41, 200):
                desc.post(v)
        assert d.drain() == 4
        e.sync()
        while e.acknowledge() is not None:
            pass
        assert (d.raw(), d.irr, d.counters()) == (e.raw(), e.irr, e.counters())
        assert d.drained_per_vector() == {40: 1, 41: 1, 200: 2}
        assert d.drain() == 0 and d.counters()["syncs"] == 2


def test_post_many_and_ports_hold() -> None:
    with PostedDescriptor() as d:
        port = Port(90)
        post = d.poster(port)
        d.hold(port)
        post()
        post()
        assert d.post_port(port, 5) is False
        assert d.pir == 0 and port.held_count == 7 and d.wait(0) == 0
        assert d.release_port(port) == 7
        assert d.wait(0) == 1
        assert d.sync().posts == {90: 7}
        assert d.post_many(91, 3) and d.sync().posts == {91: 3}


@pytest.mark.parametrize("file", [False, True], ids=["anonymous", "file-process-lock"])
def test_a_poster_after_its_first_post_leaves_the_same_state(file: bool, tmp_path: Path) -> None:
    """A poster whose bit and ON are set only counts (anonymous: armed); a
    sync, a hold, SN, an urgent port and a close each send its next post the
    whole way, with the same descriptor state as the slow path leaves."""
    path = str(tmp_path / "pi") if file else None
    with PostedDescriptor(file=path, lock="process" if file else None) as d:
        port, other = Port(60), Port(61)
        post, post_other = d.poster(port), d.poster(other)
        post()  # ON 0 -> 1: notifies
        for _ in range(5):
            post()  # coalesced: counted, no notification
        assert d.wait(0) == 1 and d.pir == 1 << 60 and d.counters()["pending"] == 6
        assert d.sync().posts == {60: 6} and not d.on and d.pir == 0
        post()  # after the sync: the bit again, and a notification
        assert d.pir == 1 << 60 and d.on and d.wait(0) == 1
        post_other()  # another vector while ON is set: its bit, no notification
        assert d.pir == 1 << 60 | 1 << 61 and d.wait(0) == 0
        d.hold(port)
        post()  # held: counted in the port, not in the descriptor
        assert port.held_count == 1 and d.posted_per_vector() == {60: 7, 61: 1}
        assert d.release_port(port) == 1
        assert d.sync().posts == {60: 2, 61: 1}
        d.set_sn(True)
        post()  # SN: the bit, no ON, no notification
        post()
        assert d.pir == 1 << 60 and not d.on and d.wait(0) == 0
        assert d.set_sn(False) and d.wait(0) == 1  # clearing SN notifies once
        urgent = d.poster(Port(62, urgent=True))
        d.sync()
        d.set_sn(True)
        urgent()  # urgent: notifies despite SN
        assert d.on and d.wait(0) == 1
        assert d.sync().posts == {62: 1}
        assert d.counters()["posted"] == d.counters()["posts_drained"] == 12
        d.set_sn(False)
        post()
        post()  # (anonymous: armed as the descriptor closes)
        assert d.on and d.counters()["pending"] == 2
    with pytest.raises(irqbypass.IrqBypassError, match="closed"):
        post()  # armed before the close or not: refused
    with pytest.raises(irqbypass.IrqBypassError, match="closed"):
        post_other()


def test_control_fields_and_refusals() -> None:
    with PostedDescriptor(nv=1, ndst=2) as d:
        d.set_nv(0xF1)
        d.set_ndst(0xFFFFFFFF)
        assert (d.nv, d.ndst) == (0xF1, 0xFFFFFFFF)
        with pytest.raises(irqbypass.InvalidEndpointError, match="0 to 255"):
            d.post(256)
        with pytest.raises(irqbypass.InvalidEndpointError, match="0 to 255"):
            d.set_nv(300)
    with pytest.raises(irqbypass.InvalidEndpointError, match="u32"):
        PostedDescriptor(ndst=1 << 32)
    with pytest.raises(irqbypass.InvalidEndpointError, match="file-backed"):
        PostedDescriptor(lock="file")


@pytest.mark.parametrize("backing", ["anonymous", "file"])
def test_two_posters_and_a_syncer_count_exactly(backing: str, tmp_path: Path) -> None:
    """Every post is drained exactly once, per vector; every notification is
    an ON 0->1 and reaches the eventfd. Bounded by operation counts."""
    per_thread = 20_000
    file = str(tmp_path / "pid") if backing == "file" else None
    with PostedDescriptor(file=file) as d:
        port_a, port_b = Port(40), Port(41, urgent=True)
        post_a, post_b = d.poster(port_a), d.poster(port_b)
        drained: dict[int, int] = {}
        results = []
        notifications = 0
        done = threading.Event()

        def first() -> None:
            for i in range(per_thread):
                post_a() if i % 2 else post_b()

        def second() -> None:
            for i in range(per_thread):
                if i % 4 == 0:
                    d.post(255)
                else:
                    post_b()

        def syncer() -> None:
            nonlocal notifications
            while not done.is_set():
                notifications += d.wait(0.01)
                results.append(d.sync())

        threads = [threading.Thread(target=f) for f in (first, second)]
        sync_thread = threading.Thread(target=syncer)
        sync_thread.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        sync_thread.join()
        notifications += d.wait(0)
        results.append(d.sync())
        for r in results:
            assert set(r.posts) == set(r.vector_list)
            assert all(n >= 1 for n in r.posts.values())
            for v, n in r.posts.items():
                drained[v] = drained.get(v, 0) + n
        assert drained == {
            40: per_thread // 2,
            41: per_thread // 2 + per_thread * 3 // 4,
            255: per_thread // 4,
        }
        counters = d.counters()
        assert counters["posted"] == counters["posts_drained"] == 2 * per_thread
        assert counters["pending"] == 0 and d.pir == 0 and not d.on
        assert counters["notified"] == notifications
        assert counters["notified"] <= counters["syncs"]
        assert counters["vectors_drained"] == sum(len(r.posts) for r in results)


def test_file_backed_descriptor_is_0600_exclusive_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "vcpu0.pid"
    with PostedDescriptor(file=str(path), nv=0xF2) as d:
        info = path.stat()
        assert info.st_mode & 0o777 == 0o600 and info.st_size == RECORD_SIZE
        assert path.read_bytes().startswith(b"IRQBPIR1")  # a record naming the memory
        assert d.lock_mode == "file"
        d.post(33)
        with pytest.raises(irqbypass.DeviceError, match="already exists") as exc:
            PostedDescriptor(file=str(path))
        assert exc.value.errno == 17
        with PostedDescriptor.attach(str(path)) as other:
            assert other.raw() == d.raw() and other.nv == 0xF2
            assert other.sync().posts == {33: 1}
        assert d.counters()["posts_drained"] == 1  # the counts live in the mapping
    assert not path.exists()


def test_attach_refuses_what_is_not_a_descriptor(tmp_path: Path) -> None:
    with pytest.raises(irqbypass.DeviceError, match="cannot open") as exc:
        PostedDescriptor.attach(str(tmp_path / "missing"))
    assert exc.value.errno == 2
    short = tmp_path / "short"
    short.write_bytes(b"IRQBPIR1" * 4)
    with pytest.raises(irqbypass.InvalidEndpointError, match="not a posted-interrupt"):
        PostedDescriptor.attach(str(short))
    blank = tmp_path / "blank"
    blank.write_bytes(bytes(RECORD_SIZE))
    with pytest.raises(irqbypass.InvalidEndpointError, match="magic"):
        PostedDescriptor.attach(str(blank))


def test_notification_write_reports_errors() -> None:
    """The GIL-holding libc write returns -1 and leaves errno, which
    _write_error turns into the OSError os.write would raise."""
    from irqbypass_posted._layout import _write, _write_error

    assert _write(-1, bytes(8), 8) == -1
    assert _write_error().errno == 9  # EBADF
    with irqbypass.Eventfd() as efd:
        assert _write(efd.fileno(), (5).to_bytes(8, "little"), 8) == 8
        assert efd.read(0) == 5


def test_failing_notification_eventfd_leaves_no_file_or_fd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of fds when the notification eventfd is made: the backing file is
    removed and its fd closed, or the next open would find it 'left behind'."""
    path = tmp_path / "vcpu0.pid"

    def no_more_fds() -> irqbypass.Eventfd:
        raise irqbypass.DeviceError("eventfd: too many open files", errno=24)

    monkeypatch.setattr(irqbypass, "Eventfd", no_more_fds)
    with pytest.raises(irqbypass.DeviceError, match="too many open files"):
        PostedDescriptor(file=str(path))
    assert not path.exists()
    monkeypatch.undo()
    with PostedDescriptor(file=str(path)) as d:  # the path is free again
        assert d.path == str(path)
