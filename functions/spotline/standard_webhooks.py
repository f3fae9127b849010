"""User notices signed by the Standard Webhooks specification, with asymmetric ``v1a`` signatures.

Three headers: ``webhook-id`` (one per notice, the same on every retry of it),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature``: ``v1a,`` and the base64 Ed25519
signature over ``{webhook-id}.{webhook-timestamp}.{body}``. The stack signs with a secret key
(``whsk_`` + base64 of the 32-byte seed) kept in Secrets Manager or SSM; users verify with the
public key (``whpk_`` + base64 of its 32 bytes), a stack output. A user who can verify their own
notices holds nothing that signs, so cannot forge another user's (a shared HMAC key, ``v1``,
would let them).

The ``standardwebhooks`` package on PyPI (1.1.0) signs and verifies ``v1`` only, so ``v1a`` is
signed here with ``cryptography``, in the spec's format; the tests verify it with an independent
Ed25519 implementation. Shared: the dead-letter function signs, the operator tools make the key
pair, devstack's drills verify.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

SECRET_PREFIX = "whsk_"
PUBLIC_PREFIX = "whpk_"
SIGNATURE_VERSION = "v1a"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
TOLERANCE_S = 300  # the spec's suggested window against replays
KEY_BYTES = 32


class NoticeKeyError(ValueError):
    """A key that is not a Standard Webhooks Ed25519 key. The message never quotes the key."""


def _key_bytes(text: str, prefix: str, what: str) -> bytes:
    if not isinstance(text, str) or not text.startswith(prefix):
        raise NoticeKeyError(f"{what} must start with {prefix}")
    try:
        raw = base64.b64decode(text[len(prefix) :].strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoticeKeyError(f"{what} is not base64 after {prefix}") from exc
    if len(raw) != KEY_BYTES:
        raise NoticeKeyError(f"{what} must hold {KEY_BYTES} bytes, not {len(raw)}")
    return raw


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PUBLIC_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_key_bytes(text, PUBLIC_PREFIX, "a public key"))


def signed_content(msg_id: str, timestamp: int | str, body: bytes) -> bytes:
    """What is signed: ``{id}.{timestamp}.`` and the raw body bytes, as sent."""
    return f"{msg_id}.{timestamp}.".encode() + body


@dataclass(frozen=True)
class NoticeSigner:
    """Signs notices with the stack's secret key; built per delivery from the cached secret."""

    key: Ed25519PrivateKey

    @classmethod
    def from_secret(cls, text: str) -> NoticeSigner:
        seed = _key_bytes(text, SECRET_PREFIX, "the signing key")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> str:
        return public_key_text(self.key.public_key())

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        signed = self.key.sign(signed_content(msg_id, timestamp, body))
        return f"{SIGNATURE_VERSION},{base64.b64encode(signed).decode('ascii')}"

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        return {
            ID_HEADER: msg_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: self.signature(msg_id, timestamp, body),
        }


def generate_key_pair() -> tuple[str, str]:
    """A fresh ``(whsk_ secret, whpk_ public)`` pair."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return SECRET_PREFIX + base64.b64encode(seed).decode("ascii"), public_key_text(key.public_key())


def verify(
    public_key: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver does: a fresh timestamp and one ``v1a`` signature that the public key
    accepts over the body exactly as received (header names in any case)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(ID_HEADER, "")
    timestamp = lowered.get(TIMESTAMP_HEADER, "")
    try:
        age_s = abs((time.time() if now is None else now) - int(timestamp))
        key = parse_public_key(public_key)
    except (ValueError, NoticeKeyError):
        return False
    if not msg_id or age_s > tolerance_s:
        return False
    content = signed_content(msg_id, timestamp, body)
    for candidate in lowered.get(SIGNATURE_HEADER, "").split():
        version, _, encoded = candidate.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            key.verify(base64.b64decode(encoded, validate=True), content)
        except (InvalidSignature, binascii.Error, ValueError):
            continue
        return True
    return False
