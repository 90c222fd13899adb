"""Request ids in flight per session (or WebSocket, or legacy SSE stream): a second request with an id that is
still in flight there is refused.

MCP forbids a requestor to reuse an id within a session, and servers rely on it: they route an answer by its id (the
Python SDK keys its per-request streams by `str(id)`, so `1` and `"1"` are one id to it), and two requests in flight
with one id get each other's answers. The gateway no longer depends on ids to filter (filters/lists.py), but it does
not let a client play that game either: the duplicate gets 400 / -32600 `duplicate_request_id`, audited.

Ids are the client's: a long one is kept as a digest, and every registry is bounded (a socket or stream forgets its
oldest ids past `MAX_IN_FLIGHT`; a session's ids are held only while their POST is being answered).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from gateway.errors import InvalidRequest
from gateway.jsonrpc import Envelope, JsonRpcId, Kind

MAX_IN_FLIGHT = 1024
_MAX_KEY = 64

Key = str | bytes


def id_key(rpc_id: JsonRpcId) -> Key:
    """The id as the upstream tells ids apart (`str(id)`); a long one as a digest (bytes never equal a str)."""
    text = rpc_id if isinstance(rpc_id, str) else str(rpc_id)
    if len(text) <= _MAX_KEY:
        return text
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def duplicate_id() -> InvalidRequest:
    return InvalidRequest(
        "a request with this id is still in flight in this session; use a new id",
        reason="duplicate_request_id",
        stage="session",
    )


def request_keys(envelopes: Iterable[Envelope], taken: Callable[[Key], bool]) -> list[Key]:
    """The keys of the requests among `envelopes`; raises when one is `taken` or repeats within the message."""
    keys: list[Key] = []
    for env in envelopes:
        if env.kind is Kind.REQUEST:
            key = id_key(env.id)
            if taken(key) or key in keys:
                raise duplicate_id()
            keys.append(key)
    return keys


def distinct_ids(envelopes: Iterable[Envelope]) -> None:
    """A batch outside any session: its requests' ids must still differ from each other."""
    request_keys(envelopes, _nothing)


class InFlightIds:
    """The ids in flight on one WebSocket or legacy SSE stream, released when their answer passes."""

    __slots__ = ("_cap", "_ids")

    def __init__(self, cap: int = MAX_IN_FLIGHT) -> None:
        self._ids: dict[Key, None] = {}
        self._cap = cap

    def claim(self, envelopes: Iterable[Envelope]) -> list[Key]:
        keys = request_keys(envelopes, self._ids.__contains__)
        ids = self._ids
        for key in keys:
            if len(ids) >= self._cap:
                # answers that never come must not pile up: the oldest id is forgotten (and may be reused)
                del ids[next(iter(ids))]
            ids[key] = None
        return keys

    def release(self, rpc_id: JsonRpcId) -> None:
        self._ids.pop(id_key(rpc_id), None)

    def release_keys(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self._ids.pop(key, None)

    def __len__(self) -> int:
        return len(self._ids)


class SessionInFlight:
    """(server, session id) -> ids of the session's requests this process is answering now (Streamable HTTP).

    Per process: a session served by two replicas at once is checked on each alone (the filtering does not rely on
    this check, see the module doc)."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], set[Key]] = {}

    def claim(self, server: str, session_id: str, envelopes: Iterable[Envelope]) -> Callable[[], None] | None:
        """Claim the message's request ids; the returned release ends the claim (None: nothing was claimed)."""
        sk = (server, session_id)
        held = self._sessions.get(sk)
        keys = request_keys(envelopes, held.__contains__ if held else _nothing)
        if not keys:
            return None
        if held is None:
            held = self._sessions[sk] = set()
        held.update(keys)

        def release() -> None:
            held.difference_update(keys)
            if not held and self._sessions.get(sk) is held:
                del self._sessions[sk]

        return release

    def __len__(self) -> int:
        return len(self._sessions)


def _nothing(_: Key) -> bool:
    return False
