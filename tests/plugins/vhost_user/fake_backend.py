"""A hostile vhost-user back-end, run in its own process by the tests.

``python fake_backend.py CONTROL_FD LISTEN_FD [--as-user UID] [--truncate]
[--stall REQUEST] [--corrupt]``: it listens on the bound socket LISTEN_FD
(after dropping to UID, so that SO_PEERCRED shows that user), serves one
front-end enough of the protocol for the producer to open, and reports what it
does as lines on CONTROL_FD:

- ``--truncate``: on SET_MEM_TABLE it tries ``ftruncate(fd, 0)`` on the memory
  and reports ``truncate OK`` or ``truncate EPERM`` (then maps what is left);
- ``--stall NAME``: on request NAME (e.g. SET_VRING_CALL, the n-th one with
  NAME:n) it reports ``stalled NAME`` and answers only once it reads a line
  ``go`` on CONTROL_FD;
- ``--corrupt``: at the first kick it writes a used-ring entry whose head is
  no request (descriptor 1) and reports ``corrupted``.

It never completes a request otherwise, so what is submitted stays in flight.
"""

from __future__ import annotations

import array
import contextlib
import mmap
import os
import select
import socket
import struct
import sys

HEADER = struct.Struct("=III")
REPLY = 0x1 | 0x4
NEED_REPLY = 0x8
NAMES = {
    1: "GET_FEATURES",
    2: "SET_FEATURES",
    3: "SET_OWNER",
    5: "SET_MEM_TABLE",
    8: "SET_VRING_NUM",
    9: "SET_VRING_ADDR",
    10: "SET_VRING_BASE",
    11: "GET_VRING_BASE",
    12: "SET_VRING_KICK",
    13: "SET_VRING_CALL",
    15: "GET_PROTOCOL_FEATURES",
    16: "SET_PROTOCOL_FEATURES",
    17: "GET_QUEUE_NUM",
    18: "SET_VRING_ENABLE",
}
FEATURES = 1 << 32 | 1 << 30
PROTOCOL = 1 << 3 | 1 << 0


class Backend:
    def __init__(self, control: int, argv: list[str]) -> None:
        self.control = control
        self.truncate = "--truncate" in argv
        self.corrupt = "--corrupt" in argv
        self.stall: tuple[str, int] | None = None
        if "--stall" in argv:
            name, _, nth = argv[argv.index("--stall") + 1].partition(":")
            self.stall = (name, int(nth or 1))
        self.seen: dict[str, int] = {}
        self.memory: mmap.mmap | None = None
        self.region_user = 0
        self.used_user = 0
        self.avail_user = 0
        self.kick = -1
        self.calls: list[int] = []

    def report(self, line: str) -> None:
        os.write(self.control, line.encode() + b"\n")

    def wait_go(self) -> None:
        data = b""
        while b"go\n" not in data:
            chunk = os.read(self.control, 64)
            if not chunk:
                sys.exit(0)
            data += chunk

    def serve(self, conn: socket.socket) -> None:
        while True:
            ready = [conn.fileno()] + ([self.kick] if self.kick >= 0 else [])
            readable, _, _ = select.select(ready, [], [])
            if self.kick in readable:
                os.read(self.kick, 8)
                if self.corrupt and self.memory is not None:
                    self.corrupt_used_ring()
            if conn.fileno() not in readable:
                continue
            header, fds = self.receive(conn, HEADER.size)
            if not header:
                return
            request, flags, size = HEADER.unpack(header)
            payload, more = self.receive(conn, size) if size else (b"", [])
            self.handle(conn, request, flags, payload, fds + more)

    def receive(self, conn: socket.socket, n: int) -> tuple[bytes, list[int]]:
        data = b""
        fds: list[int] = []
        while len(data) < n:
            chunk, anc, _flags, _addr = conn.recvmsg(n - len(data), socket.CMSG_SPACE(8 * 4))
            for _level, _kind, raw in anc:
                fds += array.array("i", raw[: len(raw) - len(raw) % 4]).tolist()
            if not chunk:
                return b"", fds
            data += chunk
        return data, fds

    def handle(
        self, conn: socket.socket, request: int, flags: int, payload: bytes, fds: list[int]
    ) -> None:
        name = NAMES.get(request, str(request))
        self.seen[name] = self.seen.get(name, 0) + 1
        if self.stall == (name, self.seen[name]):
            self.report(f"stalled {name}")
            self.wait_go()
        answer: bytes | None = None
        if request == 1:
            answer = struct.pack("=Q", FEATURES)
        elif request == 15:
            answer = struct.pack("=Q", PROTOCOL)
        elif request == 17:
            answer = struct.pack("=Q", 2)
        elif request == 5:
            self.set_mem_table(payload, fds)
        elif request == 9:
            _index, _flags, _desc, used, avail, _log = struct.unpack("=IIQQQQ", payload)
            self.used_user, self.avail_user = used, avail
        elif request == 12:
            self.kick = fds[0]
        elif request == 13:
            self.calls.append(fds[0])
            os.write(fds[0], struct.pack("=Q", 1))  # libvhost-user's kick on a new call fd
        elif request == 11:
            index = struct.unpack("=II", payload)[0]
            answer = struct.pack("=II", index, self.avail_idx())
        if answer is None and flags & NEED_REPLY:
            answer = struct.pack("=Q", 0)
        if answer is not None:
            conn.sendall(HEADER.pack(request, REPLY, len(answer)) + answer)

    def set_mem_table(self, payload: bytes, fds: list[int]) -> None:
        _count, _pad, _gpa, size, user, _offset = struct.unpack("=IIQQQQ", payload[:40])
        self.region_user = user
        fd = fds[0]
        if self.truncate:
            try:
                os.ftruncate(fd, 0)
                self.report("truncate OK")
            except OSError as exc:
                self.report(f"truncate {'EPERM' if exc.errno == 1 else exc.errno}")
        if os.fstat(fd).st_size >= size:
            self.memory = mmap.mmap(fd, size, mmap.MAP_SHARED)

    def avail_idx(self) -> int:
        if self.memory is None:
            return 0
        idx: int = struct.unpack_from("<H", self.memory, self.avail_user - self.region_user + 2)[0]
        return idx

    def corrupt_used_ring(self) -> None:
        assert self.memory is not None
        base = self.used_user - self.region_user
        struct.pack_into("<II", self.memory, base + 4, 1, 0)  # descriptor 1 heads nothing
        struct.pack_into("<H", self.memory, base + 2, 1)
        self.report("corrupted")


def main() -> None:
    control, listen_fd = int(sys.argv[1]), int(sys.argv[2])
    argv = sys.argv[3:]
    listener = socket.socket(fileno=listen_fd)
    if "--as-user" in argv:
        uid = int(argv[argv.index("--as-user") + 1])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    listener.listen(1)  # SO_PEERCRED reports who listened
    backend = Backend(control, argv)
    backend.report(f"listening as {os.getuid()}")
    try:
        conn, _addr = listener.accept()
    except OSError:
        return
    with contextlib.suppress(OSError):  # the front-end went away (refused us, or closed)
        backend.serve(conn)


if __name__ == "__main__":
    main()
