"""Completion tokens: signed bearer credentials for one external wait.

A token names a flow, an atom, an attempt and a nonce drawn when that attempt started,
and carries an HMAC-SHA256 of them under the engine's secret. Verifying it proves only
that this engine (or one sharing its secret) issued it; whether the wait is still open is
for the journal to say. The nonce makes a token single-use even when a retried part of a
flow runs an atom again with the same attempt number.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass

from ._errors import InvalidTokenError

SECRET_ENV = "AIOFLOW_SECRET"
"""The environment variable read when the engine is given no ``secret``."""

SECRET_META_KEY = "external_secret"
"""The journal meta key under which a generated secret is kept."""

_VERSION = "v1"
_CONTEXT = b"aioflow-completion-token-v1\x00"


@dataclass(frozen=True, slots=True)
class Claim:
    """What a verified token says: the wait it completes."""

    flow_id: str
    atom: str
    attempt: int
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_nonce() -> str:
    """A fresh random nonce for one attempt of one atom."""
    # secrets, hmac and hashlib are imported where used: they cost ms at `import aioflow`.
    import secrets

    return secrets.token_hex(8)


def new_secret() -> str:
    """A fresh random secret (256 bits, hex) for a journal that has none."""
    import secrets

    return secrets.token_hex(32)


def secret_from(value: str | bytes | None) -> bytes | None:
    """The key bytes for an explicit secret, else ``AIOFLOW_SECRET``, else None."""
    if value is None:
        value = os.environ.get(SECRET_ENV) or None
        if value is None:
            return None
    key = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if not key:
        raise ValueError("the engine secret must not be empty")
    return key


class Signer:
    """Issues and verifies completion tokens under one secret key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the token key must not be empty")
        self._key = key

    def __repr__(self) -> str:
        return "Signer(<secret>)"

    def _mac(self, payload: bytes) -> bytes:
        import hashlib
        import hmac

        return hmac.new(self._key, _CONTEXT + payload, hashlib.sha256).digest()

    def issue(self, flow_id: str, atom: str, attempt: int, nonce: str) -> str:
        """The token for attempt ``attempt`` of ``atom`` in flow ``flow_id``."""
        payload = json.dumps([flow_id, atom, attempt, nonce], separators=(",", ":")).encode()
        return f"{_VERSION}.{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str) -> Claim:
        """The claim of a token this signer issued; :class:`InvalidTokenError` otherwise.

        The signature is compared in constant time; nothing about the token is echoed
        back in the error (it may be a live credential with a typo).
        """
        if not isinstance(token, str):
            raise InvalidTokenError("a completion token is a string")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            raise InvalidTokenError("not an aioflow completion token")
        try:
            payload = _unb64(parts[1])
            mac = _unb64(parts[2])
        except (binascii.Error, ValueError):
            raise InvalidTokenError("not an aioflow completion token") from None
        import hmac

        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidTokenError(
                "the completion token's signature does not match: it is forged, damaged or"
                " signed with another secret"
            )
        try:
            flow_id, atom, attempt, nonce = json.loads(payload)
        except (ValueError, TypeError):
            raise InvalidTokenError("not an aioflow completion token") from None
        if not (
            isinstance(flow_id, str)
            and isinstance(atom, str)
            and isinstance(attempt, int)
            and isinstance(nonce, str)
        ):
            raise InvalidTokenError("not an aioflow completion token")
        return Claim(flow_id, atom, attempt, nonce)
