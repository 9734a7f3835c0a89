"""Masking of credentials in text that leaves the process (logs, spans, endpoints).

Guarantees: a password in a `scheme://user:password@host` URL, anywhere in a
string, is replaced by `***`; values under keys naming a password or secret are
replaced whole. Does not guarantee: catching secrets in other shapes (bare
tokens, headers) — the code that holds a secret must not print it.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASK", "redact_text", "redact_value"]

MASK = "***"

# `scheme://[user]:password@` up to the last `@` before the host; the password may hold `:` but not `/`.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^/\s]*)@")
_SECRET_KEY = re.compile(r"pass(word|wd)?$|secret|credential", re.IGNORECASE)


def redact_text(text: str) -> str:
    """`text` with the password of every URL in it masked."""
    if "@" not in text:  # the common case costs one scan
        return text
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)


def redact_value(value: Any, _depth: int = 0) -> Any:
    """A copy of a JSON-like value with URL passwords and secret-named keys masked."""
    if isinstance(value, str):
        return redact_text(value)
    if _depth > 8:  # status dicts are shallow; this only bounds pathological input
        return value
    if isinstance(value, dict):
        return {
            key: (MASK if isinstance(key, str) and _SECRET_KEY.search(key) and item else redact_value(item, _depth + 1))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(item, _depth + 1) for item in value]
    return value
