"""Display names: which strings may be names, and when two names are the same.

Names are labels, never identities (PROTOCOL section 2). Two names are *the same*
when their keys are equal: NFKC, then case folding, then the Unicode confusable
skeleton of UTS #39 — so `Аlice` (Cyrillic А), `ＡＬＩＣＥ` and `Alice\u3164` are
all `Alice`. The confusables data and the skeleton come from `disarm` (Unicode's
own tables, maintained), not from a hand-copied table.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any, Iterable

from disarm import skeleton_key

from chatroom.core.errors import ValidationError
from chatroom.core.validation import has_lone_surrogate

SYSTEM_NAME = "system"
MAX_USERNAME_CHARS = 32

# Bidirectional overrides and isolates reorder the text around a name on screen:
# `Bob\u202e` can make a line read as if someone else wrote it.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Devices repeat their name in every message: the checks of a short name are remembered
# (bounded; longer values, whitespace padding included, are checked each time).
_CACHED_NAMES, _CACHED_NAME_CHARS = 4096, 64
# Reserved names only: after the skeleton, everything that looks like I, l, | or 1 is one
# letter. The skeleton keeps `i` and `1` apart from `l` (and case folding turns the I of
# "AI" into i before the skeleton could map it to l), so "Al", "A|", "A1", "Aǀ" (U+01C0)
# and "AӀ" (U+04C0) would otherwise not be "AI". Ordinary names keep name_key's equality.
_ONE_VERTICAL_STROKE = str.maketrans({"i": "l", "1": "l", "|": "l", "I": "l"})
# "<AI name> for <name>" is the assistant's asker of a device command (chatroom/assistant/
# listener.py): a name that starts so would pass a person's command off as the assistant's.
_FOR = re.compile(r"\s+for(?:\s|$)")


def name_key(name: str) -> str:
    """The key two names share when people would take them for the same name."""
    # Case folding first: the skeleton maps some capitals (I) to other letters (l).
    return skeleton_key(unicodedata.normalize("NFKC", name).casefold())


def reserved_key(name: str) -> str:
    """The key a name is compared with the reserved names by: without accents and other
    combining marks, spaces and punctuation (`A.I`, `A I`, `ȦI`, `Ǎl`), then name_key with
    I/l/|/1 alike. Stricter than name equality: only the reserved names are compared so."""
    decomposed = unicodedata.normalize("NFKD", name)
    bare = "".join(char for char in decomposed if unicodedata.category(char)[0] not in "MZP")
    return name_key(bare or name).translate(_ONE_VERTICAL_STROKE)


class NameRules:
    """Checks names and knows the reserved ones (the assistant's and `system`)."""

    def __init__(self, reserved: Iterable[str] = ()):
        self._reserved = {reserved_key(name) for name in (SYSTEM_NAME, *reserved)}
        self._checked = lru_cache(maxsize=_CACHED_NAMES)(self._check)

    def display_name(self, value: Any) -> str:
        """A valid name as it will be shown (trimmed), or ValidationError `bad_name`."""
        if not isinstance(value, str):
            raise ValidationError("bad_name", "username must be a string")
        # A refusal raises, so only accepted names are remembered.
        return self._checked(value) if len(value) <= _CACHED_NAME_CHARS else self._check(value)

    def _check(self, value: str) -> str:
        name = value.strip()
        if not 1 <= len(name) <= MAX_USERNAME_CHARS:
            raise ValidationError("bad_name", f"username must be 1-{MAX_USERNAME_CHARS} characters")
        if has_lone_surrogate(name):
            # Before the skeleton: it would turn the surrogate into U+FFFD and let it through.
            raise ValidationError("bad_name", "username must be valid Unicode text (no lone surrogate)")
        if any(unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS for char in name):
            raise ValidationError("bad_name", "username must not contain control characters")
        key = name_key(name)
        if not key.strip():
            raise ValidationError("bad_name", "username must have a visible character")
        if reserved_key(name) in self._reserved:
            raise ValidationError("bad_name", f"username {name!r} is reserved")
        head = _FOR.split(unicodedata.normalize("NFKC", name).casefold(), maxsplit=1)
        if len(head) == 2 and reserved_key(head[0]) in self._reserved:
            raise ValidationError("bad_name", f"username {name!r} is reserved: '<reserved name> for …' names "
                                              "the assistant acting for someone")
        return name

    def device_name(self, client_id: str, username: Any) -> str:
        """A device's name: the one it gave, else its client_id cut to fit."""
        return self.display_name(client_id[:MAX_USERNAME_CHARS] if username is None else username)
