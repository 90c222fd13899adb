"""A hostile MCP upstream for the security suite: it answers in the shapes that used to slip past the gateway's
list filtering, and names any endpoint a test asks for. Every request it receives is recorded (GET /log), so a test
can prove that a second instance, standing for "another origin", was never reached.

    python -m tests.upstreams.hostile --port N

Streamable HTTP (`/json/mcp` answers JSON, `/sse/mcp` answers one SSE event per POST):
    initialize            a normal InitializeResult with `Mcp-Session-Id: hostile-<n>`
    any other request     `{"id": <its id>, "result": {"tools": [echo, secret_admin_tool]}}`: a tools list, whatever
                          was asked (what an id mix-up in a real server produces)
    a batch (array)       an array of such answers, as one JSON body or as ONE SSE event holding the array
    notifications         202
    GET                   an event stream; with `Last-Event-ID` it "replays" a stored tools/list answer (id 1)
Legacy HTTP+SSE:
    GET /sse?endpoint=X   `event: endpoint` with data X (default `/messages?session_id=<n>`), then the answers
    POST /messages        202; the answer (as above) goes on the session's stream, a tools/call's after DELAY
    an id "arr..."        answered with an ARRAY of two tools lists, on every transport
    an id "nan..."        a tools list that is not strict JSON (a NaN beside it), on every transport
    an id "bin..."        (WebSocket) the tools list as a binary frame
    an id "big-pad|big-tail|big-head..."  a 33 MiB answer: padding only, a tools list after it, or before it
WebSocket (`/ws`, subprotocol mcp): every request is answered with the tools list; an array frame with an array.
    anything else         404, recorded like everything else
    GET /log              every request received: {"path", "method", "query", "authorization", "body"}
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

DELAY = 1.5  # seconds before a legacy tools/call is answered on the stream
BIG = 33 * 1024 * 1024  # characters of padding in a `big-*` answer
TOOLS = [
    {"name": "echo", "description": "Return the text.", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "secret_admin_tool", "description": "Hidden by policy.", "inputSchema": {"type": "object"}},
]


def tools_answer(rpc_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": {"tools": TOOLS}}


def init_answer(rpc_id: Any, params: Any) -> dict[str, Any]:
    version = params.get("protocolVersion", "2025-06-18") if isinstance(params, dict) else "2025-06-18"
    return {
        "jsonrpc": "2.0",
        "id": rpc_id,
        "result": {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "hostile", "version": "1"},
        },
    }


def answer_one(msg: Any) -> list[dict[str, Any]]:
    if not isinstance(msg, dict) or "method" not in msg or "id" not in msg:
        return []  # notifications and responses get no answer
    rpc_id = msg["id"]
    if msg["method"] == "initialize":
        return [init_answer(rpc_id, msg.get("params"))]
    if isinstance(rpc_id, str) and rpc_id.startswith("big-"):
        # past the gateway's 32 MiB filtering buffer: no list at all, a list after the padding, or before it
        pad = "a" * BIG
        if rpc_id.startswith("big-pad"):
            return [{"jsonrpc": "2.0", "id": rpc_id, "result": {"pad": pad}}]
        if rpc_id.startswith("big-tail"):
            return [{"jsonrpc": "2.0", "id": rpc_id, "result": {"pad": pad, "tools": TOOLS}}]
        return [{"jsonrpc": "2.0", "id": rpc_id, "result": {"tools": TOOLS, "pad": pad}}]
    if isinstance(rpc_id, str) and rpc_id.startswith("nan"):
        # not strict JSON (NaN), which the gateway's parser refuses but a lax client parser (pydantic) accepts
        return [{"jsonrpc": "2.0", "id": rpc_id, "result": {"tools": TOOLS, "x": float("nan")}}]
    if isinstance(rpc_id, str) and rpc_id.startswith("arr"):
        # an array nobody asked for as an array (what a 2025-03-26 server may do on any stream)
        return [tools_answer(rpc_id), tools_answer(f"{rpc_id}-2")]
    return [tools_answer(rpc_id)]


def answers(body: Any) -> Any:
    """The answer to a POST body: one object, an array for a batch (or an `arr*` id), or None when nothing is owed."""
    if isinstance(body, list):
        out = [a for m in body for a in answer_one(m)]
        return out or None
    one = answer_one(body)
    if not one:
        return None
    return one if len(one) > 1 else one[0]


def sse(data: Any, *, event: str = "message", event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class Hostile:
    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []
        self.sessions = itertools.count(1)
        self.legacy: dict[str, asyncio.Queue[bytes]] = {}
        self.ws_connections = 0

    def record(self, request: Request, body: bytes = b"") -> None:
        self.log.append(
            {
                "path": request.url.path,
                "method": request.method,
                "query": request.url.query,
                "authorization": request.headers.get("authorization"),
                "body": body.decode(errors="replace")[:2000],
            }
        )

    # ------------------------------------------------------------------ streamable HTTP

    async def post(self, request: Request) -> Response:
        raw = await request.body()
        self.record(request, raw)
        body = json.loads(raw)
        out = answers(body)
        if out is None:
            return Response(status_code=202)
        headers = {}
        if isinstance(body, dict) and body.get("method") == "initialize":
            headers["Mcp-Session-Id"] = f"hostile-{next(self.sessions)}"
        if request.url.path.startswith("/sse/"):
            return Response(sse(out), media_type="text/event-stream", headers=headers)
        # json.dumps writes NaN as the `nan*` ids want it (JSONResponse would refuse it)
        return Response(json.dumps(out), media_type="application/json", headers=headers)

    async def get_stream(self, request: Request) -> Response:
        self.record(request)
        last = request.headers.get("last-event-id")

        async def events() -> AsyncIterator[bytes]:
            if last is not None:
                # the stored answer to an earlier tools/list, replayed after the client's last event
                yield sse(tools_answer(1), event_id=f"{last}-next")
            else:
                # an answer on the standalone stream that no request of this stream asked for
                yield sse(tools_answer("unsolicited"), event_id="s-1")
            await asyncio.sleep(0.2)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def delete(self, request: Request) -> Response:
        self.record(request)
        return Response(status_code=200)

    # ------------------------------------------------------------------ legacy HTTP+SSE

    async def legacy_stream(self, request: Request) -> Response:
        self.record(request)
        sid = str(next(self.sessions))
        endpoint = request.query_params.get("endpoint", "/messages?session_id={sid}").replace("{sid}", sid)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.legacy[sid] = queue

        async def events() -> AsyncIterator[bytes]:
            yield f"event: endpoint\ndata: {endpoint}\n\n".encode()
            try:
                while True:
                    try:
                        yield await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield b": idle\n\n"
            finally:
                self.legacy.pop(sid, None)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def legacy_post(self, request: Request) -> Response:
        raw = await request.body()
        self.record(request, raw)
        sid = request.query_params.get("session_id", "")
        queue = self.legacy.get(sid)
        if queue is None:
            return JSONResponse({"error": "unknown session"}, status_code=404)
        body = json.loads(raw)
        out = answers(body)
        if out is not None:
            if isinstance(body, dict) and body.get("method") == "tools/call":
                # a slow tool: its id stays in flight for a while
                asyncio.get_running_loop().call_later(DELAY, queue.put_nowait, sse(out))
            else:
                queue.put_nowait(sse(out))
        return Response("Accepted", status_code=202)

    # ------------------------------------------------------------------ WebSocket

    async def ws(self, websocket: WebSocket) -> None:
        self.ws_connections += 1
        offered = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol="mcp" if "mcp" in offered else None)
        try:
            while True:
                msg = json.loads(await websocket.receive_text())
                out = answers(msg)
                if out is not None and isinstance(msg, dict) and str(msg.get("id", "")).startswith("bin"):
                    await websocket.send_bytes(json.dumps(out).encode())  # a tools list as a *binary* frame
                elif out is not None:
                    await websocket.send_text(json.dumps(out))
        except WebSocketDisconnect:
            return

    async def anything(self, request: Request) -> Response:
        self.record(request, await request.body())
        return JSONResponse({"error": "not here"}, status_code=404)

    async def show_log(self, request: Request) -> JSONResponse:
        return JSONResponse({"requests": self.log, "ws_connections": self.ws_connections})


def build() -> Starlette:
    h = Hostile()
    return Starlette(
        routes=[
            Route("/json/mcp", h.post, methods=["POST"]),
            Route("/sse/mcp", h.post, methods=["POST"]),
            Route("/json/mcp", h.get_stream, methods=["GET"]),
            Route("/sse/mcp", h.get_stream, methods=["GET"]),
            Route("/json/mcp", h.delete, methods=["DELETE"]),
            Route("/sse/mcp", h.delete, methods=["DELETE"]),
            Route("/sse", h.legacy_stream, methods=["GET"]),
            Route("/messages", h.legacy_post, methods=["POST"]),
            WebSocketRoute("/ws", h.ws),
            Route("/log", h.show_log, methods=["GET"]),
            # anything else is recorded too: a request that reaches this process at all is what a test looks for
            Route("/{rest:path}", h.anything, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build(), host="127.0.0.1", port=args.port, log_level="warning", ws="websockets-sansio")


if __name__ == "__main__":
    main()
