"""The authorization server's protocol logic, without HTTP: registration (RFC 7591 with a policy), the
authorization request (PKCE S256 only, RFC 8707 resource = one OAuth route), the sign-in and consent steps, the
token endpoint (authorization code, refresh with rotation and reuse detection) and revocation (RFC 7009).

Every refusal is an `OAuthError` with a stable `reason`; gateway/oauth/routes.py renders and audits it. Nothing
here trusts a value the client sent before checking it against what was registered or issued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from gateway.auth.keyrecord import KeyRecord
from gateway.auth.state import route_url
from gateway.errors import GatewayError
from gateway.oauth import redirects
from gateway.oauth.config import OAuthSettings
from gateway.oauth.errors import OAuthError, invalid_grant, invalid_request
from gateway.oauth.keys import KeyResolver, tenant_reaches
from gateway.oauth.model import Client, CodeGrant, Grant, digest, key_fingerprint, new_secret
from gateway.oauth.store import OAuthStore
from gateway.oauth.tokens import AccessTokens
from gateway.policy.snapshot import Snapshot

SCOPES = ("read", "write", "admin")
DEFAULT_SCOPES = ("read", "write")
SCOPE_TEXT = {
    "read": "list and read tools, resources and prompts",
    "write": "call tools",
    "admin": "call any method, extensions included",
}
AUTH_METHODS = ("none", "client_secret_post", "client_secret_basic")
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of a SHA-256 digest, no padding
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")  # RFC 7636 4.1
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_STATE = 512
MAX_NAME = 128


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    """A checked authorization request: the client and redirect URI are known to match before anything else."""

    client: Client
    redirect_uri: str
    state: str | None
    code_challenge: str
    scopes: tuple[str, ...]
    resource: str
    server_name: str

    def params(self) -> dict[str, str]:
        """The request's parameters, to carry through the sign-in form and re-check on every step."""
        out = {
            "response_type": "code",
            "client_id": self.client.client_id,
            "redirect_uri": self.redirect_uri,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
            "scope": " ".join(self.scopes),
            "resource": self.resource,
        }
        if self.state is not None:
            out["state"] = self.state
        return out


class RedirectableError(Exception):
    """An authorization-request error sent back to the (verified) redirect URI, RFC 6749 4.1.2.1."""

    def __init__(self, request: AuthorizeRequest | None, redirect_uri: str, state: str | None, err: OAuthError):
        super().__init__(err.description)
        self.request = request
        self.err = err
        self.redirect_uri = redirect_uri
        self.state = state


