"""API key format and hashing.

A key is ``bds-`` + 37 random base62 characters + a 6-character base62 CRC32 of the random part.
The checksum lets the API refuse typos and garbage before any database lookup; the random part
carries about 220 bits. Only ``HMAC-SHA256(server secret, key)`` is stored, so a leaked database
does not leak usable keys, and lookups are by that hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib

KEY_PREFIX = "bds-"
_ALPHABET = string.digits + string.ascii_letters
_RANDOM_LENGTH = 37
_CHECKSUM_LENGTH = 6
KEY_LENGTH = len(KEY_PREFIX) + _RANDOM_LENGTH + _CHECKSUM_LENGTH
DISPLAY_PREFIX_LENGTH = 12


def _base62(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, remainder = divmod(value, 62)
        digits.append(_ALPHABET[remainder])
    return "".join(reversed(digits))


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode("ascii")), _CHECKSUM_LENGTH)


def generate_api_key() -> str:
    """A fresh random API key, to be shown to its owner exactly once."""
    random_part = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LENGTH))
    return KEY_PREFIX + random_part + _checksum(random_part)


def is_well_formed(key: str) -> bool:
    """Whether ``key`` has the prefix, length, alphabet and checksum of a key we issue."""
    if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return False
    body = key[len(KEY_PREFIX) :]
    if any(character not in _ALPHABET for character in body):
        return False
    random_part, checksum = body[:_RANDOM_LENGTH], body[_RANDOM_LENGTH:]
    return hmac.compare_digest(_checksum(random_part), checksum)


def hash_api_key(key: str, secret: str) -> str:
    """The stored form of a key: hex HMAC-SHA256 under the server secret."""
    return hmac.new(secret.encode("utf-8"), key.encode("utf-8"), hashlib.sha256).hexdigest()


def display_prefix(key: str) -> str:
    """The part of a key safe to show in listings and logs."""
    return key[:DISPLAY_PREFIX_LENGTH]
