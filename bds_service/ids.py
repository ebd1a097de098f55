"""Public identifiers: an OpenAI-style prefix and 24 random characters."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits

TENANT_PREFIX = "org-"
API_KEY_ID_PREFIX = "key-"
FILE_PREFIX = "file-"
JOB_PREFIX = "ftjob-"
EVENT_PREFIX = "ftevent-"
CHECKPOINT_PREFIX = "ftckpt-"


def new_id(prefix: str, length: int = 24) -> str:
    """A fresh identifier such as ``file-3kTq...``; 24 random base62 characters (~142 bits)."""
    # One draw from the CSPRNG for all the characters (uniform over every string of this
    # length, as a choice per character would be, at a tenth of the cost).
    value = secrets.randbelow(len(_ALPHABET) ** length)
    characters = []
    for _ in range(length):
        value, digit = divmod(value, len(_ALPHABET))
        characters.append(_ALPHABET[digit])
    return prefix + "".join(characters)
