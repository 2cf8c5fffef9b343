"""The Rust reference relay, on the runtime named (mio by default): no features, the least a
relay can do in Rust here (see rust/src/floor.rs).

    python -m balancer.tools.floors.rust [--runtime mio|tokio] PORT BACKEND_PORT [...]
"""

from __future__ import annotations

import argparse
import signal
import sys

from balancer import _dataplane


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m balancer.tools.floors.rust")
    parser.add_argument("--runtime", choices=("mio", "tokio"), default="mio")
    parser.add_argument("port", type=int)
    parser.add_argument("backends", type=int, nargs="+", metavar="BACKEND_PORT")
    args = parser.parse_args(argv)
    # Stopped by SIGINT or SIGTERM, even where SIGINT came ignored (a shell's background job):
    # the relay asks Python whether a signal came each time one interrupts its wait.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    _dataplane.floor(args.runtime, args.port, [("127.0.0.1", p) for p in args.backends])


if __name__ == "__main__":
    main(sys.argv[1:])
