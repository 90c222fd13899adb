"""The sign-in and consent pages: small, server-rendered, no script, every value escaped. The pages forbid
framing (clickjacking of the consent button) and are never cached."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from urllib.parse import urlsplit

from aiohttp import web

from gateway.oauth.server import SCOPE_TEXT, AuthorizeRequest

HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}"
    "input[type=password]{width:100%;padding:.5rem;margin:.5rem 0}button{padding:.5rem 1rem;margin-right:.5rem}"
    ".err{color:#a00}.muted{color:#666;font-size:.9rem}"
)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head>'
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(status=status, text=html, content_type="text/html", charset="utf-8", headers=HEADERS)


def _hidden(fields: Mapping[str, str]) -> str:
    return "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items())


def _client_line(req: AuthorizeRequest) -> str:
    name = req.client.client_name or "An unnamed application"
    host = urlsplit(req.redirect_uri).netloc or urlsplit(req.redirect_uri).scheme
    return (
        f"<p><strong>{escape(name)}</strong> "
        f'<span class="muted">(client {escape(req.client.client_id)}, returns to {escape(host)})</span> '
        f"asks to use the MCP server <strong>{escape(req.server_name)}</strong> on your behalf.</p>"
    )


def sign_in(action: str, req: AuthorizeRequest, csrf: str, error: str | None = None, status: int = 200) -> web.Response:
    err = f'<p class="err">{escape(error)}</p>' if error else ""
    body = (
        f"{_client_line(req)}{err}"
        f'<form method="post" action="{escape(action)}">'
        f"{_hidden({**req.params(), 'csrf': csrf})}"
        '<label for="api_key">Your API key</label>'
        '<input type="password" id="api_key" name="api_key" autocomplete="off" required>'
        '<button type="submit">Sign in</button></form>'
        '<p class="muted">The key is checked and not stored; the application gets a short-lived token instead.</p>'
    )
    return _page("Sign in to the MCP gateway", body, status)


def consent(
    action: str, req: AuthorizeRequest, scopes: tuple[str, ...], tenant: str, csrf: str, ticket: str
) -> web.Response:
    items = "".join(f"<li><code>{escape(s)}</code>: {escape(SCOPE_TEXT.get(s, s))}</li>" for s in scopes)
    body = (
        f"{_client_line(req)}"
        f"<p>Signed in for tenant <strong>{escape(tenant)}</strong>. It will be allowed to:</p><ul>{items}</ul>"
        f'<form method="post" action="{escape(action)}">{_hidden({"csrf": csrf, "ticket": ticket})}'
        '<button type="submit" name="decision" value="approve">Allow</button>'
        '<button type="submit" name="decision" value="deny">Deny</button></form>'
    )
    return _page("Allow access?", body)


def error(message: str, status: int = 400) -> web.Response:
    # never a redirect: an unverified redirect URI is exactly what must not be followed
    return _page("Sign-in request refused", f'<p class="err">{escape(message)}</p>', status)
