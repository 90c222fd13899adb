"""The example server (examples/example_server.py) with an in-memory event store, so its streams can be resumed
with `Last-Event-ID` (the client-matrix tests resume through the gateway).

    python -m tests.upstreams.resumable_example --port N
"""

from __future__ import annotations

import argparse

from examples.example_server import build_server
from tests.upstreams.stream_server import MemoryEventStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    build_server("127.0.0.1", args.port, event_store=MemoryEventStore()).run(transport="streamable-http")


if __name__ == "__main__":
    main()
