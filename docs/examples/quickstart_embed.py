import irqbypass
from irqbypass_mock import MockProducer


class Sink(irqbypass.Consumer):
    def add_producer(self, producer: irqbypass.Producer) -> None:
        print("paired with", producer.name, "irq", producer.irq)

    def del_producer(self, producer: irqbypass.Producer) -> None:
        print("unpaired from", producer.name)


manager = irqbypass.Manager()  # no plugins: callbacks are called directly
with irqbypass.Eventfd() as token, MockProducer(token=token, name="dev0", irq=32, count=0) as dev:
    sink = Sink(token=token, name="vcpu0")
    manager.register_consumer(sink)
    manager.register_producer(dev)  # pairs: stop, stop, add, add, start, start
    dev.fire(3)  # the device raises its interrupt three times
    print("eventfd counter:", token.read(timeout=1.0))
    manager.unregister_producer(dev)  # stop, stop, del, del, start, start
    manager.unregister_consumer(sink)
