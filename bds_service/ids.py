"""Public identifiers: an OpenAI-style prefix and 24 random characters."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_BASE = len(_ALPHABET)
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]  # base 62 * 62
_PAIR_BASE = len(_PAIRS)

TENANT_PREFIX = "org-"
API_KEY_ID_PREFIX = "key-"
FILE_PREFIX = "file-"
JOB_PREFIX = "ftjob-"
EVENT_PREFIX = "ftevent-"
CHECKPOINT_PREFIX = "ftckpt-"


def new_id(prefix: str, length: int = 24) -> str:
    """A fresh identifier such as ``file-3kTq...``; 24 random base62 characters (~142 bits)."""
    # One draw from the CSPRNG for all the characters (uniform over every string of this
    # length, as a choice per character would be, at a tenth of the cost), written two
    # characters at a time: the base-3844 digits of a uniform number are uniform too.
    pairs, odd = divmod(length, 2)
    value = secrets.randbelow(_BASE**length)
    characters = []
    if odd:
        value, digit = divmod(value, _BASE)
        characters.append(_ALPHABET[digit])
    for _ in range(pairs):
        value, digits = divmod(value, _PAIR_BASE)
        characters.append(_PAIRS[digits])
    return prefix + "".join(characters)
