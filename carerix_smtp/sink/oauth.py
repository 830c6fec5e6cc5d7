"""The sink's side of OAuth2 sign-in (``cxsmtp sink --oauth-token``): reading the
XOAUTH2 and OAUTHBEARER (RFC 7628) initial responses, and the error challenge a
wrong token gets, shaped as Gmail's: base64 JSON ``{"status":"401",…}`` in a 334,
then 535 5.7.8 after the client's answer."""

from __future__ import annotations

import json

MECHANISMS = ("OAUTHBEARER", "XOAUTH2")
SCOPE = "https://mail.google.com/"
ERROR_CHALLENGE = json.dumps({"status": "401", "schemes": "bearer", "scope": SCOPE}).encode()
REFUSED = "535 5.7.8 Username and Password not accepted (OAuth2 token refused)"


def _fields(pairs: list[bytes]) -> dict[str, str]:
    """``key=value`` pairs (RFC 7628 §3.1 kvpair) -> dict; empty ones are skipped."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition(b"=")
        if sep:
            out[key.decode("ascii", "replace").lower()] = value.decode("utf-8", "replace")
    return out


def _bearer(value: str | None) -> str | None:
    if value is None or not value.lower().startswith("bearer "):
        return None
    return value[len("bearer ") :].strip() or None


def parse_xoauth2(blob: bytes) -> tuple[str, str] | None:
    """``user=U^Aauth=Bearer T^A^A`` -> (U, T), or None when malformed."""
    fields = _fields(blob.split(b"\x01"))
    token = _bearer(fields.get("auth"))
    user = fields.get("user")
    return (user, token) if user and token else None


def _unescape_saslname(name: str) -> str:
    return name.replace("=2C", ",").replace("=3D", "=")


def parse_oauthbearer(blob: bytes) -> tuple[str, str] | None:
    """``n,a=U,^Ahost=…^Aport=…^Aauth=Bearer T^A^A`` -> (U, T), or None when
    malformed or without the authzid (the sink needs the user to check it)."""
    header, sep, rest = blob.partition(b"\x01")
    if not sep:
        return None
    parts = header.split(b",")
    if len(parts) < 3 or parts[0] not in (b"n", b"y") or not parts[1].startswith(b"a="):
        return None
    user = _unescape_saslname(parts[1][2:].decode("utf-8", "replace"))
    token = _bearer(_fields(rest.split(b"\x01")).get("auth"))
    return (user, token) if user and token else None


def parse_initial_response(mechanism: str, blob: bytes) -> tuple[str, str] | None:
    return parse_oauthbearer(blob) if mechanism == "OAUTHBEARER" else parse_xoauth2(blob)
