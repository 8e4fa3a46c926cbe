"""JSON parsed within bounds, for HTTP bodies and data-channel messages alike: nesting and integer
length are checked before (or while) parsing, so a hostile document is a ValueError, never a
RecursionError or a minutes-long integer conversion."""

from __future__ import annotations

import json
import re
from typing import Any

# No request model nests deeper than a few levels (an offer's settings, a preset's parameters).
MAX_JSON_DEPTH = 32
# A seed (2^32) has 10 digits; a 4300-digit integer makes Python refuse to convert it.
MAX_INT_DIGITS = 32

# A JSON string (skipped whole, in C) or a bracket that opens or closes an array or object.
_STRING_OR_BRACKET = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_OPENING = frozenset(b"[{")


def parse_json(raw: bytes) -> Any:
    """`json.loads` within bounds: ValueError naming what is wrong, never RecursionError."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(raw):
        token = match.group()
        if len(token) != 1:
            continue  # a string
        if token[0] in _OPENING:
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        else:
            depth -= 1
    return json.loads(raw, parse_int=_bounded_int, parse_constant=_no_constant)


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} digits is longer than {MAX_INT_DIGITS}")
    return int(digits)


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not a JSON number")
