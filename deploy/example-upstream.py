"""The example upstream (examples/example_server.py) for containers: listens on all interfaces and accepts the
Host names it is reached by on the container network (the SDK's DNS-rebinding protection would otherwise answer
421 to `Host: example-upstream:9001`).

    python deploy/example-upstream.py --port 9001 --allowed-host example-upstream
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp.server.transport_security import TransportSecuritySettings

from examples.example_server import build_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--allowed-host", action="append", default=[], help="a Host name clients use (repeatable)")
    args = parser.parse_args()
    server = build_server(args.host, args.port)
    names = [*args.allowed_host, "127.0.0.1", "localhost"]
    server.settings.transport_security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[h for name in names for h in (name, f"{name}:{args.port}")],
        allowed_origins=[],
    )
    server.run(transport="streamable-http")


if __name__ == "__main__":
    main()
