"""Host and Origin checks against DNS rebinding, compiled once from the settings (MCP transports, security warning).

A DNS-rebinding page runs in a browser at `http://attacker.example:PORT`, a name its owner then points at the
gateway's address. The browser believes it talks to the page's own origin: its requests carry
`Host: attacker.example:PORT`, and same-origin GETs (a scrape of `/metrics`, `/admin/servers`) carry no `Origin`
at all. So `Host` is what tells them apart: only the names the gateway is reached by are served, and anything else
gets 421 Misdirected Request (RFC 9110 15.5.20: this server does not answer for that authority; the status the
official MCP Python SDK uses for the same check). An `Origin`, when a browser sends one (every cross-origin request,
every POST, every WebSocket upgrade), must be an origin allowed to use the gateway, else 403 (MCP transports spec).
A request without `Origin` is a non-browser client and is served as before; one without `Host` (HTTP/1.0) cannot
come from a browser (HTTP/1.1 without `Host` is refused by the front door).

Defaults (closed): the public URL's authority, plus the loopback names `localhost`, `127.0.0.1` and `[::1]` with the
listening port(s). Loopback names are equivalent: `Origin: http://localhost:8080` is the gateway's own origin when it
listens on `127.0.0.1:8080`. A browser only sends a loopback `Host` when the page's own URL is a loopback URL, so a
rebinding page (whose name is the attacker's) can never produce one.

`http.allowed_hosts` entries: `name` or `name:port` (exact, case-insensitive), `name:*` (any port), an IP network
such as `10.0.0.0/8` (an IP-literal `Host` inside it, any port: an IP literal cannot be rebound, so this is how
Kubernetes probes and scrapes by pod IP are let in), or `*` (no Host check at all). `http.allowed_origins` entries:
`scheme://host[:port]`, `scheme://host:*` (any port) or `*`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.errors import Forbidden, GatewayError, MisdirectedRequest

if TYPE_CHECKING:
    from gateway.settings import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})
# the longest Host / Origin kept in an audit note (a DNS name is at most 253 characters)
NOTE_CHARS = 256

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _name(host: str) -> str:
    """A host as it appears in an authority: IPv6 literals in brackets, lowercase."""
    host = host.lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def split_authority(authority: str) -> tuple[str, str | None]:
    """`name[:port]` -> (name, port or None); IPv6 literals keep their brackets."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return authority, None
        rest = authority[end + 1 :]
        return authority[: end + 1], rest[1:] if rest.startswith(":") else None
    name, sep, port = authority.rpartition(":")
    return (name, port) if sep else (authority, None)


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name[1:-1] if name.startswith("[") else name)
    except ValueError:
        return None


def parse_host_entry(entry: str) -> tuple[str, str]:
    """Validate one `allowed_hosts` entry; returns (kind, normalized value). Raises ValueError."""
    value = entry.strip().lower()
    if not value or any(c.isspace() for c in value) or "://" in value or "@" in value:
        raise ValueError(f"allowed_hosts entry {entry!r}: give a host name, host:port, host:*, a CIDR or '*'")
    if value == "*":
        return "any", value
    if "/" in value:
        try:
            return "network", str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"allowed_hosts entry {entry!r}: not an IP network") from None
    name, port = split_authority(value)
    if not name or (port is not None and port != "*" and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"allowed_hosts entry {entry!r}: bad port")
    return ("any_port", name) if port == "*" else ("exact", value)


