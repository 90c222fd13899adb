"""An upstream that implements every server scenario of the official MCP conformance suite
(`@modelcontextprotocol/conformance`, pinned in tests/conformance/package.json), built on the official SDK's low-level
`Server` so tool schemas, elicitation schemas and capabilities are exactly what the suite checks (FastMCP would
generate them from Python signatures).

    python -m tests.upstreams.conformance_server --port N

What each scenario needs (the suite's `list --server`, and the requirements text of each scenario in its package):
tools `test_*` and `json_schema_2020_12_tool`, resources `test://static-text`, `test://static-binary`,
`test://watched-resource` (subscribable), template `test://template/{id}/data`, prompts `test_*`, completion,
`logging/setLevel`, resumable SSE (an event store, a `retry` interval, a tool that closes its stream mid-call) and
DNS-rebinding protection for a loopback server (Host and Origin allow-lists).

Server-to-client requests (sampling, elicitation) are sent on the session's standalone GET stream, not on the
calling POST's stream: the spec allows both, and the GET stream is the harder path for a proxy. The client opens that
stream right after initializing, concurrently with its first requests, and the SDK's transport drops (stores for a
replay nobody asks for) a message sent while the stream is not open yet. So by default a tool waits, up to
`GET_STREAM_WAIT` seconds, until the calling session's GET stream is open before it sends the request: the suite's
verdict then does not depend on which of two concurrent connections the server happened to see first, directly or
through a proxy, while a GET stream that never arrives (or does not relay) still fails the scenario. `--no-wait`
sends at once, as a server without that care would: then a GET that reaches the server after the POST loses the
request (the race measured by tests/perf/conformance_repeat.py --no-wait).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
from collections.abc import Iterable
from typing import Any

import uvicorn
from mcp import types
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.streamable_http import GET_STREAM_KEY
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyUrl
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.upstreams.stream_server import MemoryEventStore

# 1x1 PNG and a 44-byte silent WAV
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_B64 = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA="
# how long a client waits before it reconnects a stream the server closed (SEP-1699 polling), milliseconds
RETRY_MS = 100
STEP_SECONDS = 0.05
GET_STREAM_WAIT = 10.0

LEVELS: tuple[types.LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)

EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

TOOLS: list[types.Tool] = [
    types.Tool(name="test_simple_text", description="Returns one text block.", inputSchema=EMPTY_SCHEMA),
    types.Tool(name="test_image_content", description="Returns one PNG image block.", inputSchema=EMPTY_SCHEMA),
    types.Tool(name="test_audio_content", description="Returns one WAV audio block.", inputSchema=EMPTY_SCHEMA),
    types.Tool(
        name="test_embedded_resource", description="Returns an embedded text resource.", inputSchema=EMPTY_SCHEMA
    ),
    types.Tool(
        name="test_multiple_content_types",
        description="Returns text, image and embedded resource blocks.",
        inputSchema=EMPTY_SCHEMA,
    ),
    types.Tool(
        name="test_tool_with_logging",
        description="Sends three info log notifications, 50 ms apart, while it runs.",
        inputSchema=EMPTY_SCHEMA,
    ),
    types.Tool(name="test_error_handling", description="Always fails (isError: true).", inputSchema=EMPTY_SCHEMA),
    types.Tool(
        name="test_tool_with_progress",
        description="Reports progress 0, 50, 100 of 100 to the request's progress token.",
        inputSchema=EMPTY_SCHEMA,
    ),
    types.Tool(
        name="test_sampling",
        description="Asks the client for an LLM completion of `prompt` (sampling/createMessage).",
        inputSchema={
            "type": "object",
            "properties": {"prompt": {"type": "string", "description": "what to ask the model"}},
            "required": ["prompt"],
        },
    ),
    types.Tool(
        name="test_elicitation",
        description="Asks the client's user for a username and an email (elicitation/create).",
        inputSchema={
            "type": "object",
            "properties": {"message": {"type": "string", "description": "what to show the user"}},
            "required": ["message"],
        },
    ),
    types.Tool(
        name="test_elicitation_sep1034_defaults",
        description="Elicitation whose schema has a default for every primitive type (SEP-1034).",
        inputSchema=EMPTY_SCHEMA,
    ),
    types.Tool(
        name="test_elicitation_sep1330_enums",
        description="Elicitation with the five enum schema variants (SEP-1330).",
        inputSchema=EMPTY_SCHEMA,
    ),
    types.Tool(
        name="json_schema_2020_12_tool",
        description="Tool with JSON Schema 2020-12 features",
        inputSchema={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {
                "address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                }
            },
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name="test_reconnection",
        description="Closes its response stream mid-call; the result arrives after the client resumes (SEP-1699).",
        inputSchema=EMPTY_SCHEMA,
    ),
]

ELICIT_USER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}

ELICIT_DEFAULTS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
}

ELICIT_ENUMS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
}

RESOURCES: list[types.Resource] = [
    types.Resource(
        uri=AnyUrl("test://static-text"), name="static-text", description="A static text.", mimeType="text/plain"
    ),
    types.Resource(
        uri=AnyUrl("test://static-binary"), name="static-binary", description="A 1x1 PNG.", mimeType="image/png"
    ),
    types.Resource(
        uri=AnyUrl("test://watched-resource"),
        name="watched-resource",
        description="A resource clients may subscribe to.",
        mimeType="text/plain",
    ),
]
TEMPLATE = types.ResourceTemplate(
    uriTemplate="test://template/{id}/data",
    name="template-data",
    description="JSON data for an id.",
    mimeType="application/json",
)
TEMPLATE_RE = re.compile(r"^test://template/([^/]+)/data$")

PROMPTS: list[types.Prompt] = [
    types.Prompt(name="test_simple_prompt", description="A prompt without arguments."),
    types.Prompt(
        name="test_prompt_with_arguments",
        description="A prompt with two required arguments.",
        arguments=[
            types.PromptArgument(name="arg1", description="First argument", required=True),
            types.PromptArgument(name="arg2", description="Second argument", required=True),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt that embeds a resource.",
        arguments=[types.PromptArgument(name="resourceUri", description="URI to embed", required=True)],
    ),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image."),
]
COMPLETIONS = ("paris", "park", "party")


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _image() -> types.ImageContent:
    return types.ImageContent(type="image", data=PNG_B64, mimeType="image/png")


def _embedded(uri: str, mime: str, text: str) -> types.EmbeddedResource:
    return types.EmbeddedResource(
        type="resource", resource=types.TextResourceContents(uri=AnyUrl(uri), mimeType=mime, text=text)
    )


class Conformance:
    """The server's handlers and the little state the scenarios need (per-session log level, subscriptions)."""

    def __init__(self, wait_for_get: bool = True) -> None:
        self.server: Server[Any, Any] = Server("mcp-gateway-conformance-upstream", version="1.0.0")
        self.wait_for_get = wait_for_get
        self.manager: StreamableHTTPSessionManager | None = None
        self.log_levels: dict[int, int] = {}  # id(session) -> minimum level index
        self.subscriptions: set[str] = set()
        s = self.server
        s.list_tools()(self.list_tools)
        s.call_tool()(self.call_tool)
        s.list_resources()(self.list_resources)
        s.list_resource_templates()(self.list_templates)
        s.read_resource()(self.read_resource)
        s.subscribe_resource()(self.subscribe)
        s.unsubscribe_resource()(self.unsubscribe)
        s.list_prompts()(self.list_prompts)
        s.get_prompt()(self.get_prompt)
        s.completion()(self.complete)
        s.set_logging_level()(self.set_level)

    def init_options(self) -> InitializationOptions:
        options = self.server.create_initialization_options(NotificationOptions(), {})
        # the low-level server never advertises `resources.subscribe`, though it serves subscriptions
        assert options.capabilities.resources is not None
        options.capabilities.resources.subscribe = True
        return options

    # ------------------------------------------------------------------ tools

    async def list_tools(self) -> list[types.Tool]:
        return TOOLS

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Iterable[types.ContentBlock]:
        ctx = self.server.request_context
        session = ctx.session
        match name:
            case "test_simple_text":
                return [_text("This is a simple text response for testing.")]
            case "test_image_content":
                return [_image()]
            case "test_audio_content":
                return [types.AudioContent(type="audio", data=WAV_B64, mimeType="audio/wav")]
            case "test_embedded_resource":
                return [_embedded("test://embedded-resource", "text/plain", "This is an embedded resource content.")]
            case "test_multiple_content_types":
                return [
                    _text("Multiple content types test:"),
                    _image(),
                    _embedded("test://mixed-content-resource", "application/json", '{"test":"data","value":123}'),
                ]
            case "test_tool_with_logging":
                for i, message in enumerate(
                    ("Tool execution started", "Tool processing data", "Tool execution completed")
                ):
                    if i:
                        await asyncio.sleep(STEP_SECONDS)
                    await self.log(session, "info", message, ctx.request_id)
                return [_text("Tool with logging executed successfully")]
            case "test_error_handling":
                raise RuntimeError("This tool intentionally returns an error for testing")
            case "test_tool_with_progress":
                token = ctx.meta.progressToken if ctx.meta is not None else None
                for i, progress in enumerate((0, 50, 100)):
                    if i:
                        await asyncio.sleep(STEP_SECONDS)
                    if token is not None:
                        await session.send_progress_notification(
                            token, progress, 100, f"Completed step {progress} of 100", str(ctx.request_id)
                        )
                return [_text(f"progress reported to token {token!r}")]
            case "test_sampling":
                await self.get_stream_open()
                sampled = await session.create_message(
                    [types.SamplingMessage(role="user", content=_text(str(arguments["prompt"])))], max_tokens=100
                )
                reply = sampled.content.text if isinstance(sampled.content, types.TextContent) else "(no text)"
                return [_text(f"LLM response: {reply}")]
            case "test_elicitation":
                return [_text(await self.elicit(session, str(arguments["message"]), ELICIT_USER, "User response"))]
            case "test_elicitation_sep1034_defaults":
                text = await self.elicit(
                    session, "Please provide user information", ELICIT_DEFAULTS, "Elicitation result"
                )
                return [_text(text)]
            case "test_elicitation_sep1330_enums":
                message = "Please select values using different enum schema types"
                return [_text(await self.elicit(session, message, ELICIT_ENUMS, "Elicitation completed"))]
            case "json_schema_2020_12_tool":
                return [_text(json.dumps(arguments, sort_keys=True))]
            case "test_reconnection":
                await self.log(session, "info", "Before disconnect", ctx.request_id)
                if ctx.close_sse_stream is not None:
                    await ctx.close_sse_stream()
                # the client reconnects with Last-Event-ID after RETRY_MS; what follows is replayed or streamed then
                await asyncio.sleep(2 * RETRY_MS / 1000)
                await self.log(session, "info", "After reconnect", ctx.request_id)
                return [_text("Reconnection test completed")]
        raise ValueError(f"unknown tool {name!r}")

    async def get_stream_open(self) -> None:
        """Wait (bounded) until the calling session's standalone GET stream is open (see the module docstring)."""
        request = self.server.request_context.request
        session_id = request.headers.get("mcp-session-id") if request is not None else None
        if not self.wait_for_get or self.manager is None or session_id is None:
            return
        deadline = asyncio.get_running_loop().time() + GET_STREAM_WAIT
        while asyncio.get_running_loop().time() < deadline:
            # the SDK keeps no public handle on a session's streams; the manager's transports are pinned by the lock
            transport = self.manager._server_instances.get(session_id)
            if transport is not None and GET_STREAM_KEY in transport._request_streams:
                return
            await asyncio.sleep(0.005)

    async def elicit(self, session: ServerSession, message: str, schema: dict[str, Any], label: str) -> str:
        await self.get_stream_open()
        # no related_request_id: the request goes on the standalone GET stream (see the module docstring)
        result = await session.elicit_form(message, schema)
        content = json.dumps(result.content or {}, sort_keys=True)
        return f"{label}: action={result.action}, content={content}"

    async def log(self, session: ServerSession, level: types.LoggingLevel, data: str, request_id: Any) -> None:
        if LEVELS.index(level) >= self.log_levels.get(id(session), 0):
            await session.send_log_message(level, data, "conformance", related_request_id=request_id)

    async def set_level(self, level: types.LoggingLevel) -> None:
        self.log_levels[id(self.server.request_context.session)] = LEVELS.index(level)

    # ------------------------------------------------------------------ resources

    async def list_resources(self) -> list[types.Resource]:
        return RESOURCES

    async def list_templates(self) -> list[types.ResourceTemplate]:
        return [TEMPLATE]

    async def read_resource(self, uri: AnyUrl) -> list[ReadResourceContents]:
        text = str(uri)
        if text == "test://static-text":
            return [ReadResourceContents("This is the content of the static text resource.", "text/plain")]
        if text == "test://static-binary":
            return [ReadResourceContents(base64.b64decode(PNG_B64), "image/png")]
        if text == "test://watched-resource":
            return [ReadResourceContents("Watched resource content", "text/plain")]
        found = TEMPLATE_RE.match(text)
        if found:
            ident = found.group(1)
            data = {"id": ident, "templateTest": True, "data": f"Data for ID: {ident}"}
            return [ReadResourceContents(json.dumps(data), "application/json")]
        raise ValueError(f"unknown resource {text}")

    async def subscribe(self, uri: AnyUrl) -> None:
        self.subscriptions.add(str(uri))

    async def unsubscribe(self, uri: AnyUrl) -> None:
        self.subscriptions.discard(str(uri))

    # ------------------------------------------------------------------ prompts and completion

    async def list_prompts(self) -> list[types.Prompt]:
        return PROMPTS

    async def get_prompt(self, name: str, arguments: dict[str, str] | None) -> types.GetPromptResult:
        args = arguments or {}
        match name:
            case "test_simple_prompt":
                messages = [types.PromptMessage(role="user", content=_text("This is a simple prompt for testing."))]
            case "test_prompt_with_arguments":
                text = f"Prompt with arguments: arg1='{args.get('arg1', '')}', arg2='{args.get('arg2', '')}'"
                messages = [types.PromptMessage(role="user", content=_text(text))]
            case "test_prompt_with_embedded_resource":
                uri = args.get("resourceUri", "test://example-resource")
                messages = [
                    types.PromptMessage(
                        role="user", content=_embedded(uri, "text/plain", "Embedded resource content for testing.")
                    ),
                    types.PromptMessage(role="user", content=_text("Please process the embedded resource above.")),
                ]
            case "test_prompt_with_image":
                messages = [
                    types.PromptMessage(role="user", content=_image()),
                    types.PromptMessage(role="user", content=_text("Please analyze the image above.")),
                ]
            case _:
                raise ValueError(f"unknown prompt {name!r}")
        return types.GetPromptResult(messages=messages)

    async def complete(
        self,
        ref: types.PromptReference | types.ResourceTemplateReference,
        argument: types.CompletionArgument,
        context: types.CompletionContext | None,
    ) -> types.Completion:
        values = [v for v in COMPLETIONS if v.startswith(argument.value)]
        return types.Completion(values=values, total=len(values), hasMore=False)


class _Endpoint:
    """The session manager as a plain ASGI endpoint (Starlette would wrap a function in a request/response)."""

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self._manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._manager.handle_request(scope, receive, send)


def build_app(port: int, wait_for_get: bool = True) -> Starlette:
    conformance = Conformance(wait_for_get)
    loopback = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"]
    manager = StreamableHTTPSessionManager(
        app=conformance.server,
        event_store=MemoryEventStore(),
        retry_interval=RETRY_MS,
        # the suite's dns-rebinding scenario: a loopback server refuses any other Host or Origin
        security_settings=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=loopback,
            allowed_origins=[f"http://{host}" for host in loopback],
        ),
    )
    conformance.manager = manager
    # the manager builds its initialization options from the server; make it advertise subscriptions too
    options = conformance.init_options()
    conformance.server.create_initialization_options = lambda *_a, **_k: options  # type: ignore[method-assign]

    def lifespan(_app: Starlette) -> Any:
        return manager.run()

    return Starlette(routes=[Route("/mcp", endpoint=_Endpoint(manager))], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--no-wait", action="store_true", help="send sampling/elicitation before the GET stream is open"
    )
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.port, wait_for_get=not args.no_wait), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
