"""The front door: what every client connection is held to before a request handler runs, on both HTTP servers.

Why (issue #14, finding 4): a client could hold a connection, and the memory of whatever it had sent, for as long
as it liked by never finishing a request head or by trickling a body; the keep-alive timer (an hour) was the only
bound. Here:

- a request head must be complete `http.head_timeout_seconds` after its first byte (a fresh connection counts
  from its opening); otherwise the connection gets a 408 and is closed;
- a body may pause at most `http.body_timeout_seconds`, and beyond a first `body_timeout_seconds` of allowance it
  must average `http.body_min_rate` bytes a second (Apache's mod_reqtimeout `MinRate` rule): a body read by a
  handler then fails with a 408, and one nobody reads (the request was already refused) closes the connection;
- a socket peer may hold at most `http.max_connections_per_ip` connections per process; one more gets a 503 and
  is closed at once (peers in `http.trusted_proxies` multiplex many clients and are not capped).

The deadlines cost nothing per request: each connection keeps one timer handle that, when it fires, either acts or
reschedules itself for the deadline in force then (a deadline moves by storing a float).

Design note (why it sits with the hand-written network code, its invariants): gateway/net/README.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from aiohttp.http import HttpVersion11
from prometheus_client import CollectorRegistry, Counter

from gateway.clientip import address_group
from gateway.errors import GatewayError, RequestTimeout, ServiceUnavailable
from gateway.settings import HttpSettings

# after a refused request whose body has not been read, how long the rest of the body is read and dropped before
# the connection closes: closing a socket with unread input resets it, and the reset can destroy the answer
# before the client has read it (aiohttp's `lingering_time` does the same on its side)
LINGER_SECONDS = 5.0
# how long a refused connection (over the per-peer cap) is kept to let its answer reach the client
REFUSED_LINGER_SECONDS = 1.0

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
REFUSAL_REASONS = ("too_many_connections", "head_timeout", "body_timeout")


class BodyTimeout(asyncio.TimeoutError):
    """The request body did not arrive in time (set on the body stream by the connection's deadline).

    A TimeoutError so that aiohttp's lingering read after the answer takes it as the end of the wait."""


@dataclass(frozen=True, slots=True)
class ReadLimits:
    head_seconds: float
    body_seconds: float
    body_min_rate: float  # bytes per second, 0: none

    def body_deadline(self, started: float, last: float, received: int) -> float:
        """When a body that started at `started` and last brought bytes at `last`, `received` so far, is late."""
        deadline = last + self.body_seconds
        if self.body_min_rate > 0:
            deadline = min(deadline, started + self.body_seconds + received / self.body_min_rate)
        return deadline


class FrontDoorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "mcp_gateway_connections_refused_total",
            "Client connections refused or closed by the front door: too_many_connections (per-peer cap), "
            "head_timeout (request head not complete in time), body_timeout (request body too slow)",
            ["reason"],
            registry=registry,
        )
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)


class FrontDoor:
    """One per process: the read limits, the open connections per socket peer, the refusal counters."""

    def __init__(
        self,
        limits: ReadLimits,
        max_per_peer: int,
        exempt: Iterable[str] = (),
        metrics: FrontDoorMetrics | None = None,
    ) -> None:
        self.limits = limits
        self.max_per_peer = max_per_peer
        self._exempt = tuple(ipaddress.ip_network(c, strict=False) for c in exempt)
        self._metrics = metrics
        self.open: dict[str, int] = {}

    def admit(self, peer: str | None) -> bool:
        """Count a new connection from `peer`; False when it is one too many (it is then not counted)."""
        cap = self.max_per_peer
        if cap == 0 or peer is None:
            return True
        key = address_group(peer)
        n = self.open.get(key, 0)
        if n >= cap:
            # the exemption is looked up only past the cap (an address parse per connection otherwise), on the peer's
            # own address, not its /64 (a proxy listed as one IPv6 address must be exempt, and its /64 neighbours
            # not); an exempt peer's count is then inexact, which nothing reads
            if self._is_exempt(peer):
                return True
            self.refused("too_many_connections")
            return False
        self.open[key] = n + 1
        return True

    def release(self, peer: str | None) -> None:
        if peer is None:
            return
        peer = address_group(peer)
        n = self.open.get(peer)
        if n is None:
            return  # not counted (no cap, or an exempt peer past the cap)
        if n <= 1:
            del self.open[peer]
        else:
            self.open[peer] = n - 1

    def _is_exempt(self, peer: str) -> bool:
        if not self._exempt:
            return False
        try:
            ip = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._exempt)

    def refused(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.refused.labels(reason).inc()


def connection_refusal() -> GatewayError:
    return ServiceUnavailable("too many connections from this address", retry_after=1, reason="too_many_connections")


def head_timeout() -> RequestTimeout:
    return RequestTimeout("request head not received in time", reason="head_timeout")


def body_timeout() -> RequestTimeout:
    return RequestTimeout("request body not received in time", reason="body_timeout")


class RefusedConnection(asyncio.Protocol):
    """A connection refused before any request: the answer goes out, the sending side is shut, input is read and
    dropped until the client closes or `REFUSED_LINGER_SECONDS` pass (a plain close with the client's request
    unread would reset the connection and could destroy the answer)."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (cast, not isinstance: uvloop's transports do not derive from asyncio's classes)
        t = self._transport = cast(asyncio.Transport, transport)
        t.write(self._answer)
        if t.can_write_eof():
            t.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSED_LINGER_SECONDS, t.close)

    def data_received(self, data: bytes) -> None:
        return None

    def eof_received(self) -> bool | None:
        return None  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None


def refuse_connection(transport: asyncio.Transport, answer: bytes) -> None:
    """Give `transport` (not yet served by anyone) to a RefusedConnection."""
    protocol = RefusedConnection(answer)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)


async def send_continue(request: web.BaseRequest) -> None:
    """Send `100 Continue` if the client waits for it: call once the request is authenticated, before reading its
    body."""
    if (
        request.version == HttpVersion11
        and request.headers.get("Expect", "").lower() == "100-continue"
        and not request.content.is_eof()
    ):
        await request.writer.write(_CONTINUE)
        request.writer.output_size = 0  # as aiohttp's default handler: the interim answer is not the answer


FRONT_DOOR: web.AppKey[FrontDoor] = web.AppKey("front_door", FrontDoor)


def install(app: web.Application, http_settings: HttpSettings, registry: CollectorRegistry) -> FrontDoor:
    door = FrontDoor(
        ReadLimits(
            http_settings.head_timeout_seconds,
            http_settings.body_timeout_seconds,
            float(http_settings.body_min_rate),
        ),
        http_settings.max_connections_per_ip,
        http_settings.trusted_proxies,
        FrontDoorMetrics(registry),
    )
    app[FRONT_DOOR] = door
    return door
