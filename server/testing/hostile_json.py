"""Hostile JSON documents of a megabyte each, for the bounded-JSON check's test and benchmark.

The nesting check once took quadratic time over the first (a regex retried an unterminated string
from each of its quotes: 64 KB froze the event loop ~15 s and the idle watchdog closed every
stream). Each is refused or parsed in one linear pass.
"""

from __future__ import annotations

from server.bounded_json import MAX_JSON_DEPTH

MEGABYTE = 1 << 20
HOSTILE_JSON = {
    "unterminated-escaped-quotes": b'{"prompt": "' + b'\\"' * (MEGABYTE // 2),
    "lone-quotes": b'"' * MEGABYTE,
    "deep-arrays": b"[" * MEGABYTE,
    "deep-objects": b'{"a":' * (MEGABYTE // 5),
    "near-miss-depth": (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) * (MEGABYTE // (2 * MAX_JSON_DEPTH)),
    "brackets-in-strings": b"[" + b'"a\\"[{",' * (MEGABYTE // 8) + b"1]",
}
# The one of them that is valid JSON within the bounds; the others are refused.
PARSES = {"brackets-in-strings"}
