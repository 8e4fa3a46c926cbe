"""JSON parsed within bounds, for HTTP bodies and data-channel messages alike: nesting and integer
length are checked before (or while) parsing, so a hostile document is a ValueError, never a
RecursionError or a minutes-long integer conversion.

The nesting check is linear in the document's size. A tokenizer that tried a string at every
quote (what a plain `finditer` does) rescanned an unterminated string from each of its quotes:
64 KB of `\\"` froze the event loop for ~15 s. Here one atomic scan proves every string ends,
the strings are cut out in a second (each attempt now succeeds where the first scan found it),
and the depth is the running sum of what brackets remain.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

# No request model nests deeper than a few levels (an offer's settings, a preset's parameters).
MAX_JSON_DEPTH = 32
# A seed (2^32) has 10 digits; a 4300-digit integer makes Python refuse to convert it.
MAX_INT_DIGITS = 32

# A JSON string; possessive, so a string that does not end costs one scan to the end, no backtracking.
_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
# The whole document as runs of non-quotes and whole strings: fails exactly when a string is unterminated.
_STRINGS_END = re.compile(rb'(?:[^"]++|' + _STRING + rb")*+", re.DOTALL)
_STRINGS = re.compile(_STRING, re.DOTALL)
# +1 for an opening bracket, -1 for a closing one, 0 for any other byte.
_BRACKET_STEP = np.zeros(256, dtype=np.int32)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


def parse_json(raw: bytes) -> Any:
    """`json.loads` within bounds: ValueError naming what is wrong, never RecursionError."""
    if _STRINGS_END.fullmatch(raw) is None:
        raise ValueError("a string does not end")
    outside_strings = np.frombuffer(_STRINGS.sub(b"", raw), dtype=np.uint8)
    if outside_strings.size and int(np.cumsum(_BRACKET_STEP[outside_strings]).max()) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(raw, parse_int=_bounded_int, parse_constant=_no_constant)


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} digits is longer than {MAX_INT_DIGITS}")
    return int(digits)


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not a JSON number")
