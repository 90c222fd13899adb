"""The caller's tools filter on a long-lived stream (a WebSocket, a legacy HTTP+SSE stream).

Answers on these streams arrive apart from the request that caused them, so they are not matched to it: every
message shaped like a tools list is filtered for the stream's principal (filters/lists.py says why). The filter is
the one authz would give a `tools/list` of that principal under the policy in force now, worked out once per policy
snapshot. Fail closed: when authz refuses (the route left the policy, the scope no longer allows listing, the
credential expired) the caller is shown no tools, never all of them.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.filters.lists import Transform, apply, drop_tools, may_hold_list
from gateway.jsonrpc import Envelope, Kind, Message
from gateway.policy.store import PolicyStore
from gateway.transports.inflight import InFlightIds


class CallerLists:
    __slots__ = ("_active", "_origin", "_policy", "_transform")

    def __init__(self, policy: PolicyStore, origin: RequestContext) -> None:
        self._policy = policy
        self._origin = origin  # the request that opened the stream: its principal is the stream's
        self._active: Any = None
        self._transform: Transform | None = None

    async def transform(self) -> Transform | None:
        active = self._policy.active
        if active is self._active:
            return self._transform
        origin = self._origin
        server = active.snapshot.servers.get(origin.server_name)
        transform: Transform | None = drop_tools
        if server is not None and origin.principal is not None:
            probe = RequestContext(
                request_id=origin.request_id,
                snapshot=active.snapshot,
                server_name=origin.server_name,
                server=server,
                client_ip=origin.client_ip,
                transport=origin.transport,
                http_method="POST",
                headers=origin.headers,
                principal=origin.principal,
                message=Message([Envelope(Kind.REQUEST, 0, "tools/list")]),
            )
            try:
                # authz alone: this is no request of its own (no limits, no audit record)
                await active.chain.admit(probe, ("authz",))
                transform = probe.transform
            except GatewayError:
                transform = drop_tools
        self._active, self._transform = active, transform
        return transform

    async def pass_on(self, text: str, in_flight: InFlightIds) -> str | None:
        """An upstream message on its way to the caller: an answer ends its request's flight, and a tools list in it
        (an object or an array, whatever its id) is filtered. The text to relay (`text` itself when unchanged), or
        None when it must not be relayed: it may hold a list but is not strict JSON (filters/lists.Unfilterable)."""
        holds = may_hold_list(text)
        if not holds and not len(in_flight):
            return text
        try:
            value: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text if not holds or await self.transform() is None else None
        for msg in value if isinstance(value, list) else (value,):
            if isinstance(msg, dict) and "method" not in msg and "id" in msg:
                in_flight.release(msg["id"])
        if not holds:
            return text
        transform = await self.transform()
        if transform is None:
            return text
        new = apply(transform, value)
        return text if new is value else orjson.dumps(new).decode()
