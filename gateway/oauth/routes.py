"""HTTP face of the built-in authorization server: RFC 8414 metadata, JWKS, registration, the sign-in and consent
pages, token and revocation endpoints. Every answer is audited (server `_oauth`, `rpc_method` `oauth/<step>`),
refusals with their `reason`; a client address over its per-minute budget gets 429 with `Retry-After`."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import orjson
from aiohttp import web

from gateway.audit.record import AuditEvent
from gateway.bounds import RPC_ID_MAX, bound
from gateway.clientip import forwarded_for
from gateway.compose import GATEWAY
from gateway.errors import GatewayError
from gateway.oauth import forms, pages
from gateway.oauth.errors import OAuthError
from gateway.oauth.factory import OAuthService
from gateway.oauth.limits import AddressLimiter, retry_after
from gateway.oauth.model import key_fingerprint
from gateway.oauth.server import AuthorizeRequest, RedirectableError, new_nonce

OAUTH_SERVER = "_oauth"
MAX_FORM = 64 * 1024
Action = Callable[[web.Request, OAuthService, AuditEvent], Awaitable[web.StreamResponse]]


def _service(request: web.Request) -> OAuthService:
    svc = request.app[GATEWAY].oauth
    assert svc is not None, "routes are installed only when the server is on"
    return svc


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _limit(limiter: AddressLimiter, address: str) -> None:
    wait = limiter.take(address)
    if wait > 0:
        raise OAuthError(
            "temporarily_unavailable",
            "too many requests",
            reason="rate_limited",
            status=429,
            retry_after=retry_after(wait),
        )


async def _form(request: web.Request) -> dict[str, str]:
    if request.content_length is None or request.content_length > MAX_FORM:
        raise OAuthError(
            "invalid_request", "a form of at most 64 KiB with Content-Length", reason="bad_body", status=413
        )
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "expected application/x-www-form-urlencoded", reason="bad_body")
    data = await request.post()
    out: dict[str, str] = {}
    for k in set(data.keys()):
        values = data.getall(k)
        if len(values) != 1 or not isinstance(values[0], str):
            # RFC 6749 3.1: a parameter sent twice is an error (and a way to smuggle a second redirect_uri)
            raise OAuthError("invalid_request", f"parameter {k!r} must be given once", reason="repeated_parameter")
        out[k] = values[0]
    return out


def _basic(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError(
            "invalid_client", "client authentication is Basic or in the form", reason="bad_client_auth", status=401
        )
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise OAuthError(
            "invalid_client", "malformed Basic credentials", reason="bad_client_auth", status=401
        ) from None
    if not sep:
        raise OAuthError("invalid_client", "malformed Basic credentials", reason="bad_client_auth", status=401)
    return unquote(user), unquote(password)


def audited(
    operation: str, action: Action, page: bool = False
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        svc = _service(request)
        t0 = time.perf_counter()
        address = svc.client_ip.resolve(request.remote, forwarded_for(request.headers))
        event = AuditEvent(
            ts_us=0,
            started_us=int(time.time() * 1_000_000),
            request_id=bound(request.headers.get("X-Request-ID") or uuid.uuid4().hex, RPC_ID_MAX),
            server=OAUTH_SERVER,
            transport="oauth",
            http_method=request.method,
            client_ip=address,
            rpc_method=operation,
        )
        try:
            try:
                response = await action(request, svc, event)
            except GatewayError as exc:
                # the key store down (503 key_store_unavailable) and the like: an OAuth error with the same status
                retry = exc.headers.get("Retry-After")
                raise OAuthError(
                    "temporarily_unavailable" if exc.status >= 500 else "invalid_request",
                    exc.message,
                    reason=exc.reason,
                    status=exc.status,
                    retry_after=int(retry) if retry and retry.isdigit() else None,
                ) from None
            event.http_status = response.status
            return response
        except OAuthError as err:
            event.refused_stage, event.refused_reason, event.http_status = "oauth", err.reason, err.status
            if page:
                resp = pages.error(err.description, err.status)
                if err.retry_after is not None:
                    resp.headers["Retry-After"] = str(err.retry_after)
                return resp
            return err.response()
        finally:
            event.latency_s = time.perf_counter() - t0
            event.ts_us = int(time.time() * 1_000_000)
            request.app[GATEWAY].audit.enqueue(event)

    return handle


async def metadata(request: web.Request) -> web.Response:
    resp = _json(_service(request).server.metadata())
    resp.headers["Cache-Control"] = "max-age=300"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


async def jwks(request: web.Request) -> web.Response:
    resp = _json(_service(request).server.tokens.key.jwks())
    resp.headers["Cache-Control"] = "max-age=300"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


async def _register(request: web.Request, svc: OAuthService, event: AuditEvent) -> web.StreamResponse:
    _limit(svc.register_limit, event.client_ip)
    if request.content_length is None or request.content_length > MAX_FORM:
        raise OAuthError("invalid_client_metadata", "a JSON body of at most 64 KiB", reason="bad_body", status=413)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise OAuthError("invalid_client_metadata", "body is not JSON", reason="bad_metadata") from None
    out = await svc.server.register(body)
    event.notes = {"client_id": out["client_id"]}
    return _json(out, 201)


def _set_nonce(request: web.Request, svc: OAuthService, response: web.StreamResponse, nonce: str) -> None:
    if request.cookies.get(forms.COOKIE) != nonce:
        response.set_cookie(
            forms.COOKIE,
            nonce,
            path="/oauth/",
            httponly=True,
            samesite="Strict",
            secure=svc.secure_cookies,
            max_age=3600,
        )


def _nonce(request: web.Request) -> str | None:
    value = request.cookies.get(forms.COOKIE)
    return value if value and len(value) <= 128 else None


async def _checked(svc: OAuthService, params: dict[str, str], event: AuditEvent) -> AuthorizeRequest:
    req = await svc.server.authorize_request(params)
    event.notes = {"client_id": req.client.client_id, "target_server": req.server_name}
    return req


def _redirect_error(svc: OAuthService, err: RedirectableError, event: AuditEvent) -> web.Response:
    event.refused_stage, event.refused_reason = "oauth", err.err.reason
    return web.Response(status=302, headers={"Location": svc.server.error_location(err), "Cache-Control": "no-store"})


async def _authorize_page(request: web.Request, svc: OAuthService, event: AuditEvent) -> web.StreamResponse:
    _limit(svc.authorize_limit, event.client_ip)
    query = request.query
    if any(len(query.getall(k)) > 1 for k in set(query.keys())):
        # RFC 6749 3.1: a parameter given twice (a second redirect_uri or resource for another component to read)
        raise OAuthError("invalid_request", "a parameter is given more than once", reason="repeated_parameter")
    try:
        req = await _checked(svc, dict(query), event)
    except RedirectableError as err:
        return _redirect_error(svc, err, event)
    nonce = _nonce(request) or new_nonce()
    resp = pages.sign_in("/oauth/authorize", req, forms.csrf_token(svc.server.tokens.key.form_secret, nonce))
    _set_nonce(request, svc, resp, nonce)
    return resp


def _csrf(svc: OAuthService, request: web.Request, form: dict[str, str]) -> str:
    nonce = _nonce(request)
    if nonce is None or not forms.csrf_ok(svc.server.tokens.key.form_secret, nonce, form.get("csrf")):
        raise OAuthError(
            "access_denied",
            "the form expired or did not come from this page; start again",
            reason="csrf_failed",
            status=403,
        )
    return nonce


async def _sign_in(request: web.Request, svc: OAuthService, event: AuditEvent) -> web.StreamResponse:
    _limit(svc.authorize_limit, event.client_ip)
    form = await _form(request)
    nonce = _csrf(svc, request, form)
    api_key = form.pop("api_key", "")
    form.pop("csrf", None)
    try:
        req = await _checked(svc, form, event)
    except RedirectableError as err:
        return _redirect_error(svc, err, event)
    secret = svc.server.tokens.key.form_secret
    try:
        rec = await svc.server.sign_in(req, api_key, event.client_ip)
    except OAuthError as err:
        event.refused_stage, event.refused_reason, event.http_status = "oauth", err.reason, err.status
        # the same page again, so the user can retry; the words do not say which check failed beyond the reason
        return pages.sign_in("/oauth/authorize", req, forms.csrf_token(secret, nonce), err.description, err.status)
    event.tenant, event.key_id, event.principal, event.auth_method = rec.tenant, rec.id, f"key:{rec.id}", "api_key"
    scopes = tuple(s for s in req.scopes if s in rec.scopes)
    ticket = forms.make_ticket(
        secret,
        nonce,
        {"p": req.params(), "k": rec.id, "f": key_fingerprint(rec.hash)},
        svc.server.settings.sign_in_seconds,
    )
    return pages.consent("/oauth/consent", req, scopes, rec.tenant, forms.csrf_token(secret, nonce), ticket)


async def _consent(request: web.Request, svc: OAuthService, event: AuditEvent) -> web.StreamResponse:
    _limit(svc.authorize_limit, event.client_ip)
    form = await _form(request)
    nonce = _csrf(svc, request, form)
    payload = forms.read_ticket(svc.server.tokens.key.form_secret, nonce, form.get("ticket"))
    if payload is None or not isinstance(payload.get("p"), dict) or not isinstance(payload.get("k"), str):
        raise OAuthError("access_denied", "the sign-in expired; start again", reason="bad_ticket", status=403)
    try:
        req = await _checked(svc, {str(k): str(v) for k, v in payload["p"].items()}, event)
    except RedirectableError as err:
        return _redirect_error(svc, err, event)
    rec = await svc.server.keys.by_id(payload["k"])
    if rec is None or key_fingerprint(rec.hash) != payload.get("f"):
        raise OAuthError("access_denied", "the API key is gone; start again", reason="key_revoked", status=403)
    try:
        rec.admit(event.client_ip)
    except GatewayError as err:
        raise OAuthError("access_denied", err.message, reason=err.reason, status=403) from None
    event.tenant, event.key_id, event.principal, event.auth_method = rec.tenant, rec.id, f"key:{rec.id}", "api_key"
    if form.get("decision") == "approve":
        location = await svc.server.approve(req, rec)
    else:
        event.refused_stage, event.refused_reason = "oauth", "user_denied"
        location = svc.server.denied_location(req)
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


async def _token(request: web.Request, svc: OAuthService, event: AuditEvent) -> web.StreamResponse:
    _limit(svc.token_limit, event.client_ip)
    form = await _form(request)
    body, grant = await svc.server.token(form, _basic(request), event.client_ip)
    event.tenant, event.key_id, event.principal, event.auth_method = (
        grant.tenant,
        grant.key_id,
        f"key:{grant.key_id}",
        "api_key",
    )
    event.notes = {
        "client_id": grant.client_id,
        "grant_type": form.get("grant_type"),
        "resource": bound(grant.resource, 256),
    }
    return _json(body)


async def _revoke(request: web.Request, svc: OAuthService, event: AuditEvent) -> web.StreamResponse:
    _limit(svc.token_limit, event.client_ip)
    form = await _form(request)
    grant = await svc.server.revoke(form, _basic(request))
    if grant is not None:
        event.tenant, event.key_id = grant.tenant, grant.key_id
    return web.Response(status=200, headers={"Cache-Control": "no-store"})


def install_routes(app: web.Application) -> None:
    app.router.add_get("/.well-known/oauth-authorization-server", metadata)
    app.router.add_get("/oauth/jwks", jwks)
    app.router.add_post("/oauth/register", audited("oauth/register", _register))
    app.router.add_get("/oauth/authorize", audited("oauth/authorize", _authorize_page, page=True))
    app.router.add_post("/oauth/authorize", audited("oauth/sign_in", _sign_in, page=True))
    app.router.add_post("/oauth/consent", audited("oauth/consent", _consent, page=True))
    app.router.add_post("/oauth/token", audited("oauth/token", _token))
    app.router.add_post("/oauth/revoke", audited("oauth/revoke", _revoke))
