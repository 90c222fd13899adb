"""config.yaml -> frozen Settings. Static: a change needs a restart (policies/ is what reloads).

Environment variables override the values that differ per deployment (see ENV_OVERRIDES); secrets are given only
by reference (`{env: NAME}` or `{file: path}`), never inline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from gateway.policy.base import Model, PositiveFloat, PositiveInt, SecretRef


class Listen(Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # the URL clients use to reach this gateway (for OAuth resource URLs and rewritten endpoints);
    # default http://<host>:<port>
    public_url: str | None = None


class RedisSettings(Model):
    url: str | None = None  # None = embedded in-process stores
    pool_size: PositiveInt = 50
    socket_timeout: PositiveFloat = 0.25
    key_prefix: str = "mgw:"


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
    # WebSocket ping interval (both client and upstream sockets); a peer missing a pong is closed
    ws_heartbeat_seconds: PositiveFloat = 20.0
    trusted_proxies: list[str] = Field(default_factory=list)
    shutdown_grace_seconds: PositiveFloat = 20.0
    allowed_origins: list[str] = Field(default_factory=list)
    # serve `POST /mcp/{server}` on the lean HTTP/1.1 server (gateway/h1server.py); false: aiohttp serves everything
    fast_path: bool = True


class LoggingSettings(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    access_log: bool = False


class Settings(Model):
    listen: Listen = Field(default_factory=Listen)
    workers: PositiveInt = 1
    policies_dir: str = "policies"
    # seconds between checks of the policy files for changes (0 = only SIGHUP / admin reload)
    policy_poll_seconds: float = Field(1.0, ge=0)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    api_keys: ApiKeySettings = Field(default_factory=ApiKeySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    # directory relative paths in this file are resolved against (the config file's directory)
    base_dir: str = "."

    @property
    def public_url(self) -> str:
        if self.listen.public_url:
            return self.listen.public_url.rstrip("/")
        return f"http://{self.listen.host}:{self.listen.port}"

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir) / p


# environment variable -> dotted settings path
ENV_OVERRIDES: dict[str, str] = {
    "MGW_HOST": "listen.host",
    "MGW_PORT": "listen.port",
    "MGW_PUBLIC_URL": "listen.public_url",
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


def _set_path(data: dict[str, Any], dotted: str, value: str) -> None:
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = None if value == "" else value


def load_settings(path: str | Path | None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    base = Path(".")
    if path is not None:
        p = Path(path)
        base = p.resolve().parent
        # the policy files' loader: a key given twice is an error, not "the last one wins"
        from gateway.policy.loader import StrictYamlLoader

        try:
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
    for var, dotted in ENV_OVERRIDES.items():
        if var in env:
            _set_path(data, dotted, env[var])
            applied[dotted] = var
    data.setdefault("base_dir", str(base))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            via = f" (from environment variable {applied[loc]})" if loc in applied else ""
            lines.append(f"{path if path is not None else 'settings'}: {loc}{via}: {err['msg']}")
        raise SettingsError("\n".join(lines)) from None
