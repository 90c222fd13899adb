"""`notifications/*/list_changed` on a policy reload that changes what an open session's caller may list.

Lists are filtered for their caller (tool rules, scopes, access rules: gateway/filters/authz.py), so a reload can
change a caller's tools, resources or prompts list without the upstream's changing. A client learns that only from a
`list_changed` notification, which the upstream cannot send (it knows nothing of the policy). So every session GET
stream relayed by this process is watched: when it opens, its caller's list view (`Authz.list_view`, the inputs of
the caller's list filter and scope checks, memoized per caller kind) is noted; after each successful reload the
view under the new policy is compared with it, and each list kind whose view changed gets its notification on the
stream, written between the upstream's events (gateway/upstream/inbox.py). A stream whose API key the reload revoked
(or removed, or re-hashed) is ended instead.

Only streams that pass through this process are notified. With several replicas each reloads its own policy files
and notifies the streams it relays, so every open stream is notified once when all replicas load the same edit; a
replica that has not (yet) loaded it notifies its streams when it does. Sessions without an open GET stream are not
told (they see the new lists on their next request). Legacy HTTP+SSE streams (each is its session) are watched the
same way (gateway/transports/legacy_sse.py); WebSocket sessions are not notified (their key is re-checked on every
frame instead: gateway/transports/websocket.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import structlog

from gateway.auth.principal import Principal
from gateway.filters.authz import Authz, ListView
from gateway.policy.store import Active
from gateway.upstream.inbox import Inbox
from gateway.upstream.sse import encode_event

log = structlog.get_logger("gateway.transports.listchanged")

KINDS: tuple[str, ...] = ("tools", "resources", "prompts")
EVENTS: dict[str, bytes] = {
    kind: encode_event(
        data=orjson.dumps({"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"}).decode(),
        event="message",
    )
    for kind in KINDS
}


def authz_of(active: Active) -> Authz | None:
    for flt in active.chain.filters:
        if isinstance(flt, Authz):
            return flt
    return None


@dataclass(slots=True)
class _Watched:
    server: str
    principal: Principal
    inbox: Inbox
    view: ListView


class ListWatch:
    """The session GET streams this process relays, each with its caller's list view under the policy in force."""

    def __init__(self) -> None:
        self._streams: dict[int, _Watched] = {}
        self.sent = 0
        self.closed = 0  # streams ended because their key was no longer valid

    def __len__(self) -> int:
        return len(self._streams)

    def watch(self, active: Active, server: str, principal: Principal, inbox: Inbox) -> Callable[[], None] | None:
        """Watch a stream that just opened; returns what stops watching it (None: no authorization stage)."""
        authz = authz_of(active)
        if authz is None:
            return None
        key = id(inbox)
        self._streams[key] = _Watched(server, principal, inbox, authz.list_view(server, principal))

        def unwatch() -> None:
            self._streams.pop(key, None)

        return unwatch

    def follow(self, active: Active, server: str, principal: Principal, inbox: Inbox) -> Callable[[], None]:
        """Watch a stream that just opened (`watch`) and end it with its credential (a key's expiry, a token's
        `exp`), as the requests would be refused then; returns the one release of both (GET and legacy streams)."""
        unwatch = self.watch(active, server, principal, inbox)
        expires_at = principal.expires_at
        timer = (
            asyncio.get_running_loop().call_later(max(0.0, expires_at - time.time()), inbox.close)
            if expires_at is not None
            else None
        )

        def release() -> None:
            if unwatch is not None:
                unwatch()
            if timer is not None:
                timer.cancel()

        return release

    def key_revoked(self, key_id: str) -> int:
        """A key this process revoked (admin API): end its streams now; returns how many."""
        ended = 0
        for key, watched in list(self._streams.items()):
            if watched.principal.key_id == key_id and watched.principal.key_source is not None:
                watched.inbox.close()
                del self._streams[key]
                ended += 1
        self.closed += ended
        if ended:
            log.info("streams of a revoked key closed", key_id=key_id, streams=ended)
        return ended

    def reloaded(self, active: Active) -> int:
        """After a reload: notify each watched stream of the lists whose view changed; returns how many were sent."""
        authz = authz_of(active)
        if authz is None or not self._streams:
            return 0
        sent = 0
        for key, watched in list(self._streams.items()):
            if not authz.key_still_valid(watched.principal):
                # the stream's API key was revoked, removed or re-hashed by this reload: its requests are refused
                # from now on, and the stream must not keep delivering the session's server messages either
                watched.inbox.close()
                del self._streams[key]
                self.closed += 1
                log.info(
                    "session stream of a revoked key closed", server=watched.server, key_id=watched.principal.key_id
                )
                continue
            view = authz.list_view(watched.server, watched.principal)
            if view == watched.view:
                continue
            for kind, before, after in zip(KINDS, watched.view, view, strict=True):
                if before != after and watched.inbox.post(EVENTS[kind]):
                    sent += 1
            watched.view = view
        if sent:
            self.sent += sent
            log.info("list_changed sent after reload", notifications=sent, streams=len(self._streams))
        return sent
