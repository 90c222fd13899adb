"""Stage 2: authentication -> Principal.

Credentials: `Authorization: Bearer <API key or JWT>` or `X-API-Key: <API key>`. Which kinds a route accepts is
its `auth.methods`; with `auth.anonymous` a request without any credential becomes the `anonymous` principal.
On OAuth routes (JWT + authorization servers) a 401 carries `WWW-Authenticate: Bearer resource_metadata=...`;
routes that take API keys answer `WWW-Authenticate: ApiKey realm="mcp-gateway"`: RFC 9110 wants a challenge on
every 401, and a scheme other than Bearer without `resource_metadata` gives MCP clients nothing to discover.

Everything per route is compiled in `build()` once per snapshot; the request path is a dict lookup, one HMAC
(keys) or one signature check (JWTs).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

import structlog

from gateway.auth.apikeys import PREFIX, parse_key
from gateway.auth.jwks import JwksRegistry
from gateway.auth.keyrecord import KeyRecord
from gateway.auth.metrics import AuthMetrics
from gateway.auth.principal import Principal, anonymous_principal
from gateway.auth.state import AuthState, metadata_url, route_url
from gateway.auth.tokens import JwtVerifier
from gateway.bounds import SERVER_MAX, bound
from gateway.context import RequestContext
from gateway.errors import GatewayError, Unauthenticated
from gateway.oauth.tokens import AccessTokens
from gateway.policy.loader import PolicyError, PolicyProblem
from gateway.policy.servers import ServerPolicy
from gateway.policy.snapshot import Snapshot

log = structlog.get_logger("gateway.authn")

MAX_CREDENTIAL = 16 * 1024
# RFC 6750 b64token (token68): what a bearer credential may contain
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_API_KEY_CHARS = re.compile(r"[A-Za-z0-9\-_]+")


@dataclass(frozen=True, slots=True)
class Credential:
    value: str
    via_header: str  # "authorization" or "x-api-key"

    @property
    def is_api_key(self) -> bool:
        return self.value.startswith(PREFIX)

    @property
    def is_jwt(self) -> bool:
        return self.value.count(".") == 2


def presented_credential(headers: object) -> Credential | None:
    """The credential a request presents, None when there is none. Raises `Unauthenticated` (400 when the
    header is malformed, 401 for another scheme); never any other exception, whatever the header holds."""
    getall = getattr(headers, "getall", None)
    if getall is None:
        return None
    auths = getall("Authorization", [])
    if len(auths) > 1:
        raise Unauthenticated("more than one Authorization header", reason="malformed_authorization", status=400)
    if auths:
        raw = auths[0] if isinstance(auths[0], str) else ""
        scheme, sep, value = raw.strip().partition(" ")
        if scheme.lower() != "bearer":
            if not scheme:
                raise Unauthenticated("empty Authorization header", reason="malformed_authorization", status=400)
            raise Unauthenticated("only Bearer credentials are accepted", reason="bad_scheme")
        value = value.strip(" ")
        if not sep or not value or len(value) > MAX_CREDENTIAL or not _TOKEN68.fullmatch(value):
            raise Unauthenticated("malformed Bearer credential", reason="malformed_authorization", status=400)
        return Credential(value, "authorization")
    keys = getall("X-API-Key", [])
    if len(keys) > 1:
        raise Unauthenticated("more than one X-API-Key header", reason="malformed_authorization", status=400)
    if keys:
        value = keys[0].strip() if isinstance(keys[0], str) else ""
        if not value or len(value) > 256 or not _API_KEY_CHARS.fullmatch(value):
            raise Unauthenticated("malformed X-API-Key header", reason="malformed_authorization", status=400)
        return Credential(value, "x-api-key")
    return None


@dataclass(frozen=True, slots=True)
class RouteAuthn:
    api_key: bool
    anonymous: bool
    anonymous_scopes: frozenset[str]
    jwt: JwtVerifier | None
    # `WWW-Authenticate` parameter pointing at the route's metadata; None on routes that are not OAuth routes
    resource_metadata: str | None
    # tokens of the built-in authorization server (gateway/oauth/), for this route's URL as audience
    builtin: AccessTokens | None = None
    audience: str = ""


# the admin API and unknown routes: API keys only, nobody anonymous, nothing advertised
ADMIN_ROUTE = RouteAuthn(True, False, frozenset(), None, None)


def compile_route(
    name: str,
    server: ServerPolicy,
    snapshot: Snapshot,
    public_url: str,
    jwks: JwksRegistry,
    oauth_tokens: AccessTokens | None = None,
) -> RouteAuthn:
    auth = server.auth
    verifier: JwtVerifier | None = None
    if "jwt" in auth.methods and auth.jwt is not None:
        jp = auth.jwt
        audience = jp.audience or route_url(public_url, name)
        secret: bytes | None = None
        cache = None
        if jp.symmetric:
            assert jp.hs_secret is not None
            try:
                secret = jp.hs_secret.resolve(snapshot.source_dir).encode()
            except LookupError as exc:
                raise PolicyError(
                    [PolicyProblem("servers.yaml", f"servers.{name}.auth.jwt.hs_secret", str(exc))]
                ) from None
            if len(secret) < 32:
                raise PolicyError(
                    [PolicyProblem("servers.yaml", f"servers.{name}.auth.jwt.hs_secret", "shorter than 32 bytes")]
                )
        else:
            assert jp.jwks_url is not None
            cache = jwks.get(jp.jwks_url, jp.jwks_cache_seconds, jp.jwks_min_refresh_seconds, jp.jwks_timeout_seconds)
        verifier = JwtVerifier(jp, audience, secret, cache)
    # a route naming `oauth` while the built-in server is off takes none of its tokens and advertises nothing
    builtin = oauth_tokens if auth.builtin_oauth else None
    return RouteAuthn(
        api_key="api_key" in auth.methods,
        anonymous=auth.anonymous,
        anonymous_scopes=frozenset(auth.anonymous_scopes),
        jwt=verifier,
        resource_metadata=metadata_url(public_url, name) if auth.oauth or builtin is not None else None,
        builtin=builtin,
        audience=route_url(public_url, name),
    )


API_KEY_CHALLENGE = 'ApiKey realm="mcp-gateway"'


def _challenge(route: RouteAuthn, err: GatewayError) -> str | None:
    if route.resource_metadata is None:
        # not `Bearer`: clients that see a Bearer challenge may start OAuth discovery against a route that has none
        return API_KEY_CHALLENGE if route.api_key and err.status == 401 else None
    parts = ['Bearer resource_metadata="' + route.resource_metadata + '"']
    if err.status == 400:
        parts.append('error="invalid_request"')
    elif err.reason not in ("missing_credentials", "bad_scheme"):
        parts.append('error="invalid_token"')
    return ", ".join(parts)


class Authn:
    stage = "authn"

    def __init__(
        self,
        routes: dict[str, RouteAuthn],
        keys: dict[str, KeyRecord],
        state: AuthState,
    ) -> None:
        self._routes = routes
        self._keys = keys
        self._secret = state.hmac_secret
        self._store = state.key_store
        self._usage = state.usage
        self._metrics: AuthMetrics | None = state.metrics

    async def __call__(self, ctx: RequestContext) -> None:
        route = self._routes.get(ctx.server_name, ADMIN_ROUTE)
        method = "none"
        try:
            cred = presented_credential(ctx.headers)
            if cred is None:
                if route.anonymous:
                    ctx.principal = anonymous_principal(route.anonymous_scopes, ctx.client_ip)
                    self._count("anonymous", "ok")
                    return
                raise Unauthenticated("missing credentials", reason="missing_credentials")
            if cred.is_api_key and route.api_key:
                method = "api_key"
                ctx.principal = await self._api_key(cred.value, ctx.client_ip)
            elif (
                cred.is_jwt
                and route.builtin is not None
                and cred.via_header == "authorization"
                and (route.jwt is None or route.builtin.owns(cred.value))
            ):
                method = "jwt"
                ctx.principal = await route.builtin.verify(cred.value, route.audience, ctx.client_ip, self._key_by_id)
            elif cred.is_jwt and route.jwt is not None and cred.via_header == "authorization":
                method = "jwt"
                ctx.principal = await route.jwt.verify(cred.value)
            elif cred.is_api_key or cred.is_jwt:
                raise Unauthenticated(
                    "this route does not accept that kind of credential", reason="credential_not_accepted"
                )
            else:
                raise Unauthenticated("credential is neither an API key nor a JWT", reason="malformed_credential")
        except GatewayError as err:
            self._count(method, err.reason)
            if isinstance(err, Unauthenticated):
                challenge = _challenge(route, err)
                if challenge is not None:
                    err.headers["WWW-Authenticate"] = challenge
            log.info(
                "authentication refused", reason=err.reason, method=method, server=bound(ctx.server_name, SERVER_MAX)
            )
            raise
        self._count(method, "ok")

    async def _api_key(self, raw: str, client_ip: str) -> Principal:
        parsed = parse_key(raw)
        if parsed is None:
            raise Unauthenticated("credential is not a valid API key", reason="malformed_credential")
        if not self._secret:
            raise Unauthenticated("unknown API key", reason="unknown_key")  # no server secret: no key verifies
        digest = hmac.new(self._secret, raw.encode(), hashlib.sha256).hexdigest()
        rec = self._keys.get(parsed.key_id)
        if rec is None and self._store is not None:
            rec = await self._store.lookup(parsed.key_id, digest)
        if rec is None or not hmac.compare_digest(rec.hash, digest):
            raise Unauthenticated("unknown API key", reason="unknown_key")
        principal = rec.admit(client_ip)
        self._usage.hit(rec.id)
        return principal

    async def _key_by_id(self, key_id: str) -> KeyRecord | None:
        """The key behind a built-in OAuth token, from where API keys come from (cached like them)."""
        rec = self._keys.get(key_id)
        if rec is None and self._store is not None:
            rec = await self._store.current(key_id)
        return rec

    def _count(self, method: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.authn_result(method, result)


def build(snapshot: Snapshot, state: AuthState) -> Authn:
    routes = {
        name: compile_route(name, server, snapshot, state.public_url, state.jwks, state.oauth_tokens)
        for name, server in snapshot.servers.items()
    }
    keys = dict(snapshot.key_records)  # built with the snapshot, off the loop
    return Authn(routes, keys, state)
