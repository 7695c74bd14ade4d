"""Model artifacts signed with HMAC-SHA256, so a tampered or foreign model is never loaded.

Artifacts are already pickle-free (``.npz`` read with ``allow_pickle=False``, or JSON), so
loading one cannot run code. The signature adds integrity: with ``THRONOS_MODEL_KEY`` set,
every published model carries a MAC over its bytes and is refused on load if it does not
match. Without a key, models are stored and loaded unsigned.
"""

from __future__ import annotations

import hashlib
import hmac

from thronos_analytics.core.settings import settings

MAGIC = b"THRM1"
MAC_BYTES = 32


class ModelIntegrityError(ValueError):
    """A model artifact failed its signature check."""


def _key() -> bytes | None:
    key = settings().model_key
    return key.get_secret_value().encode() if key else None


def sign(blob: bytes) -> bytes:
    key = _key()
    if key is None:
        return blob
    return MAGIC + hmac.new(key, blob, hashlib.sha256).digest() + blob


def verify(blob: bytes, what: str) -> bytes:
    """The artifact's payload; raises ModelIntegrityError naming ``what`` if it is not ours."""
    key = _key()
    signed = blob.startswith(MAGIC)
    if key is None:
        if signed:
            raise ModelIntegrityError(f"{what} is signed but THRONOS_MODEL_KEY is not set")
        return blob
    if not signed:
        raise ModelIntegrityError(f"{what} is not signed; refusing it (THRONOS_MODEL_KEY is set)")
    mac, payload = blob[len(MAGIC) : len(MAGIC) + MAC_BYTES], blob[len(MAGIC) + MAC_BYTES :]
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
        raise ModelIntegrityError(f"{what} failed its HMAC check (tampered, or another key)")
    return payload
