"""The gateway's token signing key (EC P-256, ES256): loaded from `oauth.signing_key`, or from a file created on
first start and published with link(2), so several workers on one host agree on one key without coordination."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class SigningKey:
    private: ec.EllipticCurvePrivateKey
    kid: str
    public_jwk: dict[str, Any]
    # for the sign-in form's CSRF tokens and tickets: shared by every process holding the key
    form_secret: bytes

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}


def from_pem(pem: bytes) -> SigningKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("the OAuth signing key must be an EC P-256 private key (PEM)")
    numbers = key.public_key().public_numbers()
    x, y = _b64(numbers.x.to_bytes(32, "big")), _b64(numbers.y.to_bytes(32, "big"))
    # RFC 7638 thumbprint: the members in lexical order, no whitespace
    thumb = json.dumps({"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"), sort_keys=True)
    kid = _b64(hashlib.sha256(thumb.encode()).digest())
    jwk = {"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig", "alg": ALGORITHM}
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    form_secret = hmac.new(raw, b"mcp-gateway oauth forms", hashlib.sha256).digest()
    return SigningKey(key, kid, jwk, form_secret)


def generate_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_or_create(path: Path) -> SigningKey:
    """The key in `path`; a new one written there (mode 0600) when the file does not exist yet."""
    try:
        return from_pem(path.read_bytes())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = generate_pem()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    try:
        # link(2) publishes the complete file or fails when one exists: a racing worker never reads half a key
        os.link(tmp, path)
    except FileExistsError:
        return from_pem(path.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return from_pem(pem)
