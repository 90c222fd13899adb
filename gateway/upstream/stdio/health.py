"""Health of a stdio server: MCP `ping` on its shared process (started when there is none). A per-session server
has no process of its own to ask between sessions; its breaker learns from the sessions' own failures (a process
that cannot start, exits before answering, or does not answer in time)."""

from __future__ import annotations

from gateway.errors import GatewayError
from gateway.policy.servers import ServerPolicy
from gateway.policy.snapshot import Snapshot
from gateway.upstream.health import ProbeFailed
from gateway.upstream.stdio.manager import StdioManager
from gateway.upstream.stdio.process import SpawnFailed


class StdioProbe:
    def __init__(self, manager: StdioManager) -> None:
        self._manager = manager

    def checks(self, server: ServerPolicy) -> bool:
        return server.stdio is not None and server.stdio.process == "shared"

    async def probe(self, name: str, server: ServerPolicy, snapshot: Snapshot, timeout: float) -> None:
        assert server.stdio is not None
        try:
            await self._manager.ping(name, server.stdio, snapshot.source_dir, timeout)
        except SpawnFailed as exc:
            raise ProbeFailed(f"cannot start: {exc}") from None
        except (ConnectionError, GatewayError) as exc:
            raise ProbeFailed(f"no answer to ping: {exc}") from None
