"""How a paired producer's interrupts reach a posted-interrupt descriptor.

The producer is offered a direct posting path (``offer_direct_path``); one
that declines keeps signalling its eventfd, and a relay (a reader on the
process's event loop, not a thread) reads the eventfd and posts what it read.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable

import irqbypass
import irqbypass.exceptions
import irqbypass.plugin

from ._descriptor import Port, PostedDescriptor

__all__ = ["PostingPath"]

log = logging.getLogger("irqbypass.posted")


class PostingPath:
    """The way in for one consumer's producer: direct, or relayed. Counts
    what came through the relay (``relayed``) and what the producer had
    signalled before it switched to the direct path (``early``)."""

    def __init__(
        self,
        token: Hashable,
        label: str,
        note_problem: Callable[[irqbypass.plugin.LoopHandle], None],
    ) -> None:
        self.token = token
        self.label = label
        self._note_problem = note_problem
        self.direct = False
        self.relay: irqbypass.plugin.LoopHandle | None = None
        self.relayed = self.early = 0
        #: the token eventfd was found closed while the pair was open
        self.token_closed = False

    def reset(self) -> None:
        """A new descriptor: its counts start at zero."""
        self.relayed = self.early = 0
        self.token_closed = False

    def offer(self, producer: irqbypass.Producer, descriptor: PostedDescriptor, port: Port) -> None:
        """Offer the direct path; relay the eventfd if the producer declines.
        The consumer's lock is not held here: the producer takes its own lock."""
        self.direct = True  # before the offer: a Ctrl-C inside it still has close() withdraw it
        if producer.offer_direct_path(descriptor.poster(port)):
            # what the producer signalled before it switched (KVM's irqfd also
            # injects an event pending at assignment)
            try:
                early = self._read_token(0)
            except irqbypass.EventfdClosedError:
                early = 0  # nothing can be pending on a closed token
            if early:
                self.early += early
                descriptor.post_port(port, early)
            return
        self.direct = False
        if not isinstance(self.token, irqbypass.Eventfd) or self.token.closed:
            raise irqbypass.exceptions.ConnectError(
                f"{self.label}: producer {producer.name!r} declined "
                "the direct posting path and the token is not an open irqbypass.Eventfd, so "
                "there is nothing to relay from; pair with a producer that posts directly, "
                "or use an eventfd token"
            )
        self.relay = irqbypass.event_loop().add_reader(
            self.token,
            functools.partial(self._on_signalled, descriptor, port),
            owner=f"{self.label} (relay)",
        )

    def withdraw(
        self,
        producer: irqbypass.Producer,
        descriptor: PostedDescriptor | None,
        port: Port | None,
    ) -> None:
        """Take the direct path back, or stop the relay after a last read."""
        if self.direct:
            producer.offer_direct_path(None)
            self.direct = False
        elif self.relay is not None:
            relay, self.relay = self.relay, None
            relay.cancel()  # returns once the callback is not running
            self._note_problem(relay)
            if relay.state != "failed":
                self._relay_once(descriptor, port)  # what came before the detach

    def _read_token(self, timeout: float) -> int:
        token = self.token
        if isinstance(token, irqbypass.Eventfd) and not self.token_closed:
            return token.read(timeout)
        return 0

    def _on_signalled(self, descriptor: PostedDescriptor, port: Port) -> None:
        """The relay, on the loop: the producer signalled the eventfd; post it."""
        if not self._relay_once(descriptor, port):
            relay = self.relay
            if relay is not None:
                relay.cancel()

    def _relay_once(self, descriptor: PostedDescriptor | None, port: Port | None) -> bool:
        """Post what the eventfd holds; False once the token is found closed."""
        try:
            count = self._read_token(0)
        except irqbypass.EventfdClosedError:
            if not self.token_closed:
                self.token_closed = True
                log.error(
                    "%s: its token eventfd was closed while the "
                    "pair was open; the relay stops (close endpoints before their token)",
                    self.label,
                )
            return False
        if count and descriptor is not None and port is not None:
            self.relayed += count
            descriptor.post_port(port, count)
        return True
