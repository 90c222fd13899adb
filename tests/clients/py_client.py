"""The official Python SDK client (1.x in .venv, 2.x in .venv-mcp2) driving one gateway route, for the client-matrix
tests (tests/e2e/test_client_matrix.py). Run as a subprocess with the SDK's interpreter; prints one JSON object with
what the client saw, which the test asserts on:

    python tests/clients/py_client.py --transport streamable-http|sse|websocket --url URL --key KEY --reader-key KEY

- `call`: `add(2, 40)` with the read+write key;
- `refusal`: `add` with the read-only key (the gateway refuses it), then `tools/list` on the same session, which
  shows whether the session survived the refusal;
- `progress`: `count(3)` with a progress callback;
- `elicitation`: `confirm_action`, whose upstream asks the client (a server-to-client request);
- `resumption` (Streamable HTTP): a `count` call recording its event ids, then the same session resuming after the
  first one (GET with `Last-Event-ID`), which must replay the rest up to the result;
- `session`: the session id and the status of the DELETE the client sent when it closed (Streamable HTTP).

Written against what 1.x and 2.x share (ClientSession, the transports); where they differ it asks the SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import traceback
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

from mcp import ClientSession, types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import ClientMessageMetadata

SDK = version("mcp")
MAJOR = int(SDK.split(".")[0])
if MAJOR >= 2:
    import httpx2 as httpx

    sdk_ws = ws_connect = None  # 2.x has no WebSocket client
else:
    import httpx
    import mcp.client.websocket as sdk_ws
    from websockets.asyncio.client import connect as ws_connect

DEADLINE = 30.0
AFTER_REFUSAL = 10.0


def _error_of(exc: BaseException) -> BaseException:
    """The MCP error inside whatever the SDK raised (1.x wraps transport failures in exception groups)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _error_of(inner)
            if getattr(found, "error", None) is not None:
                return found
        return exc.exceptions[0] if exc.exceptions else exc
    return exc


def _describe(exc: BaseException) -> dict[str, Any]:
    err = _error_of(exc)
    out: dict[str, Any] = {"kind": type(err).__name__, "text": str(err)[:500]}
    data = getattr(err, "error", None)
    if data is not None:
        out["code"] = data.code
        out["reason"] = (data.data or {}).get("reason") if isinstance(data.data, dict) else None
    if isinstance(exc, BaseExceptionGroup):
        out["group"] = True
    return out


class Recorder:
    """httpx event hooks: the session id the gateway issued and the status of every DELETE."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.deletes: list[int] = []

    async def on_response(self, response: Any) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid and self.session_id is None:
            self.session_id = sid
        if response.request.method == "DELETE":
            self.deletes.append(response.status_code)


@contextlib.asynccontextmanager
async def connect(args: argparse.Namespace, key: str, rec: Recorder | None = None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {key}"}
    session_kw: dict[str, Any] = {"elicitation_callback": _elicit}
    async with contextlib.AsyncExitStack() as stack:
        if args.transport == "streamable-http":
            hooks = {"response": [rec.on_response]} if rec is not None else {}
            http = await stack.enter_async_context(httpx.AsyncClient(headers=headers, timeout=30, event_hooks=hooks))
            streams = await stack.enter_async_context(streamable_http_client(args.url, http_client=http))
        elif args.transport == "sse":
            streams = await stack.enter_async_context(sse_client(args.url, headers=headers))
        else:
            assert sdk_ws is not None and ws_connect is not None, "this SDK has no WebSocket client"
            # the SDK's WebSocket client takes no headers; the gateway reads credentials from headers only
            sdk_ws.ws_connect = functools.partial(ws_connect, additional_headers=headers)  # type: ignore[attr-defined]
            streams = await stack.enter_async_context(sdk_ws.websocket_client(args.url.replace("http", "ws", 1)))
        session = await stack.enter_async_context(ClientSession(streams[0], streams[1], **session_kw))
        await session.initialize()
        yield session


ELICITED: list[str] = []


async def _elicit(context: Any, params: Any) -> Any:
    ELICITED.append(params.message)
    return types.ElicitResult(action="accept", content={"confirmed": True})


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def _call_request(name: str, arguments: dict[str, Any]) -> Any:
    req = types.CallToolRequest(method="tools/call", params=types.CallToolRequestParams(name=name, arguments=arguments))
    return types.ClientRequest(req) if MAJOR < 2 else req


async def scenario_refusal(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        async with connect(args, args.reader_key) as s:
            try:
                result = await s.call_tool("add", {"a": 1, "b": 1})
                out["refused"] = {"kind": "none", "isError": result.isError, "text": _text(result)}
            except Exception as exc:
                out["refused"] = _describe(exc)
            try:
                # bounded: a client whose POST writer stopped never gets this answer
                listed = await asyncio.wait_for(s.list_tools(), AFTER_REFUSAL)
                out["after"] = sorted(t.name for t in listed.tools)
            except Exception as exc:
                out["after_error"] = _describe(exc)
    except BaseException as exc:  # the session itself broke: what the client's caller sees
        out["session_error"] = _describe(exc)
    return out


async def scenario_main(args: argparse.Namespace, out: dict[str, Any]) -> None:
    rec = Recorder()
    async with connect(args, args.key, rec) as s:
        out["call"] = _text(await s.call_tool("add", {"a": 2, "b": 40}))
        seen: list[list[float | None]] = []

        async def progress(p: float, total: float | None, message: str | None) -> None:
            seen.append([p, total])

        result = await s.call_tool("count", {"n": 3, "delay": 0.05}, progress_callback=progress)
        out["progress"] = {"events": seen, "result": _text(result)}
        result = await s.call_tool("confirm_action", {"action": "deploy"})
        out["elicitation"] = {"asked": list(ELICITED), "result": _text(result)}
        if args.transport == "streamable-http" and args.resumable:
            out["resumption"] = await _resume(s)
    if args.transport == "streamable-http":
        out["session"] = {"id": rec.session_id, "deletes": rec.deletes}


async def _resume(s: ClientSession) -> dict[str, Any]:
    tokens: list[str] = []

    async def on_token(token: str) -> None:
        tokens.append(token)

    first = await s.send_request(
        _call_request("count", {"n": 3, "delay": 0.05}),
        types.CallToolResult,
        metadata=ClientMessageMetadata(on_resumption_token_update=on_token),
    )
    replayed_tokens: list[str] = []

    async def on_replayed(token: str) -> None:
        replayed_tokens.append(token)

    # the same request resumed after its first event: a GET with Last-Event-ID, answered by the upstream's replay
    replayed = await s.send_request(
        _call_request("count", {"n": 3, "delay": 0.05}),
        types.CallToolResult,
        metadata=ClientMessageMetadata(resumption_token=tokens[0], on_resumption_token_update=on_replayed),
    )
    return {
        "tokens": tokens,
        "first": _text(first),
        "replayed": _text(replayed),
        "replayed_tokens": replayed_tokens,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", required=True, choices=["streamable-http", "sse", "websocket"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--reader-key", required=True)
    parser.add_argument("--resumable", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {"sdk": SDK, "transport": args.transport}
    try:
        async with asyncio.timeout(DEADLINE):
            out["refusal"] = await scenario_refusal(args)
        async with asyncio.timeout(DEADLINE):
            await scenario_main(args, out)
    except BaseException as exc:
        out["fatal"] = _describe(exc)
        out["traceback"] = "".join(traceback.format_exception(exc))[-3000:]
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
