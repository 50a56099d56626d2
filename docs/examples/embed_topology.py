"""Drive a TOML topology from Python: what ``irqbypass run`` does, in a VMM.

Load the file, load the plugins it names, build and apply the topology (all or
nothing), watch its pairs, and tear it down (``with`` does both ends).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import irqbypass

TOPOLOGY = Path(__file__).with_name("topologies") / "small.toml"


def main(path: Path = TOPOLOGY) -> int:
    try:
        config = irqbypass.load_config(path)  # ConfigError: line and key of the mistake
        # the plugins the file's [plugins] table asks for (None: every installed one)
        host = irqbypass.load_plugins(allow=config.plugins.load, block=config.plugins.block)
        # each plugin's own [plugins.NAME] table, handed to its irqbypass_configure hook
        settings = host.configure(config.plugins.tables, file=config.file)
        for problem in [*host.check_kinds(), *settings]:
            print("warning:", problem, file=sys.stderr)
        with irqbypass.Topology(config, host) as topology:  # build + apply; teardown on exit
            deadline = time.monotonic() + (config.duration or 10.0)
            while not topology.finished and time.monotonic() < deadline:
                time.sleep(0.01)
            for row in topology.status():
                producer = row.producer.config.name if row.producer else "-"
                consumer = row.consumer.config.name if row.consumer else "-"
                state = "paired" if row.paired else "unpaired"
                print(f"{row.token}: {producer} -> {consumer} {state}, fired {row.fired}")
    except irqbypass.IrqBypassError as error:  # ConfigError, PluginError, TopologyError...
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("torn down")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else TOPOLOGY))
