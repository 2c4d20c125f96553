"""Edge secrets: generated with `secrets`, stored as a salted scrypt hash, compared in constant
time. Pure functions; the secret itself is never stored or logged."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid

KDF_NAME = "scrypt"
KDF_N, KDF_R, KDF_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32

_DUMMY_SALT = b"\0" * SALT_BYTES

Kdf = tuple[str, int, int, int]
DEFAULT_KDF: Kdf = (KDF_NAME, KDF_N, KDF_R, KDF_P)


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def new_routing_key() -> str:
    """ThingsBoard issues UUIDs as routing keys."""
    return str(uuid.uuid4())


def new_access_token() -> str:
    """A device access token (20 URL-safe characters, like ThingsBoard's)."""
    return secrets.token_urlsafe(15)


def hash_secret(secret: str, salt: bytes | None = None, kdf: Kdf = DEFAULT_KDF) -> tuple[bytes, bytes]:
    """(salt, hash) of a secret; a fresh random salt unless one is given."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    return salt, _derive(secret, salt, kdf)


def verify_secret(secret: str, salt: bytes, expected: bytes, kdf: Kdf) -> bool:
    """Constant-time comparison of the secret's hash with the stored one."""
    return hmac.compare_digest(_derive(secret, salt, kdf), expected)


def burn_time(secret: str) -> None:
    """Spend what a verification costs, so an unknown routing key answers as slowly as a known
    key with a wrong secret."""
    _derive(secret, _DUMMY_SALT, DEFAULT_KDF)


def _derive(secret: str, salt: bytes, kdf: Kdf) -> bytes:
    name, n, r, p = kdf
    if name != KDF_NAME:
        raise ValueError(f"unknown key derivation {name!r}")
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES,
                          maxmem=64 * 1024 * 1024)