def parse_origin_entry(entry: str) -> tuple[str, str]:
    """Validate one `allowed_origins` entry; returns (kind, normalized value). Raises ValueError."""
    value = entry.strip().lower().rstrip("/")
    if value == "*":
        return "any", value
    parts = urlsplit(value)
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc or parts.path or parts.query or "@" in parts.netloc:
        raise ValueError(f"allowed_origins entry {entry!r}: give scheme://host[:port] (or scheme://host:*, or '*')")
    name, port = split_authority(parts.netloc)
    if port == "*":
        return "any_port", f"{parts.scheme}://{name}"
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"allowed_origins entry {entry!r}: bad port")
    if port is not None and int(port) == _DEFAULT_PORTS[parts.scheme]:
        port = None  # browsers leave the scheme's default port out of an Origin
    return "exact", f"{parts.scheme}://{name}" + (f":{port}" if port is not None else "")


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which `Host` and `Origin` values the gateway serves; `refusal(headers)` is the per-request check."""

    hosts: frozenset[str]
    host_any_port: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()
    any_host: bool = False
    origins: frozenset[str] = frozenset()
    origin_any_port: frozenset[str] = frozenset()
    any_origin: bool = False

    @classmethod
    def build(
        cls,
        public_url: str,
        ports: Iterable[int],
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        extra_authorities: Iterable[str] = (),
    ) -> HostPolicy:
        hosts: set[str] = set()
        host_any_port: set[str] = set()
        networks: list[Network] = []
        origins: set[str] = set()
        origin_any_port: set[str] = set()
        any_host = any_origin = False

        public = urlsplit(public_url)
        scheme = public.scheme.lower() or "http"
        if public.hostname:
            name = _name(public.hostname)
            default = _DEFAULT_PORTS.get(scheme, 80)
            port = public.port or default
            hosts.add(f"{name}:{port}")
            if port == default:
                hosts.add(name)
                origins.add(f"{scheme}://{name}")
            else:
                origins.add(f"{scheme}://{name}:{port}")
        for port in ports:
            for loop_name in LOOPBACK_NAMES:
                if port == 0:
                    # the kernel picks the port at bind time: a loopback name is never a rebinding vector anyway
                    host_any_port.add(loop_name)
                    origin_any_port.add(f"http://{loop_name}")
                    continue
                hosts.add(f"{loop_name}:{port}")
                origins.add(f"http://{loop_name}:{port}")
                if port == 80:
                    hosts.add(loop_name)
                    origins.add(f"http://{loop_name}")
        hosts.update(a.lower() for a in extra_authorities)
        for entry in allowed_hosts:
            kind, value = parse_host_entry(entry)
            if kind == "any":
                any_host = True
            elif kind == "network":
                networks.append(ipaddress.ip_network(value))
            elif kind == "any_port":
                host_any_port.add(value)
            else:
                hosts.add(value)
        for entry in allowed_origins:
            kind, value = parse_origin_entry(entry)
            if kind == "any":
                any_origin = True
            elif kind == "any_port":
                origin_any_port.add(value)
            else:
                origins.add(value)
        return cls(
            frozenset(hosts),
            frozenset(host_any_port),
            tuple(networks),
            any_host,
            frozenset(origins),
            frozenset(origin_any_port),
            any_origin,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> HostPolicy:
        ports = [settings.listen.port]
        extra: list[str] = []
        admin = settings.admin_listen
        if admin.port is not None:
            ports.append(admin.port)
            # an admin listener on a specific address is reached by that address (an IP literal or a name the
            # operator chose), like the main listener by its default public URL
            if admin.host.lower() not in _WILDCARD_ADDRESSES and admin.port != 0:
                extra.append(f"{_name(admin.host)}:{admin.port}")
        return cls.build(
            settings.public_url,
            ports,
            settings.http.allowed_hosts,
            settings.http.allowed_origins,
            extra,
        )

    # ------------------------------------------------------------------ per request

    def host_allowed(self, host: str) -> bool:
        if host in self.hosts or self.any_host:  # the usual case: one set lookup
            return True
        value = host.lower()
        if value in self.hosts:
            return True
        name, _ = split_authority(value)
        if name in self.host_any_port:
            return True
        if self.networks:
            ip = _ip(name)
            return ip is not None and any(ip in net for net in self.networks)
        return False

    def origin_allowed(self, origin: str) -> bool:
        if origin in self.origins or self.any_origin:
            return True
        value = origin.lower()
        if value in self.origins:
            return True
        if self.origin_any_port:
            scheme, sep, authority = value.partition("://")
            name, _ = split_authority(authority)
            return bool(sep) and f"{scheme}://{name}" in self.origin_any_port
        return False

    def refusal(
        self, headers: Mapping[str, str], *, check_origin: bool = True, target: str = "/"
    ) -> GatewayError | None:
        """None when the request may be served; else the refusal to answer with. `target` is the raw request
        target: in absolute form (`POST http://name/mcp/x`) its authority is the one RFC 9112 3.2.2 says a server
        must use instead of `Host`, so it is held to the same list (and `Host` still is: either may be the one a
        component in front of the gateway acted on)."""
        host = headers.get("Host")
        if host is not None and not self.host_allowed(host):
            return MisdirectedRequest("this gateway does not serve that Host")
        if not target.startswith("/") and target != "*" and not self.host_allowed(target_authority(target)):
            return MisdirectedRequest("this gateway does not serve the request target's authority")
        if not check_origin:
            return None
        origin = headers.get("Origin")
        if origin is not None and not self.origin_allowed(origin):
            return Forbidden("Origin not allowed", reason="bad_origin")
        return None


def target_authority(target: str) -> str:
    """The authority of an absolute-form request target (`http://name:port/path`), "" when it has none."""
    try:
        return urlsplit(target).netloc.rpartition("@")[2]
    except ValueError:  # a malformed IPv6 literal: no authority this gateway serves
        return ""


def refusal_notes(err: GatewayError, headers: Mapping[str, str], target: str = "/") -> dict[str, str]:
    """What the audit record keeps of a Host / Origin refusal: the value refused, bounded."""
    if err.reason == MisdirectedRequest.default_reason:
        if not target.startswith("/") and target != "*":
            return {"host": headers.get("Host", "")[:NOTE_CHARS], "target": target[:NOTE_CHARS]}
        return {"host": headers.get("Host", "")[:NOTE_CHARS]}
    if err.reason == "bad_origin":
        return {"origin": headers.get("Origin", "")[:NOTE_CHARS]}
    return {}
