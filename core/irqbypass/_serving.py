"""Serving peers we do not trust, one request and one answer each, without
blocking: what the control socket and the metrics exporter share.

Every connection is non-blocking and watched by one selector; :meth:`Conversations.serve`
makes progress with those that are ready and returns. Bounded whatever the
peers do: at most ``limit`` connections (at the cap, the oldest one still
sending its request is closed for the newcomer: a real client sends its
request at once), a request of at most ``max_request`` bytes, ``seconds`` to
send it and ``seconds`` again to take the answer from when it is ready (a slow
answer, a long reload, does not eat the peer's time), and an accept that
fails for want of fds rests the listener :data:`PAUSE_SECONDS` instead of
spinning on a listener that stays readable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time
from collections.abc import Callable

__all__ = ["PAUSE_SECONDS", "Conversation", "Conversations"]

#: how long the listener rests when an accept fails for want of fds or memory
PAUSE_SECONDS = 0.25
_SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Conversation:
    """One connection: its request as it arrives, then its answer as it leaves."""

    __slots__ = ("answer", "counted", "deadline", "request", "sock", "started")

    def __init__(self, sock: socket.socket, now: float, seconds: float) -> None:
        self.sock = sock
        self.started = now
        self.deadline = now + seconds
        self.request = bytearray()
        #: what is left to send (None: still reading the request)
        self.answer: memoryview | None = None
        #: whether the answer, once sent whole, counts as a request answered
        self.counted = False


#: ``admit(sock)``: None to hear the peer, or an answer to send it at once (a refusal)
Admit = Callable[[socket.socket], "bytes | None"]
#: ``complete(received, eof)``: the request once whole, else None
Complete = Callable[[bytes, bool], "bytes | None"]


class Conversations:
    """The connections of ``listener`` (non-blocking, listening), answered by
    ``respond(request)``; see the module doc. :meth:`fileno` is readable when
    :meth:`serve` has something to do."""

    def __init__(
        self,
        listener: socket.socket,
        *,
        limit: int,
        seconds: float,
        max_request: int,
        complete: Complete,
        respond: Callable[[bytes], bytes],
        admit: Admit | None = None,
    ) -> None:
        self.listener = listener
        self.limit, self.seconds, self.max_request = limit, seconds, max_request
        self.complete, self.respond, self.admit = complete, respond, admit
        #: connections cut at their deadline, evicted at the cap, or turned away at it
        self.dropped = 0
        self._open: dict[int, Conversation] = {}
        self._paused_until: float | None = None
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ)
        self._wakers: set[int] = set()

    def fileno(self) -> int:
        return self._selector.fileno()

    def __len__(self) -> int:
        return len(self._open)

    def accepting(self) -> bool:
        """Whether the listener is watched (not resting after a shortage of fds)."""
        return self._paused_until is None

    def add_waker(self, fd: int) -> None:
        """Watch ``fd`` too: a byte written to it ends a :meth:`serve` wait."""
        self._wakers.add(fd)
        self._selector.register(fd, selectors.EVENT_READ)

    def timeout(self) -> float | None:
        """Seconds until the next deadline or the listener's rest ends (None: none)."""
        times = [c.deadline for c in self._open.values()]
        if self._paused_until is not None:
            times.append(self._paused_until)
        return max(0.0, min(times) - time.monotonic()) if times else None

    def serve(self, timeout: float | None = 0.0) -> int:
        """Wait up to ``timeout`` (None: as long as it takes) for something to
        do, make progress with every connection ready, accept the waiting
        ones, cut those past their deadline; how many counted answers went
        out whole."""
        answered = 0
        for key, events in self._selector.select(timeout):
            if key.fileobj is self.listener:
                answered += self._accept()
            elif key.fd in self._wakers:
                with contextlib.suppress(OSError):
                    os.read(key.fd, 64)
            else:
                conversation = self._open.get(key.fd)
                if conversation is not None:
                    answered += self._step(conversation, events)
        now = time.monotonic()
        for conversation in [c for c in self._open.values() if c.deadline <= now]:
            self._drop(conversation)
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self._selector.register(self.listener, selectors.EVENT_READ)
        return answered

    def close(self) -> None:
        """Close every connection and the selector (not the listener)."""
        for conversation in list(self._open.values()):
            conversation.sock.close()
        self._open.clear()
        self._selector.close()

    def _accept(self) -> int:
        answered = 0
        for _ in range(self.limit):  # the rest at the next call: the others get a turn
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _SHORTAGE:  # rest instead of spinning on a ready listener
                    self._selector.unregister(self.listener)
                    self._paused_until = time.monotonic() + PAUSE_SECONDS
                break
            sock.setblocking(False)
            if len(self._open) >= self.limit and not self._evict():
                sock.close()  # every slot is taking its answer: this one comes back later
                self.dropped += 1
                continue
            try:
                refusal = self.admit(sock) if self.admit is not None else None
            except OSError:
                sock.close()
                continue
            conversation = Conversation(sock, time.monotonic(), self.seconds)
            self._open[sock.fileno()] = conversation
            self._selector.register(sock, selectors.EVENT_READ)
            if refusal is not None:
                answered += self._reply(conversation, refusal, counted=False)
            else:
                answered += self._step(conversation, selectors.EVENT_READ)  # sent already?
        return answered

    def _evict(self) -> bool:
        """Close the oldest connection still sending its request; whether one was."""
        reading = [c for c in self._open.values() if c.answer is None]
        if not reading:
            return False
        self._drop(min(reading, key=lambda c: c.started))
        return True

    def _drop(self, conversation: Conversation) -> None:
        self.dropped += 1
        self._forget(conversation)

    def _forget(self, conversation: Conversation) -> None:
        self._open.pop(conversation.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conversation.sock)
        conversation.sock.close()

    def _step(self, conversation: Conversation, events: int) -> int:
        """Read or write what the peer is ready for; 1 if a counted answer went out whole."""
        try:
            if conversation.answer is None:
                if events & selectors.EVENT_READ:
                    return self._read(conversation)
            elif events & selectors.EVENT_WRITE:
                return self._send(conversation)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._forget(conversation)
        return 0

    def _read(self, conversation: Conversation) -> int:
        chunk = conversation.sock.recv(self.max_request + 1)
        if chunk:
            conversation.request += chunk
        request = self.complete(bytes(conversation.request), not chunk)
        if request is None:
            if not chunk:
                self._forget(conversation)  # gone without a whole request
            elif len(conversation.request) > self.max_request:
                self._drop(conversation)
            return 0
        return self._reply(conversation, self.respond(request), counted=True)

    def _reply(self, conversation: Conversation, answer: bytes, *, counted: bool) -> int:
        """Queue ``answer``; the peer's time to take it starts now."""
        conversation.answer = memoryview(answer)
        conversation.counted = counted
        conversation.deadline = time.monotonic() + self.seconds
        self._selector.modify(conversation.sock, selectors.EVENT_WRITE)
        return self._step(conversation, selectors.EVENT_WRITE)

    def _send(self, conversation: Conversation) -> int:
        assert conversation.answer is not None
        sent = conversation.sock.send(conversation.answer)
        conversation.answer = conversation.answer[sent:]
        if conversation.answer:
            return 0
        with contextlib.suppress(OSError):
            conversation.sock.shutdown(socket.SHUT_WR)
        self._forget(conversation)
        return 1 if conversation.counted else 0
