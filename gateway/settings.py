"""config.yaml -> frozen Settings. Static: a change needs a restart (policies/ is what reloads).

Environment variables override any value: the documented short names (ENV_OVERRIDES) and the prefix rule
`MGW_SECTION__FIELD` (gateway/settings_env.py); secrets are given only by reference (`{env: NAME}` or
`{file: path}`), never inline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from gateway.hosts import parse_host_entry, parse_origin_entry
from gateway.oauth.config import OAuthSettings
from gateway.policy.base import Model, NonNegInt, PositiveFloat, PositiveInt, SecretRef
from gateway.policy.loader import StrictYamlLoader
from gateway.settings_env import env_assignments
from gateway.tracing.settings import TracingSettings


class Listen(Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # the URL clients use to reach this gateway (for OAuth resource URLs and rewritten endpoints);
    # default http://<host>:<port>
    public_url: str | None = None


class AdminListen(Model):
    """A second listener for `/metrics` and `/admin/*` only (the main listener then answers them 404).
    `port: null` (the default): no admin listener, both are served on the main listener."""

    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535)


class RedisSettings(Model):
    url: str | None = None  # None = embedded in-process stores
    pool_size: PositiveInt = 50
    socket_timeout: PositiveFloat = 0.25
    key_prefix: str = "mgw:"
    # the request path's two commands on one multiplexed, auto-pipelined connection (gateway/net/redis_mux.py);
    # false: they take a connection from redis-py's pool like every other command
    multiplex: bool = True


UpstreamClient = Literal["lean", "aiohttp"]


class UpstreamSettings(Model):
    # the forward path's HTTP client: the lean keep-alive client (gateway/net/h1client.py) or aiohttp's
    # ClientSession (gateway/upstream/aiohttp_client.py); WebSocket upstreams, health checks and JWKS always use aiohttp
    client: UpstreamClient = "lean"


class PostgresSettings(Model):
    dsn: str | None = None  # None = no PostgreSQL (file audit, keys from policies only)
    reader_dsn: str | None = None  # tenant-scoped reader role for the audit query API (RLS)
    pool_size: PositiveInt = 5


RiskLevel = Literal["low", "medium", "high", "critical"]


class AuditRiskRules(Model):
    """Risk level of an audit record: the highest level among the rules that match (docs/audit.md)."""

    default: RiskLevel = "low"
    # write-scope MCP methods (tools/call, tasks/cancel)
    write: RiskLevel = "medium"
    # a refusal by any stage other than authn/client_guard
    refused: RiskLevel = "medium"
    # authn refusals and client_guard (IP block, flood) refusals
    auth_failure: RiskLevel = "high"
    # admin API calls and methods that need the admin scope
    admin: RiskLevel = "high"
    # upstream failures (unreachable, timeout, 5xx)
    upstream_error: RiskLevel = "medium"
    # per MCP method and per tool name (shell-style globs, e.g. "delete_*")
    methods: dict[str, RiskLevel] = Field(default_factory=dict)
    tools: dict[str, RiskLevel] = Field(default_factory=dict)


class AuditSettings(Model):
    sink: Literal["file", "postgres", "log"] = "file"
    path: str = "var/audit.jsonl"
    spool_path: str = "var/audit-spool.jsonl"
    queue_size: PositiveInt = 100_000
    batch_size: PositiveInt = 500
    flush_interval: PositiveFloat = 0.2
    retention_days: PositiveInt = 30
    # emit every record on the structured log (logger "gateway.audit") as well as to the sink
    log_records: bool = True
    # daily partitions created ahead of time; the retention job runs this often (PostgreSQL sink)
    partitions_ahead_days: PositiveInt = 3
    retention_interval_seconds: PositiveFloat = 3600.0
    # seconds between reconnection attempts while PostgreSQL is down (records go to the spool meanwhile)
    reconnect_interval: PositiveFloat = 1.0
    # longest string kept in recorded arguments (longer values are truncated)
    max_value_length: PositiveInt = 256
    # write-ahead journal: a pre-record of every answer reaches the kernel before the answer's first byte, so a
    # killed process's answered calls are recorded by the next one (docs/audit.md)
    journal: bool = True
    risk: AuditRiskRules = Field(default_factory=AuditRiskRules)


class ApiKeySettings(Model):
    # the server secret that keys the HMAC of stored key hashes
    hmac_secret: SecretRef = Field(default_factory=lambda: SecretRef(env="MGW_APIKEY_SECRET"))
    # also look keys up in PostgreSQL (table mgw_api_keys) when postgres.dsn is set (docs/identity.md)
    postgres_store: bool = True
    # how long a key read from PostgreSQL is trusted before it is read again (revocations by another replica
    # take effect within this); unknown ids are remembered for `negative_cache_seconds`
    cache_seconds: PositiveFloat = 5.0
    negative_cache_seconds: PositiveFloat = 2.0
    # longest wait for the key store on a cache miss before answering 503
    lookup_timeout_seconds: PositiveFloat = 1.0
    # usage counters (requests, last use per key) are written in batches this often
    usage_flush_seconds: PositiveFloat = 10.0


class HttpSettings(Model):
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    # `:` comment sent on SSE streams idle this long, so intermediaries do not cut them
    sse_keepalive_seconds: PositiveFloat = 15.0
    # idle lifetime of a session binding (Mcp-Session-Id / legacy SSE session); refreshed on every use
    session_ttl_seconds: PositiveFloat = 3600.0
    # live sessions one credential (API key, JWT subject, anonymous client address) / one tenant may hold; beyond,
    # a session-creating request gets 429 `session_limit` (docs/transports.md)
    max_sessions_per_key: PositiveInt = 256
    max_sessions_per_tenant: PositiveInt = 2048
    # WebSocket ping interval (both client and upstream sockets); a peer missing a pong is closed
    ws_heartbeat_seconds: PositiveFloat = 20.0
    trusted_proxies: list[str] = Field(default_factory=list)
    shutdown_grace_seconds: PositiveFloat = 20.0
    # drain: how long a keep-alive connection idle when the drain begins (or after an answer sent before it) may
    # still bring its next request, served with `Connection: close`, before it is closed; at most the grace above
    drain_idle_grace_seconds: float = Field(1.5, ge=0, le=60)
    allowed_origins: list[str] = Field(default_factory=list)
    # Host values served besides the public URL's and the loopback names with the listening port (gateway/hosts.py)
    allowed_hosts: list[str] = Field(default_factory=list)
    # serve `POST` / `GET /mcp/{server}` on the lean HTTP/1.1 server (gateway/net/h1server.py);
    # false: aiohttp serves all
    fast_path: bool = True
    # slow clients (gateway/net/frontdoor.py): a request head must be complete this long after its first byte (or after
    # the connection opened); a body may pause at most `body_timeout_seconds` and must average `body_min_rate`
    # bytes/s beyond a first `body_timeout_seconds` of allowance (0 = no rate)
    head_timeout_seconds: PositiveFloat = 10.0
    body_timeout_seconds: PositiveFloat = 10.0
    body_min_rate: NonNegInt = 4096
    # open connections per socket peer address, per process (0 = no cap); `trusted_proxies` are not capped; IPv6
    # peers count per /64 (one host usually holds a whole /64)
    max_connections_per_ip: NonNegInt = 128
    # a keep-alive connection idle this long after its last answer is closed: without it, one cheap request per
    # connection then silence held a connection for the hour-long keep-alive timer, past every read deadline
    keepalive_idle_seconds: PositiveFloat = 60.0

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        # environment overrides (MGW_ALLOWED_HOSTS, MGW_ALLOWED_ORIGINS) give a comma-separated string
        return [part.strip() for part in v.split(",") if part.strip()] if isinstance(v, str) else v

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for entry in v:
            parse_host_entry(entry)
        return v

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for entry in v:
            parse_origin_entry(entry)
        return v


class LoggingSettings(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    access_log: bool = False


class MetricsSettings(Model):
    # prometheus-client's `<counter>_created` series (each counter's and histogram's creation time); off, they
    # only double the series count
    created_series: bool = False


class Settings(Model):
    listen: Listen = Field(default_factory=Listen)
    admin_listen: AdminListen = Field(default_factory=AdminListen)
    workers: PositiveInt = 1
    policies_dir: str = "policies"
    # seconds between checks of the policy files for changes (0 = only SIGHUP / admin reload)
    policy_poll_seconds: float = Field(1.0, ge=0)
    # how often the event-loop lag probe runs (mcp_gateway_event_loop_lag_seconds, docs/operations.md)
    loop_lag_probe_seconds: float = Field(0.025, ge=0.005, le=1.0)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    api_keys: ApiKeySettings = Field(default_factory=ApiKeySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    # OpenTelemetry spans over OTLP/HTTP (gateway/tracing/); off by default
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    # the built-in OAuth authorization server (gateway/oauth/, docs/identity.md); off by default
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)
    # directory relative paths in this file are resolved against (the config file's directory)
    base_dir: str = "."

    @model_validator(mode="after")
    def _distinct_listeners(self) -> Settings:
        admin = self.admin_listen
        if admin.port is not None and admin.port != 0 and admin.port == self.listen.port:
            raise ValueError("admin_listen.port must differ from listen.port")
        return self

    @property
    def public_url(self) -> str:
        if self.listen.public_url:
            return self.listen.public_url.rstrip("/")
        return f"http://{self.listen.host}:{self.listen.port}"

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir) / p


# the documented short environment variable -> dotted settings path; any setting also has its prefix-rule name
# (`MGW_HTTP__MAX_BODY_BYTES`, gateway/settings_env.py)
ENV_OVERRIDES: dict[str, str] = {
    "MGW_HOST": "listen.host",
    "MGW_PORT": "listen.port",
    "MGW_PUBLIC_URL": "listen.public_url",
    "MGW_ALLOWED_HOSTS": "http.allowed_hosts",
    "MGW_ALLOWED_ORIGINS": "http.allowed_origins",
    "MGW_ADMIN_HOST": "admin_listen.host",
    "MGW_ADMIN_PORT": "admin_listen.port",
    "MGW_WORKERS": "workers",
    "MGW_POLICIES_DIR": "policies_dir",
    "MGW_REDIS_URL": "redis.url",
    "MGW_POSTGRES_DSN": "postgres.dsn",
    "MGW_POSTGRES_READER_DSN": "postgres.reader_dsn",
    "MGW_AUDIT_SINK": "audit.sink",
    "MGW_AUDIT_PATH": "audit.path",
    "MGW_LOG_LEVEL": "logging.level",
    "MGW_LOG_FORMAT": "logging.format",
}


class SettingsError(Exception):
    pass


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


def load_settings(path: str | Path | None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    base = Path(".")
    if path is not None:
        p = Path(path)
        base = p.resolve().parent
        try:
            # the policy files' loader: a key given twice is an error, not "the last one wins"
            loaded = yaml.load(p.read_text(encoding="utf-8"), Loader=StrictYamlLoader) or {}
        except OSError as exc:
            raise SettingsError(f"{p}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SettingsError(f"{p}: not UTF-8 text") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
            raise SettingsError(f"{p}:{where} invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(loaded, dict):
            raise SettingsError(f"{p}: top level must be a mapping")
        data = loaded
    applied: dict[str, str] = {}  # dotted path -> the variable that set it, so errors can name the variable
    assignments, env_problems = env_assignments(env, ENV_OVERRIDES, Settings)
    if env_problems:
        source = path if path is not None else "settings"
        raise SettingsError("\n".join(f"{source}: {problem.message}" for problem in env_problems))
    for assignment in assignments:
        _set_path(data, assignment.dotted, assignment.value)
        applied[assignment.dotted] = assignment.var
    data.setdefault("base_dir", str(base))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            # the variable that set this value or the list/mapping the failing item is in
            setter = next((var for dot, var in applied.items() if loc == dot or loc.startswith(dot + ".")), None)
            via = f" (from environment variable {setter})" if setter is not None else ""
            lines.append(f"{path if path is not None else 'settings'}: {loc}{via}: {err['msg']}")
        raise SettingsError("\n".join(lines)) from None