class OAuthServer:
    def __init__(
        self,
        settings: OAuthSettings,
        issuer: str,
        public_url: str,
        store: OAuthStore,
        tokens: AccessTokens,
        keys: KeyResolver,
        snapshot: Callable[[], Snapshot | None],
    ) -> None:
        self.settings = settings
        self.issuer = issuer
        self.public_url = public_url.rstrip("/")
        self.store = store
        self.tokens = tokens
        self.keys = keys
        self._snapshot = snapshot
        self._preregistered = {
            c.client_id: Client(c.client_id, c.client_name, tuple(c.redirect_uris), "none") for c in settings.clients
        }

    # -- metadata ----------------------------------------------------------------------------------------------

    def endpoint(self, path: str) -> str:
        return f"{self.public_url}/oauth/{path}"

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata."""
        doc: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": self.endpoint("authorize"),
            "token_endpoint": self.endpoint("token"),
            "revocation_endpoint": self.endpoint("revoke"),
            "jwks_uri": self.endpoint("jwks"),
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
        }
        if self.settings.registration != "preregistered":
            doc["registration_endpoint"] = self.endpoint("register")
        return doc

    # -- registration (RFC 7591) -------------------------------------------------------------------------------

    async def register(self, body: Any) -> dict[str, Any]:
        if self.settings.registration == "preregistered":
            raise OAuthError(
                "access_denied",
                "dynamic registration is off; ask the operator",
                reason="registration_closed",
                status=403,
            )
        if not isinstance(body, dict):
            raise OAuthError("invalid_client_metadata", "body must be a JSON object", reason="bad_metadata")
        uris = body.get("redirect_uris")
        if not isinstance(uris, list) or not 1 <= len(uris) <= 16:
            raise OAuthError("invalid_redirect_uri", "redirect_uris: 1 to 16 URIs", reason="bad_redirect_uri")
        for uri in uris:
            why = redirects.problem(uri)
            if why is not None:
                raise OAuthError("invalid_redirect_uri", why, reason="bad_redirect_uri")
            if self.settings.registration == "allowed_redirect_uris" and not redirects.allowed(uri, self.settings):
                raise OAuthError(
                    "invalid_redirect_uri", f"redirect URI {uri!r} is not allowed here", reason="redirect_not_allowed"
                )
        method = body.get("token_endpoint_auth_method") or "none"
        if method not in AUTH_METHODS:
            raise OAuthError("invalid_client_metadata", f"unsupported auth method {method!r}", reason="bad_metadata")
        grants = body.get("grant_types") or ["authorization_code", "refresh_token"]
        if (
            not isinstance(grants, list)
            or not all(isinstance(g, str) for g in grants)  # a JSON object in the list is unhashable: a 500 before
            or not set(grants) <= {"authorization_code", "refresh_token"}
        ):
            raise OAuthError(
                "invalid_client_metadata", "grant_types: authorization_code, refresh_token", reason="bad_metadata"
            )
        responses = body.get("response_types") or ["code"]
        if responses != ["code"]:
            raise OAuthError("invalid_client_metadata", "response_types: code only", reason="bad_metadata")
        name = body.get("client_name") or ""
        if not isinstance(name, str) or len(name) > MAX_NAME or not name.isprintable():
            raise OAuthError(
                "invalid_client_metadata", "client_name: at most 128 printable characters", reason="bad_metadata"
            )
        secret = new_secret() if method != "none" else None
        client = Client(
            client_id=uuid.uuid4().hex,
            client_name=name,
            redirect_uris=tuple(uris),
            auth_method=method,
            secret_hash=digest(secret) if secret else None,
            created_at=time.time(),
        )
        if not await self.store.add_client(client, self.settings.max_clients, self.settings.unclaimed_client_seconds):
            raise OAuthError(
                "temporarily_unavailable", "too many registered clients", reason="client_limit", status=503
            )
        out: dict[str, Any] = {
            "client_id": client.client_id,
            "client_id_issued_at": int(client.created_at),
            "client_name": name,
            "redirect_uris": list(uris),
            "token_endpoint_auth_method": method,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }
        if secret is not None:
            out["client_secret"] = secret
            out["client_secret_expires_at"] = 0
        return out

    async def client(self, client_id: object) -> Client | None:
        if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
            return None
        return self._preregistered.get(client_id) or await self.store.client(client_id)

    # -- authorization request ---------------------------------------------------------------------------------

    async def authorize_request(self, params: Mapping[str, str]) -> AuthorizeRequest:
        """Check an authorization request. Until the client and its redirect URI are verified an error is an
        `OAuthError` (shown on a page, never redirected: that is the open redirect); after, a `RedirectableError`."""
        client = await self.client(params.get("client_id"))
        if client is None:
            raise OAuthError("invalid_client", "unknown client", reason="unknown_client")
        redirect_uri = params.get("redirect_uri")
        if redirect_uri is None and len(client.redirect_uris) == 1:
            redirect_uri = client.redirect_uris[0]
        if redirect_uri is None or redirect_uri not in client.redirect_uris:
            raise OAuthError(
                "invalid_request", "redirect_uri does not match a registered one", reason="redirect_uri_mismatch"
            )
        state = params.get("state")
        if state is not None and (len(state) > MAX_STATE or not state.isprintable()):
            state = None  # not echoed: a state we refuse to carry cannot be reflected anywhere

        def fail(error: str, text: str, reason: str) -> RedirectableError:
            return RedirectableError(None, redirect_uri, state, OAuthError(error, text, reason=reason))

        if params.get("response_type") != "code":
            raise fail("unsupported_response_type", "response_type must be code", "bad_response_type")
        challenge = params.get("code_challenge")
        if not challenge:
            raise fail("invalid_request", "PKCE is required: code_challenge with S256", "pkce_missing")
        if params.get("code_challenge_method") != "S256":
            raise fail("invalid_request", "code_challenge_method must be S256", "pkce_not_s256")
        if not _CHALLENGE.match(challenge):
            raise fail("invalid_request", "code_challenge is not a base64url SHA-256 digest", "pkce_malformed")
        raw_scope = params.get("scope") or ""
        scopes = tuple(dict.fromkeys(raw_scope.split())) or DEFAULT_SCOPES
        if len(raw_scope) > 256 or not set(scopes) <= set(SCOPES):
            raise fail("invalid_scope", f"scopes are {', '.join(SCOPES)}", "bad_scope")
        resource = params.get("resource")
        server_name = self._route_of(resource)
        if resource is None or server_name is None:
            raise fail("invalid_target", "resource must be the URL of an OAuth route of this gateway", "bad_resource")
        return AuthorizeRequest(client, redirect_uri, state, challenge, scopes, resource.rstrip("/"), server_name)

    def _route_of(self, resource: str | None) -> str | None:
        snap = self._snapshot()
        if resource is None or snap is None or len(resource) > 1024:
            return None
        prefix = f"{self.public_url}/mcp/"
        resource = resource.rstrip("/")
        if not resource.startswith(prefix):
            return None
        name = resource[len(prefix) :]
        server = snap.servers.get(name)
        if server is None or "oauth" not in server.auth.methods or route_url(self.public_url, name) != resource:
            return None
        return name

    def redirect_location(self, redirect_uri: str, params: Mapping[str, str]) -> str:
        sep = "&" if "?" in redirect_uri else "?"
        return f"{redirect_uri}{sep}{urlencode({**params, 'iss': self.issuer})}"

    def error_location(self, err: RedirectableError) -> str:
        params = {"error": err.err.error, "error_description": err.err.description}
        if err.state is not None:
            params["state"] = err.state
        return self.redirect_location(err.redirect_uri, params)

    # -- sign-in and consent -----------------------------------------------------------------------------------

    async def sign_in(self, req: AuthorizeRequest, api_key: str, client_ip: str) -> KeyRecord:
        """The key the user presented, if it may sign in for this request. `OAuthError` otherwise (shown on the
        sign-in page, so the user can try again: not redirected)."""
        rec = await self.keys.by_secret(api_key.strip())
        if rec is None:
            raise OAuthError("access_denied", "unknown API key", reason="unknown_key", status=401)
        try:
            rec.admit(client_ip)
        except GatewayError as err:
            raise OAuthError("access_denied", err.message, reason=err.reason, status=err.status) from None
        snap = self._snapshot()
        if snap is None or not tenant_reaches(snap, rec.tenant, req.server_name):
            # the same words as an unknown key: a key must not learn which routes other tenants have
            raise OAuthError(
                "access_denied", "this key cannot use that server", reason="server_not_allowed", status=403
            )
        if not set(req.scopes) & rec.scopes:
            raise OAuthError(
                "access_denied", "the key holds none of the requested scopes", reason="scope_denied", status=403
            )
        return rec

    async def approve(self, req: AuthorizeRequest, rec: KeyRecord) -> str:
        """Issue a code for an approved request; returns the redirect location."""
        scopes = tuple(s for s in req.scopes if s in rec.scopes)  # never more than the key holds
        grant = Grant(
            client_id=req.client.client_id,
            key_id=rec.id,
            key_fp=key_fingerprint(rec.hash),
            tenant=rec.tenant,
            role=rec.role,
            scopes=scopes,
            resource=req.resource,
            family=uuid.uuid4().hex,
        )
        code = new_secret()
        await self.store.put_code(
            digest(code),
            CodeGrant(grant, req.redirect_uri, req.code_challenge),
            time.time() + self.settings.code_seconds,
        )
        # approved by a user: the registration is kept past unclaimed_client_seconds
        await self.store.claim_client(req.client.client_id)
        params = {"code": code}
        if req.state is not None:
            params["state"] = req.state
        return self.redirect_location(req.redirect_uri, params)

    def denied_location(self, req: AuthorizeRequest) -> str:
        params = {"error": "access_denied", "error_description": "the user denied the request"}
        if req.state is not None:
            params["state"] = req.state
        return self.redirect_location(req.redirect_uri, params)

    # -- token endpoint ----------------------------------------------------------------------------------------

    async def authenticate_client(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> Client:
        client_id = basic[0] if basic is not None else form.get("client_id")
        client = await self.client(client_id)
        if client is None:
            raise OAuthError("invalid_client", "unknown client", reason="unknown_client", status=401)
        if client.auth_method == "none":
            if basic is not None or form.get("client_secret"):
                raise OAuthError(
                    "invalid_client", "a public client has no secret", reason="bad_client_auth", status=401
                )
            return client
        secret = basic[1] if basic is not None else form.get("client_secret")
        method = "client_secret_basic" if basic is not None else "client_secret_post"
        if (
            not secret
            or client.secret_hash is None
            or method != client.auth_method
            or not hmac.compare_digest(digest(secret), client.secret_hash)
        ):
            raise OAuthError("invalid_client", "client authentication failed", reason="bad_client_auth", status=401)
        return client

    async def token(
        self, form: Mapping[str, str], basic: tuple[str, str] | None, client_ip: str
    ) -> tuple[dict[str, Any], Grant]:
        client = await self.authenticate_client(form, basic)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            grant = await self._code_grant(client, form)
        elif grant_type == "refresh_token":
            grant = await self._refresh_grant(client, form)
        else:
            raise OAuthError(
                "unsupported_grant_type", "grant_type: authorization_code or refresh_token", reason="bad_grant_type"
            )
        await self._key_still_good(grant, client_ip)
        return await self._issue(grant), grant

    async def _code_grant(self, client: Client, form: Mapping[str, str]) -> Grant:
        code = form.get("code")
        if not code or len(code) > 256:
            raise invalid_request("code is required", "bad_code")
        stored, status = await self.store.use_code(digest(code))
        if status == "replayed" and stored is not None:
            # RFC 6749 4.1.2 / OAuth 2.1 4.1.3: a code used twice was stolen or leaked; whatever it bought goes too
            await self._revoke_family(stored.grant.family)
            raise invalid_grant("authorization code was already used", "code_replayed")
        if status != "ok" or stored is None:
            raise invalid_grant("authorization code is invalid or expired", f"code_{status}")
        if stored.grant.client_id != client.client_id:
            raise invalid_grant("code was issued to another client", "client_mismatch")
        if form.get("redirect_uri") != stored.redirect_uri:
            raise invalid_grant("redirect_uri does not match the authorization request", "redirect_uri_mismatch")
        verifier = form.get("code_verifier")
        if not verifier:
            raise invalid_grant("code_verifier is required (PKCE)", "pkce_missing")
        if not _VERIFIER.match(verifier) or not hmac.compare_digest(_s256(verifier), stored.code_challenge):
            raise invalid_grant("code_verifier does not match the code_challenge", "pkce_failed")
        self._same_resource(form, stored.grant)
        return stored.grant

    async def _refresh_grant(self, client: Client, form: Mapping[str, str]) -> Grant:
        token = form.get("refresh_token")
        if not token or len(token) > 256:
            raise invalid_request("refresh_token is required", "bad_refresh_token")
        grant, status = await self.store.use_refresh(digest(token))
        if status == "replayed" and grant is not None:
            # a rotated refresh token came back: one of two holders is a thief; both lose the grant
            await self._revoke_family(grant.family)
            raise invalid_grant("refresh token was already used; the grant is revoked", "refresh_reused")
        if status != "ok" or grant is None:
            raise invalid_grant("refresh token is invalid, expired or revoked", f"refresh_{status}")
        if grant.client_id != client.client_id:
            await self._revoke_family(grant.family)
            raise invalid_grant("refresh token was issued to another client", "client_mismatch")
        self._same_resource(form, grant)
        wanted = form.get("scope")
        if wanted:
            narrowed = tuple(s for s in grant.scopes if s in wanted.split())
            if set(wanted.split()) - set(grant.scopes) or not narrowed:
                raise OAuthError("invalid_scope", "a refresh cannot widen the grant", reason="scope_widened")
            grant = Grant(**{**grant.to_doc(), "scopes": narrowed})
        return grant

    @staticmethod
    def _same_resource(form: Mapping[str, str], grant: Grant) -> None:
        resource = form.get("resource")
        if resource is not None and resource.rstrip("/") != grant.resource:
            raise OAuthError("invalid_target", "a grant is for one route only", reason="resource_mismatch")

    async def _key_still_good(self, grant: Grant, client_ip: str) -> None:
        rec = await self.keys.by_id(grant.key_id)
        if rec is None or key_fingerprint(rec.hash) != grant.key_fp or rec.tenant != grant.tenant:
            await self._revoke_family(grant.family)
            raise invalid_grant("the API key behind this grant no longer exists", "key_revoked")
        try:
            rec.admit(client_ip)
        except GatewayError as err:
            if err.reason in ("key_revoked", "key_expired"):
                await self._revoke_family(grant.family)
            raise invalid_grant(f"the API key behind this grant: {err.message}", err.reason) from None

    async def _issue(self, grant: Grant) -> dict[str, Any]:
        refresh = new_secret()
        await self.store.put_refresh(digest(refresh), grant, time.time() + self.settings.refresh_token_seconds)
        return {
            "access_token": self.tokens.mint(grant),
            "token_type": "Bearer",
            "expires_in": self.tokens.lifetime,
            "refresh_token": refresh,
            "scope": " ".join(grant.scopes),
        }

    async def _revoke_family(self, family: str) -> None:
        self.tokens.revoke_family(family)
        await self.store.revoke_family(family)

    # -- revocation (RFC 7009) ---------------------------------------------------------------------------------

    async def revoke(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> Grant | None:
        """Revoke the grant a token belongs to. Unknown tokens are not an error (RFC 7009 2.2); a token of another
        client is left alone and answered the same way, so revocation cannot probe tokens."""
        client = await self.authenticate_client(form, basic)
        token = form.get("token")
        if not token or len(token) > 16 * 1024:
            raise invalid_request("token is required", "bad_token")
        grant: Grant | None = None
        if self.tokens.owns(token):
            try:
                claims = self.tokens.claims(token, None)
            except GatewayError:
                return None
            if claims.get("client_id") == client.client_id and isinstance(claims.get("mgw_fam"), str):
                await self._revoke_family(claims["mgw_fam"])
            return None
        grant = await self.store.find_refresh(digest(token))
        if grant is not None and grant.client_id == client.client_id:
            await self._revoke_family(grant.family)
            return grant
        return None


def new_nonce() -> str:
    return secrets.token_urlsafe(24)
