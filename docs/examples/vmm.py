"""A VMM embedding irqbypass with its own eventfds and its own endpoints."""

from __future__ import annotations

import os

import irqbypass
import irqbypass.exceptions


class VectorProducer(irqbypass.Producer):
    """One MSI vector of an emulated device, owned by the VMM."""

    def __init__(self, *, token: irqbypass.Eventfd, irq: int, name: str) -> None:
        super().__init__(token=token, irq=irq, name=name)
        self.masked = False
        self.posted_to: irqbypass.Consumer | None = None

    def add_consumer(self, consumer: irqbypass.Consumer) -> None:
        self.posted_to = consumer  # e.g. program the remapping entry

    def del_consumer(self, consumer: irqbypass.Consumer) -> None:
        self.posted_to = None

    def stop(self) -> None:
        self.masked = True  # quiesce: mask the vector while the route changes

    def start(self) -> None:
        self.masked = False


class InjectConsumer(irqbypass.Consumer):
    """The VMM's injection path for one guest interrupt line."""

    def __init__(self, *, token: irqbypass.Eventfd, gsi: int, name: str) -> None:
        super().__init__(token=token, name=name)
        self.gsi = gsi

    def add_producer(self, producer: irqbypass.Producer) -> None:
        if producer.irq == 0:
            raise OSError(22, "vector has no host irq")  # fails the connect

    def del_producer(self, producer: irqbypass.Producer) -> None:
        pass


def main() -> None:
    # The VMM creates and owns its eventfds, as it does for KVM_IRQFD.
    device_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    listener_fd = os.dup(device_fd)  # say, received over a socket by another thread
    try:
        # Borrowed: closing these wrappers leaves the fds open; the VMM closes them.
        device_token = irqbypass.Eventfd.from_fd(device_fd, owned=False)
        listener_token = irqbypass.Eventfd.from_fd(listener_fd, owned=False)
        print("same eventfd, same token:", device_token == listener_token)

        manager = irqbypass.Manager()  # or irqbypass.Manager(irqbypass.load_plugins())
        vector = VectorProducer(token=device_token, irq=42, name="nic0-msix3")
        line = InjectConsumer(token=listener_token, gsi=27, name="gsi27")
        try:
            manager.register_producer(vector)
            manager.register_consumer(line)
        except irqbypass.exceptions.ConnectError as exc:
            print("not paired:", exc, "cause:", repr(exc.__cause__))
        except irqbypass.exceptions.CallbackError as exc:
            print("registered, but a callback failed:", exc, exc.errors)
        except irqbypass.BusyError as exc:  # TokenInUseError, AlreadyRegisteredError
            print("token taken:", exc, "errno", exc.errno)
        print("paired:", vector.consumer is line, "masked:", vector.masked)

        manager.unregister_consumer(line)
        manager.unregister_producer(vector)
        print("unregister again:", manager.unregister_producer(vector))
        device_token.close()  # borrowed: a no-op for the fd
        listener_token.close()
    finally:
        os.close(listener_fd)
        os.close(device_fd)


if __name__ == "__main__":
    main()
